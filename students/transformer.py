"""Small transformer student (TinyBERT / DistilBERT style): a shallower, optionally narrower BERT.

    input_ids [B, T] -> BERT embeddings [B, T, D] -> L_s encoder layers [B, T, D] -> pooler [B, D]
                     -> dropout -> classifier -> logits [B, C]

The student is transformers' ``BertForSequenceClassification`` built from the teacher's
``BertConfig`` with ``train.student``'s depth, width, head count and FFN size (the teacher's
where None), and it reads the teacher's tokenizer. With the teacher's sizes it starts from the
teacher: embeddings, the encoder layers chosen by ``layer_init`` (:func:`selected_teacher_layers`),
the pooler, and the classifier when the teacher already is a classifier for the same labels.
A narrower or differently shaped student starts from random layers (``layer_init: random``);
its embeddings, pooler and classifier are still copied when the width matches.

The layer-dropping strategies follow Sajjad et al. (2020), "On the Effect of Dropping Layers of
Pre-trained Transformer Models"; ``uniform`` is TinyBERT's layer map (Jiao et al. 2020).

A saved student is a Hugging Face checkpoint folder (``config.json``, ``model.safetensors``,
the tokenizer's files), loadable with ``AutoModelForSequenceClassification.from_pretrained``,
plus ``student.json`` (config, label count and ``teacher_layers``, the 1-based teacher layers
the student's layers were copied from, empty for random layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import Field
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, BertModel, PretrainedConfig, PreTrainedTokenizerBase)

from core.artifacts import atomic_dir
from core.config import Section
from core.errors import ArtifactError, ConfigError
from core.hf_checkpoint import is_classifier_for, load_tokenizer
from students.base import BuildInputs, Student, StudentOutput, write_meta


class TransformerStudentConfig(Section):
    """``train.student`` of a small BERT student (TinyBERT / DistilBERT style) built with
    transformers' BERT classes.

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
    max_length: int = Field(default=64, gt=0, description="tokens; longer inputs are truncated; left out of a "
                                                           "single-task run config, it follows teacher.max_length")


LAYER_INIT_STRATEGIES: tuple[str, ...] = get_args(TransformerStudentConfig.model_fields["layer_init"].annotation)
"""The values of ``train.student.layer_init``, read from the config type."""

SAMPLE_TEXTS = 256
"""Transfer-set texts on which ``drop_contribution`` scores the teacher's layers."""


def check_layer_count(strategy: str, teacher_layers: int, student_layers: int) -> None:
    """Fail when ``layer_init`` ``strategy`` copies teacher layers into more student layers than
    the teacher has (L_s > L_t); ``random`` copies none and takes any count.

    Raises:
        ConfigError: naming ``train.student.num_layers``, the teacher's count and the fix.
    """
    if strategy != "random" and not 0 < student_layers <= teacher_layers:
        raise ConfigError(f"train.student.num_layers: layer_init {strategy!r} copies teacher layers, so it needs "
                          f"1 to {teacher_layers} layers (the teacher's); got {student_layers}. "
                          "Use fewer layers or layer_init: random")


def selected_teacher_layers(strategy: str, teacher_layers: int, student_layers: int,
                            similarities: Sequence[float] | None = None) -> list[int]:
    """The teacher layers a student's layers are copied from, in order (1-based; [] for ``random``).

    Student layer i (1-based) is initialised from the i-th id of the result. With K =
    ``teacher_layers - student_layers`` layers to drop (Sajjad et al. 2020, section 3):

    - ``drop_top``: drop the top K layers, keep ``1..L_s``.
    - ``drop_bottom``: drop the bottom K layers, keep ``K+1..L_t``.
    - ``drop_alternate``: drop odd-numbered layers from the top down (12 layers, K = 4: drop
      11, 9, 7, 5; the paper's odd-alternate dropping). When K exceeds the odd layers, the pass
      repeats on the remaining layers, numbered 1.. again (12 -> 4 keeps 2, 4, 8, 12).
    - ``drop_symmetric``: drop the middle K layers, keeping the bottom ceil(L_s / 2) and the top
      floor(L_s / 2) (12 layers, K = 4: drop 5-8). The extra layer of an odd L_s goes to the
      bottom, which the paper found the most important.
    - ``drop_contribution``: drop the K layers whose output is most similar to their input
      (highest ``similarities``); ties drop the higher layer first.
    - ``uniform``: TinyBERT's map, student layer i from teacher layer ceil(i * L_t / L_s).
    - ``random``: no layer is copied.

    Args:
        strategy: one of :data:`LAYER_INIT_STRATEGIES`.
        teacher_layers: L_t, the teacher's encoder layers.
        student_layers: L_s, the student's encoder layers.
        similarities: for ``drop_contribution``, float per teacher layer, index l - 1 for layer
            l: the mean cosine similarity of the layer's input and output
            (:func:`layer_similarities`); higher means the layer changes its input less.

    Returns:
        ``L_s`` distinct teacher layer ids in increasing order, or [] for ``random``.

    Raises:
        ValueError: an unknown strategy, or ``drop_contribution`` without ``L_t`` similarities.
        ConfigError: a copying strategy with more student layers than the teacher has.
    """
    if strategy not in LAYER_INIT_STRATEGIES:
        raise ValueError(f"unknown layer_init {strategy!r}; choose from {list(LAYER_INIT_STRATEGIES)}")
    if strategy == "random":
        return []
    check_layer_count(strategy, teacher_layers, student_layers)
    drop = teacher_layers - student_layers
    layers = list(range(1, teacher_layers + 1))
    if strategy == "drop_top":
        return layers[:student_layers]
    if strategy == "drop_bottom":
        return layers[drop:]
    if strategy == "drop_alternate":
        while drop:
            odd_from_top = [layer for position, layer in enumerate(layers, start=1) if position % 2][::-1]
            dropped = set(odd_from_top[:drop])
            layers = [layer for layer in layers if layer not in dropped]
            drop -= len(dropped)
        return layers
    if strategy == "drop_symmetric":
        bottom = (student_layers + 1) // 2
        return layers[:bottom] + layers[teacher_layers - (student_layers - bottom):]
    if strategy == "drop_contribution":
        if similarities is None or len(similarities) != teacher_layers:
            raise ValueError(f"drop_contribution needs one similarity per teacher layer ({teacher_layers}); "
                             f"got {None if similarities is None else len(similarities)}")
        most_similar_first = sorted(layers, key=lambda layer: (-similarities[layer - 1], -layer))
        dropped = set(most_similar_first[:drop])
        return [layer for layer in layers if layer not in dropped]
    return [-(-i * teacher_layers // student_layers) for i in range(1, student_layers + 1)]  # uniform: ceil


@torch.inference_mode()
def layer_similarities(encoder: BertModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                       max_length: int, batch_size: int = 32) -> torch.Tensor:
    """How little each encoder layer changes its input (Sajjad et al. 2020, contribution-based dropping).

    For layer l, the cosine similarity between its input ``hidden_states[l - 1]`` and its output
    ``hidden_states[l]`` at every real (unpadded) token, averaged over all tokens of ``texts``.

    Args:
        encoder: a BERT encoder (``BertModel``), in eval mode.
        tokenizer: its tokenizer.
        texts: a small sample of input sentences (a few hundred suffice).
        max_length: tokens per text; longer texts are truncated.
        batch_size: texts per forward pass.

    Returns:
        float32 [L_t], index l - 1 for layer l; values in [-1, 1], higher = less contribution.

    Raises:
        ValueError: ``texts`` is empty.
    """
    if not texts:
        raise ValueError("layer_similarities needs at least one sample text")
    totals = torch.zeros(encoder.config.num_hidden_layers, dtype=torch.float64)
    tokens = 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt")
        hidden = encoder(**batch, output_hidden_states=True).hidden_states  # L_t + 1 x [B, T, D]
        stacked = torch.stack(hidden).float()  # [L_t + 1, B, T, D]
        cosine = torch.nn.functional.cosine_similarity(stacked[:-1], stacked[1:], dim=-1)  # [L_t, B, T]
        mask = batch["attention_mask"].bool()  # [B, T]
        totals += cosine[:, mask].sum(dim=1).double()  # [L_t, real tokens] -> [L_t]
        tokens += int(mask.sum())
    return (totals / tokens).float()


class TransformerStudent(Student):
    """A ``BertForSequenceClassification`` student with the teacher's tokenizer.

    Build one with :func:`build_transformer_student`; :meth:`load` restores a saved one.

    Args:
        model: the BERT classifier.
        tokenizer: the teacher's (fast) tokenizer.
        cfg: the ``train.student`` section it was built from.
        teacher_layers: 1-based teacher layers its layers were copied from ([] = random init).

    Attributes:
        output_hidden_states: return the embedding output and every layer's output (default off).
        output_attentions: return every layer's attention maps (default off). Setting it switches
            the attention kernel: eager when on (it materialises the maps), fused SDPA when off.
    """

    family = "transformer"

    def __init__(self, model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerBase,
                 cfg: TransformerStudentConfig, teacher_layers: list[int]):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.teacher_layers = list(teacher_layers)
        self.output_hidden_states = False
        self.output_attentions = False

    @property
    def output_attentions(self) -> bool:
        """Whether forward returns attention maps; true exactly when the eager kernel is in use."""
        return self.model.config._attn_implementation == "eager"

    @output_attentions.setter
    def output_attentions(self, value: bool) -> None:
        self.model.set_attn_implementation("eager" if value else "sdpa")

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
            int64 ``input_ids``, ``attention_mask`` and ``token_type_ids``, each [B, T] with
            T <= ``max_length`` (longer inputs are truncated).
        """
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.cfg.max_length, padding=True,
                                 return_token_type_ids=True, return_tensors="pt")
        return {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> StudentOutput:
        """Logits, and the hidden states and attention maps when switched on.

        Args:
            input_ids: int64 [B, T] WordPiece ids, right-padded.
            attention_mask: int64 [B, T], 1 on real tokens and 0 on padding.
            token_type_ids: int64 [B, T] segment ids (0 = first sentence), or None for all 0.

        Returns:
            logits float32 [B, C]; hidden_states L_s + 1 tensors [B, T, D] (embedding output
            first) or (); attentions L_s tensors [B, H, T, T] or ().
        """
        output_attentions = self.output_attentions
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
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
                       num_labels=self.model.config.num_labels, teacher_layers=self.teacher_layers)
        return directory

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "TransformerStudent":
        """Rebuild a student saved by :meth:`save` (on the CPU, SDPA attention, outputs off).

        Raises:
            ArtifactError: ``student.json`` lacks ``student`` or ``teacher_layers``.
        """
        missing = [key for key in ("student", "teacher_layers") if key not in meta]
        if missing:
            raise ArtifactError(Path(directory) / "student.json", f"lacks {missing}; rerun the train stage")
        model = BertForSequenceClassification.from_pretrained(str(directory), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        cfg = TransformerStudentConfig.model_validate(meta["student"])
        return cls(model, tokenizer, cfg, meta["teacher_layers"])


def student_sizes(cfg: TransformerStudentConfig, teacher: PretrainedConfig) -> dict[str, int]:
    """The student's ``hidden_size``, ``num_attention_heads`` and ``intermediate_size``: the
    configured ones, the teacher's where None."""
    return {"hidden_size": cfg.hidden_size or teacher.hidden_size,
            "num_attention_heads": cfg.num_heads or teacher.num_attention_heads,
            "intermediate_size": cfg.intermediate_size or teacher.intermediate_size}


def check_fits_teacher(cfg: TransformerStudentConfig, teacher: PretrainedConfig) -> None:
    """Fail before any work when this student cannot be built from the teacher; reads only the
    teacher's config (its ``config.json``), so the run config's rules check it too
    (:mod:`pipeline.config.rules`).

    Args:
        cfg: the ``train.student`` section (family ``transformer``).
        teacher: the teacher's transformers config (``model_type``, its sizes, layer count and
            ``max_position_embeddings``).

    Raises:
        ConfigError: the teacher is not BERT, the width does not split into the heads,
            ``max_length`` exceeds the teacher's position embeddings, or ``layer_init`` copies
            layers of another shape or more layers than the teacher has.
    """
    if teacher.model_type != "bert":
        raise ConfigError(f"teacher.model: transformer students are built from BERT teachers; "
                          f"{teacher.name_or_path} is {teacher.model_type!r}")
    sizes = student_sizes(cfg, teacher)
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise ConfigError(f"train.student.num_heads: {sizes['num_attention_heads']} heads do not divide "
                          f"hidden_size {sizes['hidden_size']}")
    if cfg.max_length > teacher.max_position_embeddings:
        raise ConfigError(f"train.student.max_length: {cfg.max_length} exceeds the teacher's "
                          f"{teacher.max_position_embeddings} position embeddings")
    teacher_sizes = {key: getattr(teacher, key) for key in sizes}
    if sizes != teacher_sizes and cfg.layer_init != "random":
        raise ConfigError(f"train.student.layer_init: {cfg.layer_init!r} copies teacher layers, which needs the "
                          f"teacher's sizes {teacher_sizes}; got {sizes}. Set layer_init: random, or leave "
                          "hidden_size, num_heads and intermediate_size at null")
    check_layer_count(cfg.layer_init, teacher.num_hidden_layers, cfg.num_layers)


def student_bert_config(cfg: TransformerStudentConfig, teacher: BertConfig, num_labels: int) -> BertConfig:
    """The student's ``BertConfig``: the teacher's, with the configured sizes, dropout and labels.

    Raises:
        ConfigError: as :func:`check_fits_teacher`.
    """
    check_fits_teacher(cfg, teacher)
    values = {**teacher.to_dict(), **student_sizes(cfg, teacher), "num_hidden_layers": cfg.num_layers,
              "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
              "classifier_dropout": None, "architectures": ["BertForSequenceClassification"]}
    if teacher.num_labels != num_labels:  # the teacher's label names only fit its own label count
        values.pop("id2label", None)
        values.pop("label2id", None)
    return BertConfig.from_dict({**values, "num_labels": num_labels})


def build_transformer_student(cfg: TransformerStudentConfig, inputs: BuildInputs) -> TransformerStudent:
    """A student initialised from a local BERT teacher checkpoint (offline).

    Copies, from the teacher: the embeddings, pooler and (when the teacher is a classifier for
    ``num_labels`` labels) the classifier when the width matches; the encoder layers chosen by
    ``cfg.layer_init`` (:func:`selected_teacher_layers`) when the width, heads and FFN size
    all match. Everything else keeps its random initialisation.

    Args:
        cfg: the ``train.student`` section (family ``transformer``).
        inputs: ``num_labels`` C; ``teacher_dir``, a local Hugging Face checkpoint folder of a
            BERT model (any head or none); ``transfer_texts``, whose first :data:`SAMPLE_TEXTS`
            sentences ``drop_contribution`` measures the layers on (:func:`layer_similarities`);
            unused by the other strategies.

    Returns:
        The student in train mode on the CPU, with ``teacher_layers`` set.

    Raises:
        ConfigError: the teacher is not BERT, or the sizes and ``layer_init`` conflict.
        ValueError: ``drop_contribution`` without transfer texts.
    """
    num_labels, teacher_dir, sample_texts = inputs.label_count(), inputs.teacher_dir, inputs.transfer_texts[:SAMPLE_TEXTS]
    if cfg.layer_init == "drop_contribution" and not sample_texts:
        raise ValueError("layer_init drop_contribution needs transfer_texts to measure the teacher's layers")
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), local_files_only=True,
                                                                 dtype=torch.float32).eval()
    tokenizer = load_tokenizer(teacher_dir)
    model = BertForSequenceClassification(student_bert_config(cfg, teacher.config, num_labels))
    similarities = None
    if cfg.layer_init == "drop_contribution":
        similarities = layer_similarities(teacher.bert, tokenizer, sample_texts, cfg.max_length).tolist()
    chosen = selected_teacher_layers(cfg.layer_init, teacher.config.num_hidden_layers, cfg.num_layers, similarities)
    for student_layer, teacher_layer in zip(model.bert.encoder.layer, chosen):
        student_layer.load_state_dict(teacher.bert.encoder.layer[teacher_layer - 1].state_dict())
    if model.config.hidden_size == teacher.config.hidden_size:
        model.bert.embeddings.load_state_dict(teacher.bert.embeddings.state_dict())
        model.bert.pooler.load_state_dict(teacher.bert.pooler.state_dict())
        if is_classifier_for(teacher_dir, num_labels):
            model.classifier.load_state_dict(teacher.classifier.state_dict())
    return TransformerStudent(model, tokenizer, cfg, chosen).train()
