"""Typed run configuration: the frozen pydantic sections of a run.

A run is described by a :class:`RunConfig` whose sections share their names with the
pipeline stages (``data``, ``finetune``, ``label``, ``train``, ``evaluate``) and the CLI.
Every default lives in the type; unknown keys are errors. Reading YAML files and presets,
``--set`` overrides and the error messages live in :mod:`pipeline.config.loading`.

The sections of components live beside their code and are composed here: the student
families' configs (the ``train.student`` union) and the loss terms (``train.loss``) come from
the registries :data:`students.registry.FAMILIES` and :data:`students.terms.TERMS`, the
teacher's ``finetune`` and ``label.emit`` sections from :mod:`teachers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from compress.latency import RUNS, WARMUP
from core.config import Section
from core.schema import TaskKind
from pipeline.config.compress_sections import BenchmarkConfig, ExportConfig, PruneConfig, QuantizeConfig
from pipeline.config.data_sections import (  # re-exported: the data sections live in their own module
    DATA_DIR_ENV, DEFAULT_DATA_DIR, AugmentConfig, DataConfig, SplitConfig)
from students.bilstm import BiLSTMStudentConfig
from students.multitask import MultiTaskLSTMConfig
from students.registry import FAMILIES
from students.terms import LossConfig
from teachers.checkpoint import DEFAULT_TEACHER
from teachers.finetune import FinetuneConfig
from teachers.signals import SignalsConfig


class TeacherConfig(Section):
    """The teacher: a local Hugging Face checkpoint folder, or the alias of the default MiniLM."""

    model: str = DEFAULT_TEACHER
    max_length: int = Field(default=128, gt=0, le=512, description="tokens; longer inputs are truncated")
    trust_remote_code: bool = Field(
        default=False, description="run the checkpoint's own Python code (its config's auto_map); only for "
                                   "checkpoints you trust")


class LabelConfig(Section):
    """Stage ``label``: the teacher emits soft labels (logits) for every transfer-set row.

    The transfer set is cut into shards of ``shard_rows`` rows (fewer when that leaves an actor
    without a shard); a pool of ``num_actors`` Ray actors, each running ``cpus_per_actor`` torch
    threads, runs the teacher under ``deepspeed.init_inference``, batching length-sorted rows
    up to ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens. The batch defaults
    were measured on a 2-core CPU with MiniLM-L6 (fp32, one thread per actor): about 512
    tokens per batch keep a layer's activations in cache and beat 8,192 by about 1.4x; on a
    GPU raise both (e.g. 256 rows, 16,384 tokens).

    With ``teachers`` (as TextBrewer's MultiTeacherDistiller) each extra teacher labels the
    same rows with its own tokenizer, and the stored logits combine all of them: ``mean_logits``
    stores the mean logit vector; ``mean_probs`` stores ``log(mean_k softmax(z_k))``, so that
    softmax of the stored logits is the teachers' mean probability (the KD temperature then
    divides these log-probabilities, not each teacher's logits). Hidden states and attention
    maps come from the run's own teacher only.
    """

    shard_rows: int = Field(default=2048, gt=0)
    num_actors: int = Field(default=1, gt=0)
    cpus_per_actor: int = Field(default=1, gt=0, description="CPUs reserved per actor; also its torch threads")
    max_batch_size: int = Field(default=64, gt=0)
    max_batch_tokens: int = Field(default=512, gt=0)
    tensor_parallel: int = Field(
        default=1, gt=0, description="DeepSpeed tensor-parallel degree (init_inference tp_size); > 1 needs "
                                     "CUDA and one process per GPU in a torch.distributed group")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    emit: SignalsConfig = SignalsConfig()
    engine: Literal["inference", "zero"] = Field(
        default="inference",
        description="inference: deepspeed.init_inference (kernel injection on CUDA fp16/bf16); "
                    "zero: ZeRO-Inference, ZeRO stage 3 with parameters offloaded, for teachers larger than memory")
    offload: Literal["cpu", "nvme"] = Field(default="cpu", description="where ZeRO-Inference keeps the parameters")
    nvme_path: Path | None = Field(default=None, description="folder on a fast local disk, for offload: nvme")
    deepspeed_config: Path | None = Field(
        default=None, description="DeepSpeed JSON whose keys override the generated ones (see clusters/deepspeed/)")
    max_actor_restarts: int = Field(
        default=3, ge=0, description="times a label actor that died (killed, its node lost) is restarted; its "
                                     "unfinished shard is retried as often, and written once, atomically")
    teachers: list[Path] = Field(
        default_factory=list, description="extra local Hugging Face sequence classifiers (folders, relative to "
                                          "the working directory) that label next to the run's teacher; same "
                                          "label set and id2label order")
    combine: Literal["mean_logits", "mean_probs"] = Field(
        default="mean_logits", description="how the teachers' logits become the stored ones: their mean, or "
                                           "the log of their mean probability")

    @model_validator(mode="after")
    def _nvme_needs_a_path(self) -> "LabelConfig":
        if self.engine == "zero" and self.offload == "nvme" and self.nvme_path is None:
            raise ValueError("offload: nvme needs nvme_path, a folder on a fast local disk")
        return self

    @model_validator(mode="after")
    def _tensor_parallel_needs_init_inference(self) -> "LabelConfig":
        if self.tensor_parallel > 1 and self.engine != "inference":
            raise ValueError("tensor_parallel > 1 needs engine: inference (ZeRO-Inference does not shard layers)")
        return self


def _student_family(value: Any) -> str:
    return value.get("family", "bilstm") if isinstance(value, dict) else getattr(value, "family", "bilstm")


StudentConfig = Annotated[Union[tuple(Annotated[family.config, Tag(name)] for name, family in FAMILIES.items())],
                          Discriminator(_student_family)]
"""The ``train.student`` section: one of the :data:`students.registry.FAMILIES` configs, chosen by
``family`` (default bilstm)."""


class TrainConfig(Section):
    """Stage ``train``: the student on the teacher's soft labels with Ray Train.

    With ``ce_only_baseline`` the same student is also trained on the labeled split alone with
    cross-entropy, for comparison.
    """

    student: StudentConfig = BiLSTMStudentConfig()
    loss: LossConfig = LossConfig()
    epochs: int = Field(default=5, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0, description="peak learning rate: linear warmup to it, then linear decay to 0")
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1, description="share of the steps that warm the LR up")
    weight_decay: float = Field(default=0.0, ge=0)
    num_workers: int = Field(default=1, gt=0)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    apex: bool = Field(default=False, description="NVIDIA apex FusedAdam on CUDA (install apex from source; it is "
                                                  "not on PyPI); otherwise, or when missing, torch's fused AdamW")
    strategy: Literal["ddp", "deepspeed"] = Field(
        default="ddp", description="ddp: torch DistributedDataParallel; deepspeed: a DeepSpeed engine with ZeRO "
                                   "stage zero_stage (for transformer students)")
    zero_stage: Literal[0, 1, 2] = Field(default=1, description="ZeRO stage with strategy: deepspeed")
    deepspeed_config: Path | None = Field(
        default=None, description="DeepSpeed JSON whose keys override the generated ones (clusters/deepspeed/student-*.json)")
    ce_only_baseline: bool = True
    ce_only_epochs: int | None = Field(
        default=None, gt=0, description="epochs of the CE-only twin (None: epochs); with an augmented transfer set "
                                        "many times the labeled split, the KD student needs fewer epochs than its twin")
    checkpoint_every_steps: int | None = Field(
        default=None, gt=0, description="also checkpoint every this many optimizer steps inside an epoch (None: at "
                                        "each epoch's end only); a restart then loses at most this many steps, "
                                        "and resumes at the same step of the epoch's batch order")
    max_failures: int = Field(
        default=2, ge=-1, description="Ray Train FailureConfig.max_failures: times a failed worker group (a killed "
                                      "worker, a lost node) restarts from the latest checkpoint; -1 = always, 0 = never")


class EvaluateConfig(Section):
    """Stage ``evaluate``: dev (and test) scores, size and batch-1 CPU latency of teacher and students.

    Scores are accuracy for sequence tasks, entity-level F1, precision and recall (seqeval)
    for token tasks. Latency is timed as the benchmark stage times it (:mod:`compress.latency`),
    at the process's torch thread count."""

    latency_runs: int = Field(default=RUNS, gt=0, description="batch-1 forward passes timed per model")
    latency_warmup: int = Field(default=WARMUP, ge=0)


class TrackingConfig(Section):
    """Weights & Biases tracking; offline unless the user asks for online."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "distill"
    entity: str | None = Field(default=None, description="W&B team or user; None = the logged-in user's default")
    group: str | None = Field(
        default=None, description="W&B group; None = the run's name, or for a multi-task run its first source "
                                  "run's group (set the same group in the sources to group them all)")


class RayConfig(Section):
    """Where Ray runs: a local instance (``address: null``) or an existing cluster ("auto", "ray://...")."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=2, description="CPUs of a local instance; None = all; at least 2: "
                                                                 "the train stage keeps one for Ray Data's reads")
    storage_path: str | None = Field(
        default=None, description="where Ray Train keeps the train stage's checkpoints: None = the run folder "
                                  "(train/ray/); on a multi-node cluster a folder every node mounts (NFS) or a cloud "
                                  "URI (s3://bucket/prefix, gs://bucket/prefix: any pyarrow filesystem), so that "
                                  "checkpoints outlive a node; the run's checkpoints go under <storage_path>/<name>/")


class RunBase(Section):
    """What every run config has: its name and folder, seed, evaluation, tracking and Ray."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: Path = Path("runs")
    seed: int = 0
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()

    @property
    def run_dir(self) -> Path:
        """``output_dir / name``: where every artifact of this run lives."""
        return self.output_dir / self.name

    def runs_stage(self, stage: str) -> bool:
        """Whether this run runs a stage: when it has the stage's section (``data``, ``train``,
        ``prune``, ...). A multi-task run has only ``train`` and ``evaluate``: its source runs
        provide the data, finetune and label stages."""
        return getattr(self, stage, None) is not None


class RunConfig(RunBase):
    """A whole distillation run, loaded from one YAML file.

    Two settings left out follow others: ``train.student.max_length`` is ``teacher.max_length``
    (the layer loss terms align student and teacher tokens), and ``prune.models`` prunes the
    distilled student only when its family is one of :data:`PRUNABLE_FAMILIES`. The cross-field
    rules live in :mod:`pipeline.config.rules`.
    """

    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    label: LabelConfig = LabelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig | None = Field(default=None, description="optional: prune transformer models, then recover")
    export: ExportConfig | None = Field(default=None, description="optional: ONNX and ExecuTorch files, parity-checked")
    quantize: QuantizeConfig | None = Field(default=None, description="optional: int8 and fp16 variants")
    benchmark: BenchmarkConfig | None = Field(default=None, description="optional: every variant measured")

    @model_validator(mode="wrap")
    @classmethod
    def _left_out_settings_follow(cls, raw: Any, handler: Any) -> "RunConfig":
        cfg = handler(raw)
        student, prune = cfg.train.student, cfg.prune
        if "max_length" in type(student).model_fields and "max_length" not in student.model_fields_set:
            student = student.model_copy(update={"max_length": cfg.teacher.max_length})
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"student": student})})
        if prune is not None and "models" not in prune.model_fields_set and student.family not in PRUNABLE_FAMILIES:
            cfg = cfg.model_copy(update={"prune": prune.model_copy(update={"models": ["teacher"]})})
        return cfg


class MultiTaskRunConfig(RunBase):
    """A multi-task student (Liu et al. 2019) distilled from the teachers of finished single-task runs.

    ``tasks`` maps each task's name (its head in the student) to the folder of a run that
    ``distill run`` took through its label stage: the task's kind and labels come from that
    run's ``config.yaml``, its soft labels from its label shards, its labeled rows and dev
    (and test) split from its data stage, so each task keeps its own teacher. A YAML file with
    a top-level ``tasks`` key is read as this config.
    """

    tasks: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")], Path] = Field(min_length=1)
    train: TrainConfig = TrainConfig(student=MultiTaskLSTMConfig())

    @model_validator(mode="before")
    @classmethod
    def _multitask_student_by_default(cls, raw: Any) -> Any:
        train = raw.get("train") if isinstance(raw, dict) else None
        if isinstance(train, dict) and isinstance(train.get("student", {}), dict):
            student = train.get("student", {})
            return {**raw, "train": {**train, "student": {"family": "multitask_lstm", **student}}}
        return raw


PRUNABLE_FAMILIES = ("transformer",)
"""Student families the prune stage prunes (BERT-style heads and FFN neurons); it leaves the others."""

def task_kind(data: DataConfig) -> TaskKind:
    """The task's kind, decided once from ``data.task`` and ``data.text_pair_column``."""
    if data.task == "token":
        return TaskKind.TOKEN
    return TaskKind.PAIR if data.text_pair_column else TaskKind.SENTENCE
