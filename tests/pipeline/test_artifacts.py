"""Run-directory bookkeeping: fingerprints, manifests, atomic writes."""

import json

import pytest

from core.artifacts import atomic_path, read_json
from pipeline.artifacts import RunDir, fingerprint
from core.errors import ArtifactError


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint("x")) == 16


def test_config_fingerprints_count_default_values_too():
    from pipeline.config.sections import LabelConfig

    default = LabelConfig().shard_rows
    assert fingerprint(LabelConfig()) == fingerprint(LabelConfig(shard_rows=default))
    assert fingerprint(LabelConfig()) == fingerprint(LabelConfig().model_dump(mode="json"))  # the full dump
    assert fingerprint(LabelConfig()) != fingerprint({})  # a default changed in code changes the fingerprint
    assert fingerprint(LabelConfig(emit={"hidden_layers": [1]})) != fingerprint(LabelConfig())


def test_fields_added_later_and_a_hub_fallback_leave_older_runs_fingerprints_alone():
    from pipeline.config.data_sections import DataConfig

    base = {"train": {"path": "t.tsv"}, "dev": {"path": "d.tsv"}, "labels": [0, 1]}
    data = DataConfig(**base)
    older = data.model_dump(mode="json")  # what a run before tag_column, metric and hub fell back hashed
    del older["tag_column"], older["metric"]
    for split in ("train", "dev"):
        older[split] |= {"hub": None, "hub_subset": None, "hub_split": "train"}
    assert fingerprint(data) == fingerprint(older)
    with_hub = DataConfig(**base | {"train": {"path": "t.tsv", "hub": "stanfordnlp/sst2"}})
    assert fingerprint(with_hub) == fingerprint(data)  # beside a local file, the hub is a fallback
    assert fingerprint(DataConfig(**base | {"metric": "f1"})) != fingerprint(data)  # set: it counts
    assert fingerprint(DataConfig(**base | {"tag_column": 1})) != fingerprint(data)
    hub_only = DataConfig(**base | {"train": {"hub": "stanfordnlp/sst2"}})
    assert fingerprint(hub_only) != fingerprint(DataConfig(**base | {"train": {"hub": "glue"}}))


def test_a_stage_sees_its_fingerprint_and_resumes_ray_training_under_it(tmp_path):
    run = RunDir(tmp_path)
    assert run.stage_fingerprint == "" and run.train_storage == tmp_path / "train" / "ray" / "direct"
    staged = run.for_stage("abc123")
    assert staged.root == run.root and staged.stage_fingerprint == "abc123"
    assert staged.train_storage == tmp_path / "train" / "ray" / "abc123"


def test_publish_marks_a_stage_fresh_for_its_fingerprint_only(tmp_path):
    run = RunDir(tmp_path)
    assert run.manifest("data") is None and not run.is_fresh("data", "f1")
    manifest = run.publish("data", "f1", {"rows": 3}, wall_s=1.234)
    assert manifest["rows"] == 3 and manifest["wall_s"] == 1.23
    assert run.is_fresh("data", "f1") and not run.is_fresh("data", "f2")
    run.invalidate("data")
    assert run.manifest("data") is None


def test_require_names_the_missing_stage(tmp_path):
    with pytest.raises(ArtifactError, match="stage 'label' has not completed; run it first"):
        RunDir(tmp_path).require("label")


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_corrupt_json_is_an_artifact_error(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_json(tmp_path / "m.json")
    (tmp_path / "ok.json").write_text(json.dumps({"a": 1}))
    assert read_json(tmp_path / "ok.json") == {"a": 1}


def test_partial_files_of_a_killed_write_are_removed(tmp_path):
    run = RunDir(tmp_path)
    keep = run.shard_file(0)
    keep.write_text("done")
    (keep.parent / ".shard-00001.parquet.tmp-123").write_text("half")
    (run.root / "train" / ".kd.tmp-9").mkdir(parents=True)
    assert [p.name for p in run.remove_partial_files("label")] == [".shard-00001.parquet.tmp-123"]
    assert [p.name for p in run.remove_partial_files("train")] == [".kd.tmp-9"]
    assert list(keep.parent.iterdir()) == [keep]
