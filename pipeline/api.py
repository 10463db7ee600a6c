"""The Python API, for notebooks and scripts: run a distillation, read its result, use its students.

    from pipeline import api

    result = api.run("sst2-quick", {"train.epochs": 1})  # a preset, a YAML file or a dict
    result.stages["train"].status                         # "ran" or "reused"
    result.models["kd"].scores["dev_accuracy"], result.report
    student = api.load_student(result.models["kd"].folder)
    student.predict(["a gripping film", "a dull plot"])   # [Prediction(label='positive', ...), ...]

:func:`run` does what ``distill run`` does (the CLI is a layer over it) and leaves no process-wide
state behind: the run's log handlers and the redirection of native stderr to its log are undone
(:func:`pipeline.observability.console.run_logging`), its W&B run is finished, and a local Ray
instance that the call started is shut down, so that a second run in the process, with another
config, starts clean. A Ray instance the caller started (``ray.init()`` before the call) is used
and left running.

:func:`load_student` loads any model or shipped variant folder of a run (a trained student
``train/kd``, the teacher ``finetune/teacher``, a pruned model ``prune/kd-pruned``, an export or
quantize variant ``export/kd-onnx``, ``quantize/kd-int8-dynamic``) through the benchmark stage's
loaders (:func:`pipeline.evaluation.variants.load_variant` and ``featurizer``), so it predicts
exactly as the run measured it. Label names come from the run's ``config.yaml`` (beside the
stage folders): ``data.label_names``, else the labels as text, the names the fine-tuned teacher's
``id2label`` holds too (:func:`pipeline.stages.finetune.label_names`); ``labels=`` overrides them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ArtifactError, ConfigError
from pipeline.artifacts import RunDir
from pipeline.config.loading import load_config
from pipeline.config.sections import MultiTaskRunConfig, RunConfig, TeacherConfig
from pipeline.observability.console import run_logging
from pipeline.stages import STAGE_NAMES

Config = str | Path | Mapping[str, Any] | RunConfig | MultiTaskRunConfig
"""What :func:`run` takes: a preset name, a YAML path, a dict (validated as a YAML file's content,
``base:`` included) or an already validated config."""


@dataclass(frozen=True)
class StageResult:
    """One stage of a run, from its manifest.

    Attributes:
        status: ``"ran"`` (this call ran it) or ``"reused"`` (its manifest was up to date).
        wall_s: seconds the stage took when it ran (for a reused stage, in the run that made it).
        manifest: the stage's ``manifest.json``.
    """

    status: Literal["ran", "reused"]
    wall_s: float
    manifest: dict[str, Any]


@dataclass(frozen=True)
class ModelResult:
    """One model of the evaluate stage (the teacher, ``kd``, ``ce_only``).

    Attributes:
        scores: the stage's scores in [0, 1], e.g. ``{"dev_accuracy": 0.84}`` (``dev_entity_f1``,
            ``test_...`` where measured); a multi-task run's are ``"<task>/<score>"``.
        parameters: parameter count.
        size_mb: weight files on disk, MB (2^20 bytes).
        p50_ms: batch-1 CPU latency, median, ms, at the stage's torch thread count.
        folder: the model's folder (for :func:`load_student`).
    """

    scores: dict[str, float]
    parameters: int
    size_mb: float
    p50_ms: float
    folder: Path


@dataclass(frozen=True)
class VariantResult:
    """One variant of the benchmark stage (a model on a backend at a precision).

    Attributes:
        name: e.g. ``kd``, ``kd-pruned``, ``kd/onnxruntime-int8-dynamic``.
        model, backend, precision: what it runs, on what, at what precision.
        score: its dev score (:attr:`RunResult.score_key`), in [0, 1].
        size_mb: what it ships on disk, MB (10^6 bytes).
        p50_ms: batch-1 latency, median, ms, at the thread count that ranks variants (1 if measured).
        folder: the variant's folder (for :func:`load_student`).
    """

    name: str
    model: str
    backend: str
    precision: str
    score: float
    size_mb: float
    p50_ms: float
    folder: Path


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns: every figure is read from the stage manifests, none recomputed.

    Attributes:
        name: the run's name.
        run_dir: its folder, ``<output_dir>/<name>``.
        stages: stage name -> :class:`StageResult`, for the stages up to ``until`` that the config has.
        models: model name -> :class:`ModelResult` (empty until the evaluate stage).
        variants: variant name -> :class:`VariantResult` (empty without a benchmark stage).
        score_key: the variants' score (``dev_accuracy``, ``dev_entity_f1``); None without benchmark.
        report: ``report.md`` (None until the evaluate stage, which writes it with ``metrics.json``).
        log_file: the run's log, ``logs/distill.log``.
    """

    name: str
    run_dir: Path
    stages: dict[str, StageResult]
    models: dict[str, ModelResult]
    variants: dict[str, VariantResult]
    score_key: str | None
    report: Path | None
    log_file: Path


def run(config: Config, overrides: Mapping[str, Any] | Iterable[str] | None = None, until: str = "benchmark",
        force: str | Iterable[str] = ()) -> RunResult:
    """Run a distillation up to and including ``until``, reusing finished stages (``distill run``).

    Args:
        config: a preset name, a YAML path, a dict or a validated config (:data:`Config`).
        overrides: ``{"train.epochs": 1}`` (values as they are) or ``["train.epochs=1"]`` (YAML
            scalars), as ``distill run --set``; not with a validated config.
        until: the last stage to run (:data:`pipeline.stages.STAGE_NAMES`); stages the config has
            no section for are skipped.
        force: a stage or stages to redo even when fresh (those after them are redone too).

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError: the config is missing or invalid, overrides come with a validated config,
            ``until`` or ``force`` names an unknown stage, or ``ray.address`` does not answer.
        DataError: a data file is missing or malformed.
        ArtifactError: a model, teacher or source run it needs is missing or unreadable.
            These are the :class:`core.errors.DistillError` s that ``distill run`` prints in one line.
        pipeline.runner.StageInterrupted: Ctrl-C during a stage (a KeyboardInterrupt); finished
            stages, label shards and train checkpoints are kept for the next call.
    """
    cfg = resolve_config(config, overrides)
    run_dir = RunDir(cfg.run_dir)
    before = {stage: run_dir.manifest(stage) for stage in STAGE_NAMES}
    with isolated(cfg) as log_file:
        from pipeline.runner import run_pipeline  # after the log setup: the stages' imports log

        manifests = run_pipeline(cfg, until=until, force=(force,) if isinstance(force, str) else tuple(force))
    return read_result(cfg, manifests, before, log_file)


def resolve_config(config: Config,
                   overrides: Mapping[str, Any] | Iterable[str] | None = None) -> RunConfig | MultiTaskRunConfig:
    """The validated config of :func:`run`'s arguments (:func:`pipeline.config.loading.load_config`).

    Raises:
        ConfigError: see :func:`pipeline.config.loading.load_config`, or overrides with a validated config.
    """
    if isinstance(config, (RunConfig, MultiTaskRunConfig)):
        if overrides:
            raise ConfigError("overrides apply to a preset name, a YAML file or a dict; a validated config "
                              "takes cfg.model_copy(update=...) instead")
        return config
    return load_config(config, overrides or ())


@contextlib.contextmanager
def isolated(cfg: RunConfig | MultiTaskRunConfig) -> Iterator[Path]:
    """The process state of one run, undone when the block ends or raises: the run's logging
    (:func:`pipeline.observability.console.run_logging`) and, when the block started it, the local
    Ray instance (shut down, its lingering workers killed: :func:`pipeline.runner.shutdown_ray`).

    Yields:
        The run's log file.
    """
    import ray

    ray_before = ray.is_initialized()
    with run_logging(cfg.run_dir / "logs") as log_file:
        try:
            yield log_file
        finally:
            if not ray_before and ray.is_initialized():
                from pipeline.runner import reap, shutdown_ray

                reap(shutdown_ray())


def read_result(cfg: RunConfig | MultiTaskRunConfig, manifests: dict[str, Any],
                before: dict[str, dict[str, Any] | None], log_file: Path) -> RunResult:
    """The :class:`RunResult` of a run whose stages returned ``manifests``; a stage whose manifest
    is the one it had ``before`` the run was reused."""
    run_dir = RunDir(cfg.run_dir)
    stages = {stage: StageResult("reused" if manifest == before.get(stage) else "ran", manifest["wall_s"], manifest)
              for stage, manifest in manifests.items()}
    benchmark = manifests.get("benchmark")
    return RunResult(name=cfg.name, run_dir=run_dir.root, stages=stages,
                     models=model_results(run_dir, manifests.get("evaluate")),
                     variants=variant_results(run_dir, benchmark),
                     score_key=benchmark["score_key"] if benchmark else None,
                     report=run_dir.report_file if "evaluate" in manifests else None, log_file=log_file)


def model_results(run_dir: RunDir, evaluate: dict[str, Any] | None) -> dict[str, ModelResult]:
    """Every model of the evaluate stage's manifest (single- or multi-task), with its folder."""
    if evaluate is None:
        return {}
    results = {}
    for name, row in evaluate["models"].items():
        if "tasks" in evaluate:
            scores = {f"{task}/{key}": value for task, result in evaluate["tasks"].items()
                      for key, value in (result.get(name) or {}).items()}
        else:
            scores = {key: row[key] for key in evaluate.get("score_keys", ["dev_accuracy"])}
        folder = run_dir.teacher_dir if name == "teacher" else run_dir.student_dir(name)
        results[name] = ModelResult(scores, row["parameters"], row["size_mb"], row["latency"]["p50_ms"], folder)
    return results


def variant_results(run_dir: RunDir, benchmark: dict[str, Any] | None) -> dict[str, VariantResult]:
    """Every variant of the benchmark stage's manifest, with its folder (:func:`variant_folders`; an
    ``.ort`` row's is its fp32 export's, its ``parent``)."""
    if benchmark is None:
        return {}
    from pipeline.stages.benchmark import latency_key

    folders = variant_folders(run_dir)
    key, score_key = latency_key(benchmark["machine"]["threads"]), benchmark["score_key"]
    return {v["name"]: VariantResult(v["name"], v["model"], v["backend"], v["precision"], v[score_key], v["size_mb"],
                                     v["threads"][key]["p50_ms"], folders.get(v["name"]) or folders[v["parent"]])
            for v in benchmark["variants"]}


def variant_folders(run_dir: RunDir) -> dict[str, Path]:
    """Variant name -> folder: the teacher's and the students' (their PyTorch fp32 variants bear the
    model's name), then every folder of the prune, export and quantize stages with a ``meta.json``
    (:mod:`pipeline.evaluation.variants`), by the name it holds."""
    from pipeline.evaluation.variants import META_FILE, STUDENT_MODELS, read_meta

    folders = {"teacher": run_dir.teacher_dir, **{kind: run_dir.student_dir(kind) for kind in STUDENT_MODELS}}
    for stage in ("prune", "export", "quantize"):
        if (run_dir.root / stage).is_dir():
            folders.update({read_meta(sub).name: sub for sub in sorted((run_dir.root / stage).iterdir())
                            if (sub / META_FILE).is_file()})
    return folders


@dataclass(frozen=True)
class Prediction:
    """One text's class.

    Attributes:
        label: the most probable label's name.
        probabilities: label name -> probability (softmax of the logits), summing to 1.
    """

    label: str
    probabilities: dict[str, float]


@dataclass(frozen=True)
class TagPrediction:
    """One sentence's tags, one per word (a tagger's words past its ``max_length`` get none).

    Attributes:
        words: the words given.
        tags: the most probable tag of each word.
        probabilities: per word, tag name -> probability, summing to 1.
    """

    words: tuple[str, ...]
    tags: tuple[str, ...]
    probabilities: tuple[dict[str, float], ...]


class StudentPredictor:
    """A loaded model or variant (:func:`load_student`) with its featurizer and label names."""

    def __init__(self, predictor, featurize, labels: list[str], batch_size: int, folder: Path):
        self.predictor, self.featurize, self.labels = predictor, featurize, labels
        self.batch_size, self.folder = batch_size, folder

    def predict(self, texts: Sequence[str] | Sequence[Sequence[str]],
                pairs: Sequence[str] | None = None) -> list[Prediction] | list[TagPrediction]:
        """The label of each text, or for a tagger the tag of each word of each word list.

        Args:
            texts: N sentences, or N word lists for a tagger (token task).
            pairs: N second sentences of a sentence-pair task, else None.

        Returns:
            N :class:`Prediction` s, or N :class:`TagPrediction` s for a tagger.

        Raises:
            ConfigError: the model's classes are not as many as the label names.
        """
        results: list = []
        for start in range(0, len(texts), self.batch_size):
            rows = [list(t) if not isinstance(t, str) else t for t in texts[start:start + self.batch_size]]
            probabilities = self.probabilities(rows, list(pairs[start:start + len(rows)]) if pairs else None)
            results += [self.named(row, p) for row, p in zip(rows, probabilities)]
        return results

    def probabilities(self, texts: list, pairs: list[str] | None):
        """Softmax probabilities float32 of a batch: [B, C], or [B, W, C] for a tagger's words."""
        import torch

        from pipeline.stages.benchmark import word_logits

        features = self.featurize(texts, pairs)
        logits = word_logits(self.predictor.predict(features), features)  # [B, C] or [B, W, C]
        if logits.shape[-1] != len(self.labels):
            raise ConfigError(f"{self.folder}: the model has {logits.shape[-1]} classes but {len(self.labels)} label "
                              f"names were given ({self.labels}); pass its labels")
        return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).numpy()

    def named(self, text, probabilities) -> Prediction | TagPrediction:
        """A row's probabilities ([C], or [W, C] for a tagger) with the label names."""
        if probabilities.ndim == 1:
            return Prediction(self.labels[int(probabilities.argmax())],
                              dict(zip(self.labels, map(float, probabilities))))
        words = probabilities[:len(text)]
        return TagPrediction(tuple(text), tuple(self.labels[int(p.argmax())] for p in words),
                             tuple(dict(zip(self.labels, map(float, p))) for p in words))


def load_student(folder: str | Path, labels: Sequence[str] | None = None,
                 threads: int | None = None) -> StudentPredictor:
    """Load a model or variant folder of a run for :meth:`StudentPredictor.predict` (see the module docstring).

    Args:
        folder: a folder two levels under the run folder: ``train/kd``, ``finetune/teacher``,
            ``prune/<model>-pruned``, ``export/<model>-onnx``, ``quantize/<model>-<method>``, ...
        labels: the label (or tag) names in class-index order; None reads them from the run's ``config.yaml``.
        threads: intra-op threads of its runtime (process-wide for PyTorch and ExecuTorch); None
            keeps torch's current count.

    Raises:
        ArtifactError: the folder is not a finished model or variant, or (without ``labels``) the
            run has no ``config.yaml``.
        ConfigError: a multi-task run's student (its tasks have label sets of their own).
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ArtifactError(folder, "no such folder; give a model or variant folder of a run, e.g. runs/NAME/train/kd")
    run_dir = RunDir(folder.parents[1])
    config = run_config(run_dir)
    if labels is None:
        if config is None:
            raise ArtifactError(run_dir.root / "config.yaml", "missing, and it names the labels; pass labels=[...]")
        labels = config["data"].get("label_names") or [str(label) for label in config["data"]["labels"]]
    import torch  # after the checks: the runtimes take seconds to import

    from pipeline.evaluation.scoring import EVAL_BATCH
    from pipeline.evaluation.variants import featurizer, load_variant
    from pipeline.stages.benchmark import model_meta

    max_length = (config or {}).get("teacher", {}).get("max_length", TeacherConfig().max_length)
    meta = model_meta(run_dir, folder.name, folder)
    predictor = load_variant(run_dir, meta, threads or torch.get_num_threads())
    batch_size = min(EVAL_BATCH, meta.settings.get("max_batch") or EVAL_BATCH)
    return StudentPredictor(predictor, featurizer(run_dir, meta, max_length), list(labels), batch_size, folder)


def run_config(run_dir: RunDir) -> dict[str, Any] | None:
    """The run's ``config.yaml`` as written by the run (a mapping), or None when it has none.

    Raises:
        ConfigError: a multi-task run's config (``tasks``).
    """
    file = run_dir.root / "config.yaml"
    if not file.is_file():
        return None
    config = yaml.safe_load(file.read_text(encoding="utf-8"))
    if "tasks" in config:
        raise ConfigError(f"{file}: a multi-task run's student predicts per task; load_student takes single-task "
                          f"runs' models")
    return config
