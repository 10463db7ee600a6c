"""Security: secrets stay out of every output file, secret-looking config values are redacted,
and a teacher loads only from safetensors and without its own code unless the config allows it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from pipeline.config.loading import REDACTED, redact
from teachers.checkpoint import check_checkpoint

SECRETS = {"WANDB_API_KEY": "wandb-secret-4f1c9e27d6b3a85e0c12", "HF_TOKEN": "hf_secretTOKEN8d2b71c4e9a0f356",
           "MY_SERVICE_PASSWORD": "pw-secret-77aa31b9c0de"}


def test_secrets_in_the_environment_reach_no_file_of_the_run(pair_task, tiny_teacher_dir):
    cfg = pair_task.config(teacher={"model": str(tiny_teacher_dir), "max_length": 16},
                           finetune={"force": True, "batch_size": 2})
    config_file = pair_task.root / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "run", str(config_file), "--until", "finetune"],
                          cwd=root, env={**os.environ, **SECRETS, "PYTHONPATH": str(root)}, capture_output=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    files = [f for f in cfg.run_dir.rglob("*") if f.is_file()]
    assert any(f.suffix == ".wandb" for f in files) and (cfg.run_dir / "config.yaml") in files
    for file in files:
        content = file.read_bytes()
        for secret in SECRETS.values():
            assert secret.encode() not in content, f"{secret} leaked into {file}"
    for secret in SECRETS.values():
        assert secret.encode() not in done.stdout + done.stderr


def test_secret_looking_config_values_are_redacted():
    dump = {"name": "x", "tracking": {"api_key": "abc", "project": "p"}, "hf_token": "t",
            "ray": {"address": "ray://admin:hunter2@head:10001"}, "label": {"max_batch_tokens": 512},
            "extra": [{"db-password": "pw"}]}
    assert redact(dump) == {"name": "x", "tracking": {"api_key": REDACTED, "project": "p"}, "hf_token": REDACTED,
                            "ray": {"address": f"ray://{REDACTED}@head:10001"}, "label": {"max_batch_tokens": 512},
                            "extra": [{"db-password": REDACTED}]}


def test_pickled_weights_only_are_refused_with_the_fix(tmp_path, tiny_teacher_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_teacher_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match=r"only pickled weights.*safe_serialization=True"):
        check_checkpoint(folder)


def test_remote_code_needs_trust_remote_code(tmp_path, tiny_teacher_dir):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((tiny_teacher_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.Custom"}}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"teacher.trust_remote_code: true"):
        check_checkpoint(folder)
    check_checkpoint(folder, trust_remote_code=True)
    check_checkpoint(tiny_teacher_dir)
