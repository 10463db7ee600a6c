"""A bundle per shipped model: ``<run>/ship/<model>/``, what an app developer copies into an app.

    write_bundles(cfg, run_dir, summary)   # the benchmark stage's last step; -> {model: "ship/<model>"}

A model is *shipped* when one of its variants is on the benchmark's Pareto front (manifest
``pareto``) and it has variants on a runtime other than PyTorch. Its bundle holds, hard-linked
(copied across file systems) from the export and quantize stages' folders:

- ``<backend>-<precision>/``: each Pareto pick of each runtime (the front of the model's own
  variants on that runtime, :func:`picks`), the whole variant folder (``model.onnx`` or
  ``model.pte``, ``meta.json`` with the input order, and beside an fp32 ONNX export its
  ``model.ort``, ``model.required_operators.config`` and text graph ``model_text.onnx`` / ``.ort``);
  the fp32 ONNX export travels for its mobile files even when it is no pick;
- ``tokenizer/``: the source model folder's files that are not weights (tokenizer, vocabulary,
  ``student.json``, ``config.json``);
- ``labels.txt`` (one name a line, in class-index order), ``input_spec.json``
  (:func:`input_spec`), ``bundle.json`` (the run folder, task and row kind, labels, the featurizer's max
  length, every artifact with its dev score, batch-1 p50 and size from the benchmark), the model
  card ``README.md`` (:mod:`pipeline.evaluation.model_card`), and ``SHA256SUMS`` of every other
  file, in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.pareto import pareto_front
from core.artifacts import atomic_write_json, sha256_file
from pipeline.artifacts import RunDir
from pipeline.config.sections import RunConfig, task_kind
from pipeline.evaluation.variants import META_FILE, VariantMeta, featurizer, read_meta, stage_variants

SHIP_DIR = "ship"
BUNDLE_FILE = "bundle.json"
SPEC_FILE = "input_spec.json"
LABELS_FILE = "labels.txt"
SUMS_FILE = "SHA256SUMS"
CARD_FILE = "README.md"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".data", ".pte", ".bin", ".pt", ".ort", ".tflite")
"""Files of a source model folder left out of ``tokenizer/``."""
RUNNABLE = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".pte": "executorch", ".tflite": "litert"}
"""Suffix of an artifact file -> the runtime that runs it."""
AGREEMENT_TARGET = 0.995
"""The fraction of dev rows on which a shipped artifact predicts what the PyTorch model does: the
benchmark's ``dev_agreement`` picks by it, ``distill predict --check`` holds every artifact to it."""
ORT_SUFFIX = "-ort"
"""A benchmark row of an fp32 ONNX export's ``.ort`` file is named ``<export variant>-ort``."""
TEXT_STEM = "model_text"
"""Stem of a text graph (a string in, logits out: :mod:`compress.text_graph`)."""
PROBE = "a"
"""The shortest text of the featurizer probe (:func:`input_spec`)."""


def shipped_models(summary: dict[str, Any]) -> list[str]:
    """The models with a variant on the front (``summary["pareto"]``) and one on a runtime other than PyTorch."""
    on_front = {v["model"] for v in summary["variants"] if v["name"] in summary["pareto"]}
    exported = {v["model"] for v in summary["variants"] if v["backend"] != "pytorch"}
    return [model for model in dict.fromkeys(v["model"] for v in summary["variants"])
            if model in on_front and model in exported]


def picks(summary: dict[str, Any], model: str, latency_key: str) -> list[dict[str, Any]]:
    """The benchmark rows of ``model`` on the Pareto front of its own variants per runtime, score vs
    batch-1 p50 at ``latency_key`` threads, runtime by runtime, fastest first; of the rows that are
    not PyTorch, not ``.ort`` files (those travel with their export) and agree with the PyTorch
    model on at least :data:`AGREEMENT_TARGET` of dev rows (:func:`keeps_predictions`)."""
    score_key, chosen = summary["score_key"], []
    rows = [v for v in summary["variants"] if v["model"] == model and v["backend"] != "pytorch"
            and v["method"] != "ort" and keeps_predictions(v)]
    for backend in dict.fromkeys(v["backend"] for v in rows):
        points = [{**v, "accuracy": v[score_key], "latency_ms": v["threads"][latency_key]["p50_ms"]}
                  for v in rows if v["backend"] == backend]
        chosen += [{k: v for k, v in p.items() if k not in ("accuracy", "latency_ms")} for p in pareto_front(points)]
    return chosen


def keeps_predictions(row: dict[str, Any]) -> bool:
    """Whether a benchmark row predicts its PyTorch model's class on at least :data:`AGREEMENT_TARGET`
    of dev rows (``dev_agreement``; a row without one, from an older manifest, does)."""
    return row.get("dev_agreement", 1.0) >= AGREEMENT_TARGET


def unfaithful(summary: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The benchmark rows of ``model`` that do not :func:`keeps_predictions`: never shipped."""
    return [v for v in summary["variants"] if v["model"] == model and not keeps_predictions(v)]


def write_bundles(cfg: RunConfig, run_dir: RunDir, summary: dict[str, Any], latency_key: str) -> dict[str, str]:
    """Write the bundle of every shipped model (:func:`shipped_models`) under ``ship/``, each
    folder replaced whole; returns ``{model: its folder relative to the run}``."""
    from pipeline.evaluation.model_card import write_card

    labels = (cfg.data.task != "token" and cfg.data.label_names) or [str(label) for label in cfg.data.labels]
    folders = {meta.name: meta for meta in variant_metas(run_dir)}
    timed = {v["name"]: v for v in summary["variants"]}
    bundles = {}
    for model in shipped_models(summary):
        out = run_dir.root / SHIP_DIR / model
        shutil.rmtree(out, ignore_errors=True)
        rows = picks(summary, model, latency_key)
        mobile = next((folders[v["name"]] for v in summary["variants"] if v["model"] == model
                       and v["backend"] == "onnxruntime" and v["precision"] == "fp32" and v["method"] == "export"), None)
        if mobile is not None and mobile.name not in {r["name"] for r in rows}:
            rows.append(next(v for v in summary["variants"] if v["name"] == mobile.name) | {"pick": "mobile files"})
        artifacts = []
        for row in rows:
            meta = folders[row["name"]]
            sub = row["name"].split("/", 1)[1]
            link_tree((run_dir.root / meta.file).parent, out / sub)
            ort_row = timed.get(f"{row['name']}{ORT_SUFFIX}")
            artifacts += artifact_rows(out, sub, row, summary["score_key"], latency_key, ort_row)
        artifacts.sort(key=lambda a: (a["pick"] != "pareto", a["measured_as"] is not None, a["p50_ms"]))
        source = run_dir.root / folders[rows[0]["name"]].source
        link_tree(source, out / "tokenizer", lambda f: not f.name.endswith(WEIGHT_SUFFIXES) and f.name != META_FILE)
        (out / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        meta = folders[rows[0]["name"]]
        atomic_write_json(out / SPEC_FILE, input_spec(run_dir, meta, cfg.teacher.max_length, cfg.data.task, out))
        info = {"model": model, "run": str(run_dir.root.resolve()), "task": cfg.data.task,
                "kind": task_kind(cfg.data).value, "labels": labels,
                "max_length": cfg.teacher.max_length, "score_key": summary["score_key"],
                "latency_threads": latency_key, "batch_size": summary.get("batch_size"),
                "command": run_command(cfg, run_dir), "machine": summary["machine"].get("cpu_model"),
                "artifacts": artifacts, "not_shipped": {v["name"]: v["dev_agreement"] for v in unfaithful(summary, model)}}
        atomic_write_json(out / BUNDLE_FILE, info)
        write_card(out / CARD_FILE, info, Path(str(cfg.data.dev.path)).parent.name or cfg.name)
        write_sums(out)
        bundles[model] = run_dir.relative(out)
    return bundles


def variant_metas(run_dir: RunDir) -> list[VariantMeta]:
    """Every export and quantize variant of the run (their ``meta.json``)."""
    return [meta for stage in ("export", "quantize") for meta in stage_variants(run_dir, stage)]


def link_tree(source: Path, target: Path, keep: Callable[[Path], bool] = lambda f: True) -> None:
    """Hard-link (copy where linking fails, e.g. across file systems) the files of ``source`` that
    ``keep`` accepts into ``target``, sub-folders included."""
    for file in sorted(source.rglob("*")):
        if file.is_file() and keep(file):
            dest = target / file.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, dest)
            except OSError:
                shutil.copy2(file, dest)


def artifact_rows(bundle: Path, sub: str, row: dict[str, Any], score_key: str, latency_key: str,
                  ort_row: dict[str, Any] | None = None) -> list[dict]:
    """One entry per runnable file of a bundle folder (:data:`RUNNABLE`): ``name`` (its path in the
    bundle), ``variant``, ``backend``, ``precision``, ``input`` (``ids`` or ``text``), ``pick``
    (``pareto`` or ``mobile files``), the dev score and p50 (ms) the benchmark measured on that file
    (``model.ort`` has ``ort_row``, its own row; a text graph runs the measured ``model.onnx``'s
    graph, and ``measured_as`` says so) and the file's size (MB of 2^20 bytes, as every size of the
    benchmark and the quantize stage)."""
    entries = []
    for file in sorted((bundle / sub).iterdir()):
        if file.suffix not in RUNNABLE:
            continue
        timed = ort_row if file.name == "model.ort" and ort_row else row
        measured = file.stem == "model" and (file.suffix != ".ort" or timed is ort_row)  # a file the benchmark ran
        entries.append({"name": f"{sub}/{file.name}", "variant": timed["name"], "backend": RUNNABLE[file.suffix],
                        "precision": row["precision"], "input": "text" if file.stem == TEXT_STEM else "ids",
                        "pick": row.get("pick", "pareto"), score_key: timed[score_key],
                        "p50_ms": timed["threads"][latency_key]["p50_ms"],
                        "size_mb": round(file.stat().st_size / 2**20, 4),
                        "measured_as": None if measured else f"{sub}/model.onnx"})
    return entries


def input_spec(run_dir: RunDir, meta: VariantMeta, max_length: int, task: str, bundle: Path) -> dict[str, Any]:
    """What an app feeds each artifact, read off the model's featurizer and the artifacts' metas.

    The featurizer is probed with a one-word text and one longer than any max length: ``max_length``
    is the second's length (tokens, special tokens included; None for taggers, whose rows are
    word lists), ``padding`` the values that fill the first's row (right side).

    Returns:
        ``{"task", "max_length", "padding": {"side", <input>: pad value}, "artifacts":
        {name: {"inputs": [{name, dtype, shape}], "fixed_length", "max_batch"}}}``; a text graph's
        input is ``text``, a string tensor [1].
    """
    featurize = featurizer(run_dir, meta, max_length)
    short, long = ([PROBE], [PROBE] * 4096) if task == "token" else (PROBE, " ".join([PROBE] * 4096))
    probe = featurize([short, long])
    artifacts = {}
    for folder in sorted(p for p in bundle.iterdir() if (p / META_FILE).is_file()):
        variant = read_meta(folder)
        for file in sorted(f for f in folder.iterdir() if f.suffix in RUNNABLE):
            text = file.stem == TEXT_STEM
            inputs = ([{"name": "text", "dtype": "string", "shape": [1]}] if text else
                      [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"]} for name in variant.input_names])
            artifacts[f"{folder.name}/{file.name}"] = {
                "inputs": inputs, "fixed_length": None if text else variant.settings.get("fixed_length"),
                "max_batch": 1 if text else variant.settings.get("max_batch")}
    padded = {name: int(values[0, -1]) for name, values in probe.items() if values.ndim == 2
              and values.shape[1] > 1 and name in ("input_ids", "attention_mask", "token_type_ids")}
    return {"task": task, "max_length": None if task == "token" else int(probe["input_ids"].shape[1]),
            "padding": {"side": "right", **padded}, "artifacts": artifacts}


def run_command(cfg: RunConfig, run_dir: RunDir) -> str:
    """The command that makes the run: ``distill run <preset>`` for a shipped preset's name, else
    the run's own ``config.yaml`` (which holds every override)."""
    from pipeline.config.loading import preset_names

    if cfg.name in preset_names():
        return f"distill run {cfg.name}  # overrides, if any, are in {run_dir.root / 'config.yaml'}"
    return f"distill run {run_dir.root / 'config.yaml'}"


def write_sums(bundle: Path) -> Path:
    """``SHA256SUMS``: ``<hex>  <path>`` per file of the bundle (but itself), paths relative to it,
    sorted: the format ``sha256sum -c`` reads."""
    files = sorted(f for f in bundle.rglob("*") if f.is_file() and f.name != SUMS_FILE)
    lines = [f"{sha256_file(f)}  {f.relative_to(bundle).as_posix()}\n" for f in files]
    (bundle / SUMS_FILE).write_text("".join(lines), encoding="utf-8")
    return bundle / SUMS_FILE
