"""Refresh the vendored KubeRay CRD schemas in this folder from a KubeRay git checkout.

    python clusters/kuberay/schema/vendor.py /path/to/kuberay v1.7.0

For each CRD (RayCluster, RayJob) it takes the ``ray.io/v1`` version's
``schema.openAPIV3Schema`` from ``ray-operator/config/crd/bases/`` at the given tag and writes
``<kind>.json``: the schema (unchanged) under ``openAPIV3Schema``, next to the KubeRay version,
commit and source path it came from. KubeRay is Apache-2.0 licensed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
CRD_DIR = "ray-operator/config/crd/bases"
API_VERSION = "v1"


def vendor(checkout: Path, tag: str, out_dir: Path) -> None:
    """Write ``out_dir/<kind>.json`` for every CRD in :data:`CRDS`, read at ``tag`` of ``checkout``."""
    commit = _git(checkout, "rev-parse", f"{tag}^{{commit}}").strip()
    for kind, file_name in CRDS.items():
        source = f"{CRD_DIR}/{file_name}"
        crd = yaml.safe_load(_git(checkout, "show", f"{commit}:{source}"))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == API_VERSION]
        vendored = {"kind": kind, "apiVersion": f"ray.io/{API_VERSION}",
                    "kuberay_version": tag, "commit": commit,
                    "source": f"https://github.com/ray-project/kuberay/blob/{commit}/{source}",
                    "license": "Apache-2.0", "openAPIV3Schema": version["schema"]["openAPIV3Schema"]}
        # indent=0: one value per line, so a refresh gives a readable diff
        text = json.dumps(vendored, indent=0, separators=(",", ":"), sort_keys=True)
        (out_dir / f"{kind}.json").write_text(text + "\n")


def _git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True).stdout


if __name__ == "__main__":
    vendor(Path(sys.argv[1]), sys.argv[2], Path(__file__).parent)
