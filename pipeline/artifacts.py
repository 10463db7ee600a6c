"""The run directory: the one owner of artifact paths, manifests and atomic writes.

Layout of ``<output_dir>/<name>/``::

    data/{train,dev,[test,]transfer}.parquet  stage data
    finetune/teacher/                     stage finetune (Hugging Face format)
    label/shard-00000.parquet ...         stage label (soft labels), with label/shards.json
    train/{kd,ce_only}/                   stage train (student checkpoints)
    train/ray/<fingerprint>/{kd,ce_only}/ Ray Train's checkpoints, to resume under the stage's fingerprint
    evaluate/                             stage evaluate
    sweep/<trial>/train/{kd,manifest.json} ``distill sweep``: one trial's student (a run folder of its own)
    sweep/results.json                    ``distill sweep``: the trials' dev scores
    <stage>/manifest.json                 written last: the stage is complete
    report.md, report.html, metrics.json  the run's report (report.html: plots inline)

A stage is complete when its ``manifest.json`` exists; it is fresh when the manifest's
fingerprint (a hash of the stage's inputs, of its upstream fingerprint and of the versions of
the project and of the libraries that shape its output: :func:`fingerprint_parts`) matches the
current one. The manifest records those parts, so a rerun can say what changed
(:func:`changed_parts`). Every file is written to a temporary name and renamed, so a killed run
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.artifacts import atomic_write_json, read_json
from core.config import fingerprint_view
from core.errors import ArtifactError

MANIFEST = "manifest.json"


def fingerprint(*parts: Any) -> str:
    """Short stable hash (16 hex chars) of JSON-serialisable parts.

    Config models count by every field, defaults included, so a default changed in code redoes
    the stages it affects rather than keeping stale ones; the exceptions are fields added later
    whose default keeps the old behaviour, and a split's hub fallback beside a local file
    (:meth:`core.config.Section.fingerprint_view`). Paths and other objects count by their string form.
    """
    blob = json.dumps(parts, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return fingerprint_view(value)
    return str(value)


def library_versions(names: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each distribution (``importlib.metadata``, e.g. ``{"torch":
    "2.13.0+cpu"}``); None for one that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint_parts(inputs: dict[str, Any], upstream: str, libraries: Iterable[str]) -> dict[str, Any]:
    """What a stage's fingerprint hashes, as its manifest records it.

    Args:
        inputs: the stage's named inputs (``{"config section train": cfg.train, ...}``); each is
            recorded by its :func:`fingerprint`.
        upstream: the fingerprint of the stage before ("" for the first).
        libraries: the distributions whose versions shape the stage's output (the project's,
            ``distill``, among them); an upgrade of one redoes the stage.

    Returns:
        ``{"inputs": {name: hash}, "upstream": upstream, "versions": {distribution: version}}``.
    """
    return {"inputs": {name: fingerprint(value) for name, value in inputs.items()}, "upstream": upstream,
            "versions": library_versions(libraries)}


def changed_parts(recorded: dict[str, Any] | None, current: dict[str, Any], upstream_stage: str | None) -> list[str]:
    """Why a stage's fingerprint changed, one phrase per part that differs: ``"config section
    train changed"``, ``"torch 2.5.1 -> 2.6.0"``, ``"upstream stage label reran"``.

    Args:
        recorded: the parts in the stage's manifest (:func:`fingerprint_parts`); None for a
            manifest written before manifests recorded them.
        current: the parts now.
        upstream_stage: the name of the stage before, for the upstream phrase; None leaves the
            upstream fingerprint out (the caller says that the stage before reruns).
    """
    if recorded is None:
        return ["its manifest records no fingerprint parts (written by an older distill)"]
    reasons = [f"{name} changed" for name in sorted(set(recorded["inputs"]) | set(current["inputs"]))
               if recorded["inputs"].get(name) != current["inputs"].get(name)]
    old, new = recorded["versions"], current["versions"]
    reasons += [f"{name} {old.get(name) or 'not installed'} -> {new.get(name) or 'not installed'}"
                for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    if upstream_stage is not None and recorded["upstream"] != current["upstream"]:
        reasons.append(f"upstream stage {upstream_stage} reran")
    return reasons


@dataclass(frozen=True)
class RunDir:
    """Paths and manifests of one run; nothing else builds artifact paths.

    Attributes:
        root: the run's folder.
        stage_fingerprint: the fingerprint of the stage being run (set by the runner through
            :meth:`for_stage`); the label stage's shards and the train stage's Ray checkpoints
            resume only under the same one. Empty when a stage is called directly.
    """

    root: Path
    stage_fingerprint: str = ""

    def for_stage(self, stage_fingerprint: str) -> "RunDir":
        """This run directory as seen by a stage with this fingerprint."""
        return replace(self, stage_fingerprint=stage_fingerprint)

    # --- stage bookkeeping -------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        """Folder of one stage's artifacts (created on demand)."""
        path = self.root / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest(self, stage: str) -> dict[str, Any] | None:
        """The stage's manifest, or None when the stage has not completed."""
        path = self.root / stage / MANIFEST
        return read_json(path) if path.exists() else None

    def is_fresh(self, stage: str, stage_fingerprint: str) -> bool:
        """True when the stage completed with this fingerprint and can be skipped."""
        manifest = self.manifest(stage)
        return manifest is not None and manifest.get("fingerprint") == stage_fingerprint

    def publish(self, stage: str, stage_fingerprint: str, summary: dict[str, Any], wall_s: float,
                parts: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the stage's manifest last, marking it complete.

        Args:
            stage: stage name.
            stage_fingerprint: see :func:`fingerprint`.
            summary: the stage's outputs (row counts, metrics, checksums).
            wall_s: the stage's wall time in seconds.
            parts: what the fingerprint hashed (:func:`fingerprint_parts`), recorded as
                ``fingerprint_parts`` so that a later run can say why it reruns the stage.
        """
        manifest = {"stage": stage, "fingerprint": stage_fingerprint, "wall_s": round(wall_s, 2),
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **({"fingerprint_parts": parts} if parts is not None else {}), **summary}
        atomic_write_json(self.root / stage / MANIFEST, manifest)
        return manifest

    def remove_partial_files(self, stage: str) -> list[Path]:
        """Delete the temporary files of atomic writes that a killed run left in a stage's folder.

        Returns:
            The paths removed.
        """
        stale = [p for p in (self.root / stage).glob(".*.tmp-*")] if (self.root / stage).is_dir() else []
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return stale

    def invalidate(self, stage: str) -> None:
        """Forget that a stage completed (its files stay; the stage will be redone)."""
        (self.root / stage / MANIFEST).unlink(missing_ok=True)

    def require(self, stage: str) -> dict[str, Any]:
        """The manifest of a completed upstream stage.

        Raises:
            ArtifactError: if the stage has not completed in this run directory.
        """
        manifest = self.manifest(stage)
        if manifest is None:
            raise ArtifactError(self.root / stage, f"stage {stage!r} has not completed; run it first")
        return manifest

    # --- named artifacts ---------------------------------------------------------------
    def relative(self, path: Path | str) -> str:
        """``path`` relative to the run folder, as a variant's ``meta.json`` stores it."""
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def split_file(self, split: str) -> Path:
        """Parquet table of one split: ``train``, ``dev``, ``test`` (when configured) or ``transfer``."""
        return self.stage_dir("data") / f"{split}.parquet"

    @property
    def teacher_dir(self) -> Path:
        """The fine-tuned teacher, in Hugging Face format."""
        return self.stage_dir("finetune") / "teacher"

    def shard_file(self, shard_id: int) -> Path:
        """Soft labels of one transfer-set shard."""
        return self.stage_dir("label") / f"shard-{shard_id:05d}.parquet"

    @property
    def shard_index(self) -> Path:
        """Per-shard manifest of the label stage (shard id, rows, checksum)."""
        return self.stage_dir("label") / "shards.json"

    @property
    def train_storage(self) -> Path:
        """Ray Train's storage for the stage being run: ``train/ray/<stage fingerprint>/``
        (``train/ray/direct/`` for a direct call)."""
        return self.stage_dir("train") / "ray" / (self.stage_fingerprint or "direct")

    def train_storage_uri(self, storage_path: str | None) -> str:
        """Ray Train's ``storage_path`` for the stage being run: :attr:`train_storage` (absolute) when
        ``storage_path`` (``ray.storage_path``) is None, else ``<storage_path>/<run name>/<stage
        fingerprint>``, a local folder made absolute or a URI (``s3://``, ``gs://``) kept as it is."""
        if storage_path is None:
            return str(self.train_storage.resolve())
        base = storage_path.rstrip("/") if "://" in storage_path else str(Path(storage_path).resolve())
        return f"{base}/{self.root.name}/{self.stage_fingerprint or 'direct'}"

    def student_dir(self, kind: str) -> Path:
        """One trained student: ``kd`` (distilled) or ``ce_only`` (baseline)."""
        return self.stage_dir("train") / kind

    @property
    def sweep_dir(self) -> Path:
        """``distill sweep``'s folder: a run folder per trial, Ray Tune's files and the results."""
        return self.stage_dir("sweep")

    def sweep_trial(self, name: str) -> "RunDir":
        """The run directory of one sweep trial, ``sweep/<name>/``, whose ``train/`` holds its student."""
        return RunDir(self.sweep_dir / name)

    @property
    def sweep_results(self) -> Path:
        """The sweep's trials and dev scores, as JSON."""
        return self.sweep_dir / "results.json"

    @property
    def metrics_file(self) -> Path:
        """The run's metrics, as JSON."""
        return self.root / "metrics.json"

    @property
    def report_file(self) -> Path:
        """The run's human-readable report."""
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        """The run's report as one self-contained HTML page, plots inline."""
        return self.root / "report.html"

    def plots(self) -> list[Path]:
        """Every PNG of the run folder outside ``wandb/``, sorted by path."""
        return sorted(p for p in self.root.rglob("*.png") if "wandb" not in p.relative_to(self.root).parts)
