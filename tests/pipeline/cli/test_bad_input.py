"""Bad input, one kind per row of ``CASES``: ``distill`` prints one line naming the problem (the
file or field) and the fix, exits with code 2, and leaves no traceback.

Each case breaks a small, valid workspace (two TSV files, a config, a copy of the tiny teacher)
in one way and runs ``pipeline.cli.main.main`` in this process; ``--until data`` keeps every run
to the checks before any model work. The full-disk case runs in a child process of its own
(:func:`test_full_disk_during_a_shard_write_keeps_finished_files`).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from compress.litert_extra import litert_installed
from pipeline.cli.main import main

HEADER = "sentence\tlabel\n"


@dataclass
class Workspace:
    """Valid inputs in ``root``: ``train.tsv``, ``dev.tsv``, a teacher folder and a config writer."""

    root: Path
    teacher: Path

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def config(self, data: dict | None = None, **top) -> str:
        """Write ``c.yaml`` (a valid run over the workspace, ``data`` and ``top`` merged in); its path."""
        section = {"root": str(self.root), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"},
                   "labels": [0, 1], **(data or {})}
        raw = {"name": "bad", "output_dir": str(self.root / "runs"), "tracking": {"mode": "disabled"},
               "teacher": {"model": str(self.teacher)}, "data": section, **top}
        path = self.root / "c.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return str(path)

    def run(self, *extra: str, **config) -> list[str]:
        return ["run", self.config(**config), "--until", "data", *extra]


def broken_teacher_config(ws):
    (ws.teacher / "config.json").write_text('{"architectures": ["BertForSequenceClassification"],\n  "hidden": 32,,\n}')
    return ws.run()


def teacher_without_weights(ws):
    (ws.teacher / "model.safetensors").unlink()
    return ws.run()


def truncated_safetensors(ws):
    weights = ws.teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ws.run()


def teacher_of_other_labels(ws):
    config = json.loads((ws.teacher / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config["label2id"] = {"a": 0, "b": 1, "c": 2}
    (ws.teacher / "config.json").write_text(json.dumps(config))
    return ws.run()


def layer_terms(ws, **changes):
    """``run`` of a transformer student on the tiny teacher's layer 2 (hidden states and attention
    maps), with ``changes`` to the train and label sections."""
    train = {"student": {"family": "transformer", "num_layers": 1},
             "loss": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}, "hidden": {"layer_map": {2: 1}},
                      "attention": {"layer_map": {2: 1}}}, **changes.get("train", {})}
    label = {"emit": {"hidden_layers": [2], "attention_layers": [2]}, **changes.get("label", {})}
    return ws.run(teacher={"model": str(ws.teacher), "max_length": 32}, train=train, label=label)


def multitask_without_its_runs(ws):
    path = ws.write("mt.yaml", yaml.safe_dump({"name": "mt", "output_dir": str(ws.root / "runs"),
                                               "tasks": {"sst": str(ws.root / "runs" / "nowhere")}}))
    return ["validate", str(path)]


CASES = {
    # config files and the command line
    "unknown key": (lambda ws: ws.run(train={"epoch": 3}),
                    r"train\.epoch is not a field; did you mean train\.epochs\?"),
    "wrong type": (lambda ws: ws.run(train={"epochs": "three"}),
                   r"c\.yaml: train\.epochs: Input should be a valid integer.*\(got 'three'\)"),
    "not YAML": (lambda ws: ["run", str(ws.write("c.yaml", "name: bad\ndata: [unclosed\n"))],
                 r"c\.yaml: not valid YAML \(line 3, column 1: .*\); fix the file"),
    "unknown preset": (lambda ws: ["run", "sst3"], r"sst3: no such config file or preset; presets are \["),
    "malformed --set": (lambda ws: ws.run("--set", "train.epochs"),
                        r"override 'train\.epochs': expected dotted\.key=value"),
    "text_column and text_columns": (lambda ws: ws.run(data={"text_column": "s", "text_columns": ["a", "b"]}),
                                     r"data: Value error, give text_column .* or text_columns .*, not both"),
    "f1 of the positive class on three labels": (
        lambda ws: ["validate", ws.config(data={"labels": [0, 1, 2], "metric": "f1"})],
        r"c\.yaml: data\.metric: f1 is the F1 of the positive class \(data\.labels\[1\]\) of a two-label task, but "
        r"data\.labels has 3; use macro_f1 or matthews$"),
    "student that does not fit the task": (
        lambda ws: ws.run(data={"task": "token", "labels": ["O", "B-PER"]}),
        r"train\.student\.family: bilstm classifies sentences, but data\.task is token; use "),
    # data files
    "missing data file": (lambda ws: ws.run(data={"dev": {"path": "nope.tsv"}}),
                          r"nope\.tsv: no such file; check data\.root"),
    "empty file": (lambda ws: ws.write("dev.tsv", b"") and ws.run(), r"dev\.tsv: the file is empty"),
    "header only": (lambda ws: ws.write("dev.tsv", HEADER) and ws.run(),
                    r"dev\.tsv: the file has no data rows \(a headerless file\? then name its columns in data\.columns\)"),
    "non-UTF-8 line": (lambda ws: ws.write("train.tsv", HEADER.encode() + b"ok\t1\ncaf\xe9\t0\n") and ws.run(),
                       r"train\.tsv: line 3 is not UTF-8 .*; re-encode the file as UTF-8"),
    "label outside the set": (lambda ws: ws.write("dev.tsv", HEADER + "good\t1\nmeh\t2\n") and ws.run(),
                              r"dev\.tsv: row 2: label 2 is not in the configured label set \[0, 1\] "
                              r"\(allowed file values: \['0', '1'\]\); fix the row, data\.labels or data\.label_values"),
    "wrong label set": (lambda ws: ws.run(data={"labels": ["negative", "positive"]}),
                        r"train\.tsv: row 1: label 1 is not in the configured label set \['negative', 'positive'\]"),
    "missing column": (lambda ws: ws.run(data={"text_column": "text"}),
                       r"train\.tsv: has no column 'text' \(columns: \['sentence', 'label'\]\); set data\.columns"),
    "empty sentence": (lambda ws: ws.write("dev.tsv", HEADER + "good\t1\n  \t0\n") and ws.run(),
                       r"dev\.tsv: row 2 has an empty 'sentence'; remove the row"),
    "CSV with an unclosed quote": (
        lambda ws: ws.write("dev.csv", 'sentence,label\ngood,1\n"bad, very bad,0\nfine,1\n')
        and ws.run(data={"dev": {"path": "dev.csv"}}),
        r"dev\.csv: line 3: unexpected end of data \(an unclosed quote\?\); close the quote"),
    "CSV row with an extra field": (
        lambda ws: ws.write("dev.csv", "sentence,label\ngood,1\nbad, very bad,0\n")
        and ws.run(data={"dev": {"path": "dev.csv"}}),
        r"dev\.csv: line 3 has 3 fields but the header line has 2; quote fields that contain a comma"),
    "headerless file with fewer fields than data.columns": (
        lambda ws: ws.write("dev.tsv", "1\tgood\n0\n") and ws.run(data={
            "train": {"path": "dev.tsv"}, "columns": ["label", "sentence"]}),
        r"dev\.tsv: line 2 has 1 fields but data\.columns has 2"),
    "JSONL with a broken line": (
        lambda ws: ws.write("dev.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0\n')
        and ws.run(data={"dev": {"path": "dev.jsonl"}}),
        r"dev\.jsonl: line 2: not valid JSON \(Expecting ',' delimiter at column \d+\); fix the line"),
    "JSONL line that is not an object": (
        lambda ws: ws.write("dev.jsonl", '{"sentence": "good", "label": 1}\n["bad", 0]\n')
        and ws.run(data={"dev": {"path": "dev.jsonl"}}),
        r"dev\.jsonl: line 2 is a JSON list, not an object"),
    "not a Parquet file": (lambda ws: ws.write("dev.parquet", b"PAR1 this is not parquet")
                           and ws.run(data={"dev": {"path": "dev.parquet"}}),
                           r"dev\.parquet: not a readable Parquet file \(.*\); write it again"),
    "unsupported format": (lambda ws: ws.write("dev.xlsx", b"x") and ws.run(data={"dev": {"path": "dev.xlsx"}}),
                           r"dev\.xlsx: unsupported format '\.xlsx'; use one of"),
    # teacher checkpoints
    "missing teacher folder": (lambda ws: shutil.rmtree(ws.teacher) or ws.run(),
                               r"teacher\.model: no such folder .*teacher"),
    "teacher config.json not JSON": (broken_teacher_config,
                                     r"teacher\.model: .*teacher/config\.json is not valid JSON \(line 2: .*\); fix "),
    "teacher without weights": (teacher_without_weights,
                                r"teacher\.model: .*teacher has config\.json but no model weights"),
    "truncated safetensors": (truncated_safetensors,
                              r"teacher\.model: .*model\.safetensors is not a readable safetensors file .*; the copy "
                              r"is truncated or corrupt"),
    "teacher of another label set": (teacher_of_other_labels,
                                     r"teacher\.model: .*teacher is a 3-class classifier but data\.labels has 2 labels"),
    # rules between fields, refused before the first stage (pipeline/config/rules.py)
    "student length unlike the teacher's under a layer term": (
        lambda ws: layer_terms(ws, train={"student": {"family": "transformer", "num_layers": 1, "max_length": 16}}),
        r"c\.yaml: train\.loss\.hidden aligns student and teacher tokens, so train\.student\.max_length \(16\) must "
        r"equal teacher\.max_length \(32\); leave train\.student\.max_length out"),
    "layer term the label stage does not emit": (
        lambda ws: layer_terms(ws, label={"emit": {"hidden_layers": [2]}}),
        r"label\.emit\.attention_layers: \[\] lacks teacher layer\(s\) \[2\], which train\.loss\.attention read"),
    "emitted layer the teacher lacks": (
        lambda ws: layer_terms(ws, label={"emit": {"hidden_layers": [2, 5], "attention_layers": [2]}}),
        r"label\.emit\.hidden_layers: \[5\] do not exist in the teacher \(valid: 0\.\.2\)"),
    "student deeper than the teacher it copies": (
        lambda ws: ["validate", ws.config(train={"student": {"family": "transformer", "num_layers": 3}})],
        r"train\.student\.num_layers: layer_init 'uniform' copies teacher layers, so it needs 1 to 2 layers"),
    "top-k logits with a KD term": (lambda ws: ws.run(label={"emit": {"logits_top_k": 1}}),
                                    r"label\.emit\.logits_top_k: 1 stores only the largest logits, and "
                                    r"train\.loss\.kd need every class's logit; set label\.emit\.logits_top_k: null"),
    "kd pruned with a BiLSTM student": (lambda ws: ws.run(prune={"models": ["kd"]}),
                                        r"prune\.models: kd is the distilled student, a bilstm, .*remove kd"),
    "layer drop of every teacher layer": (lambda ws: ws.run(prune={"layer_drop": 2}),
                                          r"prune\.layer_drop: 2 of the teacher's 2 layers leaves none"),
    "quantize without an export": (lambda ws: ws.run(quantize={}),
                                   r"quantize: the quantize stage reads the export stage's ONNX files"),
    "multi-task config without its source runs": (
        multitask_without_its_runs, r"nowhere/config\.yaml: missing; tasks\.sst must name a run folder"),
}


@pytest.fixture
def workspace(tmp_path, tiny_teacher_dir):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)
    ws = Workspace(tmp_path, teacher)
    ws.write("train.tsv", HEADER + "a good film\t1\na bad film\t0\n")
    ws.write("dev.tsv", HEADER + "good\t1\nbad\t0\n")
    return ws


def test_the_workspace_itself_is_valid(workspace, capsys):
    assert main(workspace.run()) == 0


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_the_problem_and_exit_2(workspace, capsys, case):
    make_argv, message = CASES[case]
    argv = make_argv(workspace)
    code = main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error: ")]
    assert code == 2
    assert len(errors) == 1, errors
    assert "Traceback" not in errors[0]
    assert re.search(message, errors[0]), errors[0]
    # a kind of its own: no other case's message fits this line (a catch-all message would)
    assert [other for other, (_, pattern) in CASES.items() if other != case and re.search(pattern, errors[0])] == []
    print(f"{case}: {errors[0]}")


def test_offline_without_the_local_file_names_the_folder_and_the_hub_dataset(workspace, capsys, monkeypatch):
    import datasets
    import huggingface_hub.constants

    # as a process started with HF_HUB_OFFLINE=1 and an empty cache (the libraries read both on import)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(workspace.root / "hub-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", workspace.root / "datasets-cache")
    dev = {"path": "sst2/dev.tsv", "hub": "stanfordnlp/sst2", "hub_split": "validation"}
    assert main(workspace.run(data={"dev": dev})) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error: ")]
    assert errors == [f"distill: error: {workspace.root / 'sst2' / 'dev.tsv'}: no such file, and hub dataset "
                      f"stanfordnlp/sst2:validation could not be read: offline (HF_HUB_OFFLINE=1); put the file in "
                      f"{workspace.root / 'sst2'}/ (data.root or $DISTILL_DATA_DIR), or unset HF_HUB_OFFLINE and "
                      f"read stanfordnlp/sst2 online"]


FULL_DISK_CHILD = textwrap.dedent("""
    import resource, signal, sys
    import pyarrow as pa, pyarrow.parquet as pq
    from pathlib import Path
    from core.artifacts import atomic_path
    from core.errors import DistillError

    folder = Path(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    try:
        with atomic_path(folder / "shard-00001.parquet") as tmp:  # as the label stage writes a shard
            pq.write_table(pa.table({"logits": [[float(i)] * 8 for i in range(20000)]}), tmp)
    except DistillError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        sys.exit(2)
""")


def test_full_disk_during_a_shard_write_keeps_finished_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.artifacts import atomic_path

    finished = tmp_path / "shard-00000.parquet"
    with atomic_path(finished) as tmp:
        pq.write_table(pa.table({"logits": [[0.5] * 8] * 10}), tmp)
    before = finished.read_bytes()
    result = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("distill: error: ")]
    assert errors == [f"distill: error: {tmp_path / 'shard-00001.parquet'}: could not be written (File too large); "
                      f"free space on its disk (or raise the quota / ulimit -f) or set output_dir to a folder on a "
                      f"larger disk, then rerun: finished files are kept"]
    assert finished.read_bytes() == before  # the finished shard is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.parquet"]  # no partial file left


@pytest.mark.skipif(litert_installed(), reason="the [litert] extra is installed here")
@pytest.mark.parametrize("field, section", [
    ("export.formats", {"export": {"formats": ["onnx", "litert"]}}),
    ("quantize.methods", {"export": {}, "quantize": {"methods": ["dynamic_int8", "litert_dynamic_int8"]}})])
def test_litert_without_its_extra_is_one_line_naming_the_field_and_the_install(workspace, capsys, field, section):
    assert main(["validate", workspace.config(**section)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error: ")]
    assert errors == [f"distill: error: {field}: LiteRT needs the optional extra: pip install 'distill[litert]' (it "
                      "pins pydantic 2.11; use a separate environment)"]
