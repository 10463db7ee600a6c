"""Offline checks of clusters/: the Ray launcher configs against Ray's own schema (the
ray-schema.json of the installed wheel, through the functions `ray up` calls), the KubeRay
manifests against the vendored openAPIV3Schema of their CRD, and the run each manifest starts
against `distill validate`'s loader. Every validator is shown rejecting a planted mistake."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pipeline.config.loading import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
LAUNCHERS = sorted((CLUSTERS / "ray").glob("*.yaml"))
MANIFESTS = sorted((CLUSTERS / "kuberay").glob("*.yaml"))
SCHEMA_DIR = CLUSTERS / "kuberay" / "schema"
CLOUD_LAUNCHERS = ["aws-gpu.yaml", "gcp-gpu.yaml"]
SHARED_MOUNT = "/mnt/shared"


def ray_up_config(path: Path) -> dict:
    """The launcher config as `ray up` checks it: defaults filled in, then validated (raises on a bad key)."""
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


def kuberay_docs(kind: str) -> list[tuple[Path, dict]]:
    """Every (file, document) of clusters/kuberay/*.yaml of this kind."""
    return [(path, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") == kind]


def crd_schema(kind: str) -> dict:
    """The vendored ray.io/v1 openAPIV3Schema of a KubeRay CRD."""
    return json.loads((SCHEMA_DIR / f"{kind}.json").read_text())["openAPIV3Schema"]


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Dotted paths of keys the schema does not declare, as `kubectl apply` (strict field
    validation) reports them: a CRD's structural schema lists an object's fields in
    ``properties``; a map declares its values in ``additionalProperties``."""
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unknown_fields(item, schema.get("items", {}), f"{path}[{i}]")]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if "properties" in schema:
        found = []
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            else:
                found.append(f"{path}.{key}".lstrip("."))
        return found
    if isinstance(schema.get("additionalProperties"), dict):
        return [p for key, item in value.items() for p in unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")]
    return []


def kuberay_errors(doc: dict) -> list[str]:
    """Type/enum/required errors (jsonschema) and unknown fields of a KubeRay manifest."""
    schema = crd_schema(doc["kind"])
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    return errors + [f"{field}: unknown field" for field in unknown_fields(doc, schema)]


def entrypoint_run(rayjob: dict) -> tuple[str, list[str]]:
    """(config, --set overrides) of a RayJob entrypoint `distill run CONFIG --set K=V ...`."""
    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[:2] == ["distill", "run"], words
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    return words[2], overrides


# --- Ray cluster launcher -------------------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_schema(path):
    config = ray_up_config(path)
    assert config["max_workers"] >= 2
    assert any("pip install -e ~/distill" in cmd for cmd in config["head_setup_commands"] + config["worker_setup_commands"])


@pytest.mark.parametrize("name", CLOUD_LAUNCHERS)
def test_cloud_launcher_has_a_cpu_head_and_autoscaled_gpu_workers(name):
    config = ray_up_config(CLUSTERS / "ray" / name)
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert "GPU" not in head["resources"] and head["max_workers"] == 0
    (worker,) = types.values()
    assert worker["resources"]["GPU"] == 1 and worker["min_workers"] == 0 and worker["max_workers"] == config["max_workers"]
    # the head installs the CPU build of torch before the project, the GPU workers a CUDA build
    assert "whl/cpu" in config["head_setup_commands"][-2]
    assert re.search(r"whl/cu\d+", config["worker_setup_commands"][-2])
    assert any(SHARED_MOUNT in cmd for cmd in config["setup_commands"])


def test_gcp_workers_attach_a_gpu_through_guest_accelerators():
    config = ray_up_config(CLUSTERS / "ray" / "gcp-gpu.yaml")
    node = config["available_node_types"]["gpu_worker"]["node_config"]
    assert node["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    assert node["scheduling"] == [{"onHostMaintenance": "TERMINATE"}]


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_validation_rejects_a_misspelled_key(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    raw["max_worker"] = 3
    bad = tmp_path / path.name
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(jsonschema.ValidationError, match="'max_worker' was unexpected"):
        ray_up_config(bad)


def test_launcher_validation_rejects_a_wrong_type_in_a_node_type(tmp_path):
    raw = yaml.safe_load((CLUSTERS / "ray" / "aws-gpu.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["max_workers"] = "eight"
    bad = tmp_path / "aws-gpu.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(jsonschema.ValidationError, match="'eight' is not of type 'integer'"):
        ray_up_config(bad)


# --- KubeRay ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_vendored_schema_states_its_source(kind):
    vendored = json.loads((SCHEMA_DIR / f"{kind}.json").read_text())
    assert vendored["kind"] == kind and vendored["apiVersion"] == "ray.io/v1"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", vendored["kuberay_version"])
    assert re.fullmatch(r"[0-9a-f]{40}", vendored["commit"])
    assert vendored["source"].endswith(f"ray-operator/config/crd/bases/ray.io_{kind.lower()}s.yaml")
    assert {"spec", "status"} <= set(vendored["openAPIV3Schema"]["properties"])


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifest_matches_its_crd_schema(kind):
    docs = kuberay_docs(kind)
    assert docs, f"no {kind} manifest in clusters/kuberay"
    for path, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        assert kuberay_errors(doc) == [], path.name


@pytest.mark.parametrize("kind, plant, expected", [
    ("RayCluster", lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="two"),
     "spec.workerGroupSpecs.0.replicas: 'two' is not of type 'integer'"),
    ("RayCluster", lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplica=8),
     "spec.workerGroupSpecs[0].maxReplica: unknown field"),
    ("RayCluster", lambda d: d["spec"]["autoscalerOptions"].update(upscalingMode="Fast"),
     "spec.autoscalerOptions.upscalingMode: 'Fast' is not one of ['Default', 'Aggressive', 'Conservative']"),
    ("RayJob", lambda d: d["spec"].update(shutdownAfterJobFinish=True),
     "spec.shutdownAfterJobFinish: unknown field"),
    ("RayJob", lambda d: d["spec"].update(backoffLimit="2"),
     "spec.backoffLimit: '2' is not of type 'integer'"),
    ("RayJob", lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template"),
     "spec.rayClusterSpec.headGroupSpec: 'template' is a required property"),
])
def test_kuberay_validation_rejects_a_planted_mistake(kind, plant, expected):
    (_, doc), *_ = kuberay_docs(kind)
    doc = copy.deepcopy(doc)
    plant(doc)
    assert kuberay_errors(doc) == [expected]


def test_rayjob_cluster_is_the_raycluster():
    (_, cluster), = kuberay_docs("RayCluster")
    (_, job), = kuberay_docs("RayJob")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


def test_every_ray_pod_mounts_the_shared_volume_and_gpu_workers_autoscale():
    (_, claim), = kuberay_docs("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (_, cluster), = kuberay_docs("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (workers,) = spec["workerGroupSpecs"]
    assert workers["minReplicas"] == 0 < workers["maxReplicas"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for pod in (spec["headGroupSpec"]["template"]["spec"], workers["template"]["spec"]):
        shared = [v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
        assert len(shared) == 1
        for container in pod["containers"]:
            assert {"name": shared[0], "mountPath": SHARED_MOUNT} in container["volumeMounts"]
    (_, shell), = kuberay_docs("Pod")  # the pod that copies data in and results out
    assert shell["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert shell["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == SHARED_MOUNT


def test_rayjob_runs_a_valid_config_with_runs_and_data_on_the_shared_volume():
    (_, job), = kuberay_docs("RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] and runtime_env["env_vars"]["DISTILL_DATA_DIR"].startswith(SHARED_MOUNT + "/")
    source, overrides = entrypoint_run(job)
    cfg = load_config(source, overrides)
    assert cfg.ray.address == "auto"
    assert str(cfg.run_dir).startswith(SHARED_MOUNT + "/")
    assert (REPO / cfg.train.deepspeed_config).is_file()


def test_deepspeed_files_named_in_clusters_exist_and_parse():
    texts = [p.read_text() for p in CLUSTERS.rglob("*") if p.suffix in {".yaml", ".md"}]
    named = {m for text in texts for m in re.findall(r"clusters/deepspeed/[\w.-]+\.json", text)}
    assert "clusters/deepspeed/student-zero2.json" in named
    for name in sorted(named):
        assert isinstance(json.loads((REPO / name).read_text()), dict), name
