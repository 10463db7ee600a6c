"""Ray Train's storage (``ray.storage_path``): where a run's checkpoints go, and the stale runs removed."""

from pipeline.artifacts import RunDir
from pipeline.training.checkpoints import prepare_storage


def test_storage_is_the_run_folder_or_under_storage_path_by_run_name(tmp_path):
    run = RunDir(tmp_path / "runs" / "sst2").for_stage("fp1")
    assert run.train_storage_uri(None) == str(tmp_path / "runs" / "sst2" / "train" / "ray" / "fp1")
    assert run.train_storage_uri("s3://bucket/ckpt/") == "s3://bucket/ckpt/sst2/fp1"
    assert run.train_storage_uri("gs://bucket") == "gs://bucket/sst2/fp1"
    assert run.train_storage_uri(str(tmp_path / "shared")) == str(tmp_path / "shared" / "sst2" / "fp1")


def test_prepare_storage_removes_the_runs_of_other_fingerprints_only(tmp_path):
    for fingerprint in ("fp1", "fp2"):
        (tmp_path / "sst2" / fingerprint / "kd").mkdir(parents=True)
    storage = RunDir(tmp_path / "runs" / "sst2").for_stage("fp2").train_storage_uri(str(tmp_path))
    prepare_storage(storage, "kd")
    assert sorted(p.name for p in (tmp_path / "sst2").iterdir()) == ["fp2"]
    assert (tmp_path / "sst2" / "fp2" / "kd").is_dir()  # resumed, not removed
    prepare_storage(RunDir(tmp_path / "new").for_stage("a").train_storage_uri(str(tmp_path)), "kd")  # nothing yet
