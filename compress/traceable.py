"""Export-ready views of every model family: positional tensor inputs in, float32 logits out.

Exporters (``torch.onnx.export``, ``torch.export``) trace a function of positional tensors with
one tensor out. :class:`LogitsOnly` gives every family that shape:

    LogitsOnly(model, input_names_of(model), task)(*features)  ->  logits float32 [B, C] or [B, W, C]

Families and their inputs (int64, right-padded; axis names as in :func:`input_axes`):

    teacher (Hugging Face classifier), transformer: input_ids, attention_mask[, token_type_ids]  [B, T]
                     (token_type_ids where the architecture reads segment ids: BERT, not MPNet,
                     RoBERTa or DistilBERT; see :func:`core.hf_checkpoint.takes_token_type_ids`)
    bilstm:          input_ids, attention_mask [B, T] (+ pair_input_ids, pair_attention_mask [B, T2])
    multitask_lstm:  per task head; sentence: input_ids, attention_mask; pair: + the pair inputs;
                     token: + word_starts [B, W] (the logits are per word, [B, W, C])
    cnn_lstm:        word_ids [B, T], char_ids [B, T, L], attention_mask [B, T] (T words)

The LSTM students pack their padded batches (``pack_padded_sequence``), whose data-dependent
shapes neither exporter traces. Their view runs the same weights through :class:`MaskedBiLSTM`
instead: the forward direction over the padded rows (padding comes after the real steps, so it
cannot reach them), the backward direction over each row reversed within its length, and zeros
on padding, as ``pad_packed_sequence`` leaves them; the logits are equal up to float rounding.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from core.errors import ConfigError
from core.hf_checkpoint import load_tokenizer, takes_token_type_ids
from students.base import Student

TEACHER = "teacher"
"""The family name given to a Hugging Face classifier (a teacher), which is no :class:`Student`."""
LSTM_FAMILIES = ("bilstm", "multitask_lstm", "cnn_lstm")
"""Families whose recurrent layers only trace at a fixed sequence length with ``torch.export``."""
FAMILIES = (TEACHER, "transformer", *LSTM_FAMILIES)

AXES = {"input_ids": ("batch", "sequence"), "attention_mask": ("batch", "sequence"),
        "token_type_ids": ("batch", "sequence"), "word_ids": ("batch", "sequence"),
        "char_ids": ("batch", "sequence", "chars"), "pair_input_ids": ("batch", "pair_sequence"),
        "pair_attention_mask": ("batch", "pair_sequence"), "word_starts": ("batch", "words")}
"""Name of each axis of each input the families take."""
SEQUENCE_AXES = ("sequence", "pair_sequence")
"""Axes a recurrent family is exported at a fixed, padded length for (see ``executorch_export``)."""


def family_of(model: nn.Module) -> str:
    """``model.family`` for a student, :data:`TEACHER` for a Hugging Face model.

    Raises:
        ConfigError: anything else, or a student family this module does not know.
    """
    family = getattr(model, "family", None) if isinstance(model, Student) else None
    if family is None and isinstance(model, PreTrainedModel):
        family = TEACHER
    if family not in FAMILIES:
        raise ConfigError(f"cannot export {type(model).__name__} (family {family!r}): export takes the families "
                          f"{list(FAMILIES)}; backends onnx and executorch")
    return family


def check_task(model: nn.Module, task: str | None) -> str | None:
    """The task kind of a multitask student's ``task`` (None for other families).

    Raises:
        ConfigError: a multitask student without a known task, or a task given to another family.
    """
    if family_of(model) != "multitask_lstm":
        if task is not None:
            raise ConfigError(f"task {task!r} given for family {family_of(model)}, which has one head; pass task=None")
        return None
    if task not in model.tasks:
        raise ConfigError(f"family multitask_lstm exports one graph per task head; pass task= one of "
                          f"{sorted(model.tasks)} (got {task!r})")
    return model.tasks[task].kind


def input_names_of(model: nn.Module, task: str | None = None) -> list[str]:
    """The inputs of the exported graph, in positional order (see the module docstring)."""
    family, kind = family_of(model), check_task(model, task)
    if family == "cnn_lstm":
        return ["word_ids", "char_ids", "attention_mask"]
    names = ["input_ids", "attention_mask"]
    if family in (TEACHER, "transformer") and takes_token_type_ids(hf_config(model)):
        names.append("token_type_ids")
    if (family == "bilstm" and model.sentence_pairs) or kind == "pair":
        names += ["pair_input_ids", "pair_attention_mask"]
    if kind == "token":
        names.append("word_starts")
    return names


def hf_config(model: nn.Module):
    """The transformers config of a Hugging Face model, or of the one a transformer student wraps (``.model``)."""
    return model.config if isinstance(model, PreTrainedModel) else model.model.config


def input_axes(input_names: list[str]) -> dict[str, dict[int, str]]:
    """``{input: {axis: name}}`` of the variable axes: batch, sequence (words for cnn_lstm),
    pair_sequence, chars, words."""
    return {name: dict(enumerate(AXES[name])) for name in input_names}


def output_axes(model: nn.Module, task: str | None = None) -> dict[int, str]:
    """Variable axes of the logits: ``{0: "batch"}``, plus axis 1 for per-token or per-word logits
    (``"sequence"`` for cnn_lstm and token-classifier teachers, ``"words"`` for token heads)."""
    family, kind = family_of(model), check_task(model, task)
    if family == "cnn_lstm" or (family == TEACHER and model.__class__.__name__.endswith("ForTokenClassification")):
        return {0: "batch", 1: "sequence"}
    return {0: "batch", 1: "words"} if kind == "token" else {0: "batch"}


def example_features(model: nn.Module, texts: list[str] | list[list[str]], task: str | None = None,
                     pairs: list[str] | None = None, tokenizer=None) -> dict[str, torch.Tensor]:
    """The features of ``texts`` that the exported graph takes, in :func:`input_names_of` order.

    Args:
        model: a student (its ``featurize``) or a Hugging Face classifier.
        texts: B sentences; word taggers (cnn_lstm) and token heads read word lists, and a
            sentence given as a string is split on whitespace for them.
        task: the multitask head.
        pairs: B second sentences, for pair students and pair heads.
        tokenizer: a teacher's tokenizer; loaded from ``model.name_or_path`` when None.

    Returns:
        int64 tensors [B, T] ([B, T, L] for ``char_ids``, [B, W] for ``word_starts``).
    """
    family, kind, names = family_of(model), check_task(model, task), input_names_of(model, task)
    if family == "cnn_lstm" or kind == "token":
        texts = [text.split() if isinstance(text, str) else list(text) for text in texts]
    if family == TEACHER:
        if tokenizer is None:
            tokenizer = load_tokenizer(model.name_or_path)
        features = dict(tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt",
                                  return_token_type_ids="token_type_ids" in names))
    else:
        features = model.featurize(texts, pairs)
    return {name: features[name].long() for name in names}


def reverse_within_lengths(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first ``lengths[b]`` steps, leaving its padding in place.

    Args:
        states: float [B, T, D]. lengths: int64 [B], each in 1..T.

    Returns:
        float [B, T, D]; applying it twice gives ``states`` back.
    """
    steps = torch.arange(states.shape[1], device=states.device).unsqueeze(0)  # [1, T]
    lengths = lengths.unsqueeze(1)  # [B, 1]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [B, T]
    return states.gather(1, index.unsqueeze(-1).expand_as(states))


class MaskedBiLSTM(nn.Module):
    """A bidirectional, batch-first ``nn.LSTM`` run over right-padded rows without packing.

    Holds one unidirectional ``nn.LSTM`` per layer and direction that shares the original's
    parameters (so it follows later edits of them). Eval only: no dropout between layers.

    Args:
        lstm: bidirectional, batch-first, without projections.
        unroll: run the recurrence as a Python loop over time steps, both directions at once
            (for ``torch.export``, which fixes the length anyway: about 3x fewer graph nodes than
            its own unrolling of ``nn.LSTM``, so ExecuTorch lowering is faster); else call the
            ``nn.LSTM`` modules (for ONNX, which keeps them as ``LSTM`` nodes of any length).
    """

    def __init__(self, lstm: nn.LSTM, unroll: bool = False):
        super().__init__()
        self.unroll = unroll
        assert lstm.bidirectional and lstm.batch_first and lstm.proj_size == 0, "a batch-first BiLSTM"
        self.directions = nn.ModuleList()
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
        for layer in range(lstm.num_layers):
            for suffix in ("", "_reverse"):
                one = nn.LSTM(lstm.input_size if layer == 0 else 2 * lstm.hidden_size, lstm.hidden_size,
                              bias=lstm.bias, batch_first=True)
                for name in names:
                    setattr(one, f"{name}_l0", getattr(lstm, f"{name}_l{layer}{suffix}"))
                self.directions.append(one)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """float [B, T, D] inputs, int64 [B] lengths (1..T) -> float [B, T, 2H], 0 on padding."""
        steps = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)  # [1, T]
        padding = (steps >= lengths.unsqueeze(1)).unsqueeze(-1)  # [B, T, 1]
        states = inputs
        for layer in range(0, len(self.directions), 2):
            ahead, back = self.directions[layer], self.directions[layer + 1]
            reverse = reverse_within_lengths(states, lengths)
            if self.unroll:
                ahead, back = unrolled_lstm(ahead, back, torch.stack([states, reverse]))  # [2, B, T, H]
            else:
                ahead, back = ahead(states)[0], back(reverse)[0]  # [B, T, H] each; back is reversed
            states = torch.cat([ahead, reverse_within_lengths(back, lengths)], dim=-1).masked_fill(padding, 0.0)
        return states  # [B, T, 2H]


def unrolled_lstm(ahead: nn.LSTM, back: nn.LSTM, inputs: torch.Tensor) -> torch.Tensor:
    """Two one-layer ``nn.LSTM``s over their own inputs, step by step in Python (PyTorch's gate
    order i, f, g, o; zero initial states).

    Args:
        ahead, back: unidirectional, batch-first LSTMs of equal sizes.
        inputs: float [2, B, T, D], ``ahead``'s then ``back``'s.

    Returns:
        float [2, B, T, H], the hidden state at every step.
    """
    weight_ih = torch.stack([ahead.weight_ih_l0, back.weight_ih_l0])  # [2, 4H, D]
    weight_hh = torch.stack([ahead.weight_hh_l0, back.weight_hh_l0]).transpose(1, 2)  # [2, H, 4H]
    _, batch, width, dim = inputs.shape
    gates_in = torch.bmm(inputs.reshape(2, batch * width, dim), weight_ih.transpose(1, 2))  # [2, B*T, 4H]
    gates_in = gates_in.reshape(2, batch, width, -1)  # [2, B, T, 4H]
    if ahead.bias:
        gates_in = gates_in + torch.stack([ahead.bias_ih_l0 + ahead.bias_hh_l0,
                                           back.bias_ih_l0 + back.bias_hh_l0]).reshape(2, 1, 1, -1)
    hidden = inputs.new_zeros((2, batch, ahead.hidden_size))  # [2, B, H]
    cell, steps = hidden, []
    for step in range(width):
        i, f, g, o = (gates_in[:, :, step] + torch.bmm(hidden, weight_hh)).chunk(4, dim=-1)  # [2, B, H] each
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        steps.append(hidden)
    return torch.stack(steps, dim=2)  # [2, B, T, H]


class MaskedBiLSTMEncoder(nn.Module):
    """Drop-in for :class:`students.bilstm.BiLSTMEncoder` (same parameters, same outputs) that
    :class:`MaskedBiLSTM` runs instead of packing."""

    def __init__(self, encoder: nn.Module, unroll: bool = False):
        super().__init__()
        self.embedding = encoder.embedding
        self.layers = nn.ModuleList(MaskedBiLSTM(lstm, unroll) for lstm in encoder.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """See :meth:`students.bilstm.BiLSTMEncoder.forward`."""
        from students.bilstm import real_positions

        lengths = real_positions(attention_mask).sum(dim=1)  # [B]
        states = [self.embedding(input_ids)]  # [B, T, E]
        for lstm in self.layers:
            states.append(lstm(states[-1], lengths))  # [B, T, 2H]
        return tuple(states)


class MaskedTagger(nn.Module):
    """The cnn_lstm tagger's forward (:meth:`students.cnn_lstm.CNNLSTMTagger.forward`, eval mode)
    with :class:`MaskedBiLSTM` in place of packing; shares the tagger's parameters."""

    def __init__(self, tagger: nn.Module, unroll: bool = False):
        super().__init__()
        self.tagger = tagger
        self.lstm = MaskedBiLSTM(tagger.lstm, unroll)

    def forward(self, word_ids: torch.Tensor, char_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """int64 word_ids [B, T], char_ids [B, T, L], attention_mask [B, T] -> logits float32 [B, T, C]."""
        tagger = self.tagger
        batch, width, length = char_ids.shape
        chars = tagger.char_embedding(char_ids.reshape(batch * width, length))  # [B*T, L, E_c]
        filters = tagger.char_cnn(chars.transpose(1, 2))  # [B*T, F, L]
        is_char = (char_ids != 0).reshape(batch * width, 1, length)  # [B*T, 1, L]; 0 is the pad id
        pooled = filters.masked_fill(~is_char, float("-inf")).max(dim=2).values  # [B*T, F]
        pooled = pooled.masked_fill(~is_char.any(dim=2), 0.0)
        features = torch.cat([tagger.word_embedding(word_ids), pooled.reshape(batch, width, -1)], dim=2)  # [B, T, E_w+F]
        outputs = self.lstm(features, attention_mask.sum(dim=1).clamp(min=1))  # [B, T, 2H]
        return tagger.classifier(outputs).float()  # [B, T, C]


def ready_mask_kind(model: nn.Module) -> str | None:
    """How a teacher's or transformer student's attention takes a ready 4-D mask
    (:func:`expanded_mask`): ``"bool"`` under SDPA, ``"additive"`` under eager attention (MPNet,
    or a student showing its attentions), None for models whose mask is not built by
    transformers' ``masking_utils.create_bidirectional_mask`` (which returns a 4-D mask as it is)
    and for the other families."""
    if family_of(model) not in (TEACHER, "transformer"):
        return None
    hf_model = model if isinstance(model, PreTrainedModel) else model.model
    if "create_bidirectional_mask" not in vars(sys.modules[type(hf_model).__module__]):
        return None
    return {"sdpa": "bool", "eager": "additive"}.get(hf_model.config._attn_implementation)


def expanded_mask(attention_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """int64 [B, T] (1 = token) -> [B, 1, T, T]: bool (True where a query may attend to a key)
    for ``kind="bool"``, else float32 0 there and the float32 minimum elsewhere (``"additive"``,
    as transformers' eager masks).

    Gives the same logits as the 2-D mask (checked on tiny BERT, RoBERTa, DistilBERT and MPNet:
    0.0 difference), without transformers 5's mask code, whose integer ``arange + 0`` becomes a
    float constant under ``prepare_pt2e`` ("IndexError: tensors used as indices must be long"
    in calibration).
    """
    length = attention_mask.shape[1]
    allowed = attention_mask[:, None, None, :].bool().expand(-1, 1, length, -1)
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def with_encoder(student: nn.Module, encoder: nn.Module) -> nn.Module:
    """A shallow copy of ``student`` whose ``encoder`` is ``encoder``; ``student`` is unchanged."""
    clone = copy.copy(student)
    clone._modules = {**student._modules, "encoder": encoder}
    return clone


class LogitsOnly(nn.Module):
    """Positional features in, float32 logits out, for any family (see the module docstring).

    Puts ``model`` in eval mode; the view shares its parameters.

    Args:
        model: a :class:`students.base.Student` or a Hugging Face sequence/token classifier.
        input_names: the feature order of ``forward`` (:func:`input_names_of`).
        task: the head of a multitask student; None for other families.
        unroll_lstm: unroll the LSTM families' recurrence over time steps (see :class:`MaskedBiLSTM`).
        ready_mask: pass the attention mask as :func:`expanded_mask` where the model takes one
            (:func:`ready_mask_kind`), for ``torch.export`` and PT2E quantization.

    Raises:
        ConfigError: an unknown family, or a task missing for (or given to the wrong) family.
    """

    def __init__(self, model: nn.Module, input_names: list[str], task: str | None = None, unroll_lstm: bool = False,
                 ready_mask: bool = False):
        super().__init__()
        self.family = family_of(model)
        check_task(model, task)
        self.input_names, self.task = list(input_names), task
        self.mask_kind = ready_mask_kind(model) if ready_mask else None
        model.eval()
        if self.family == "cnn_lstm":
            model = MaskedTagger(model, unroll_lstm)
        elif self.family in ("bilstm", "multitask_lstm"):
            model = with_encoder(model, MaskedBiLSTMEncoder(model.encoder, unroll_lstm))
        self.model = model
        self.eval()

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """int64 features in ``input_names`` order -> float32 logits [B, C] or [B, T or W, C]."""
        if self.family == "cnn_lstm":
            return self.model(*features)
        kwargs = dict(zip(self.input_names, features))
        if self.mask_kind:
            kwargs["attention_mask"] = expanded_mask(kwargs["attention_mask"], self.mask_kind)
        if self.task is not None:
            kwargs["task"] = self.task
        return self.model(**kwargs).logits.float()


def model_featurizer(model: nn.Module, folder: Path):
    """``(texts, pairs=None) -> features``: the exported graph's int64 inputs of rows, in input
    order (:func:`compress.traceable.example_features`); a teacher tokenizes with its folder's
    tokenizer, and reads word lists joined by spaces (a token classifier's rows)."""
    tokenizer = load_tokenizer(folder) if family_of(model) == "teacher" else None

    def featurize(texts: list, pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        if tokenizer is not None:
            texts = [text if isinstance(text, str) else " ".join(text) for text in texts]
        return example_features(model, texts, pairs=pairs, tokenizer=tokenizer)

    return featurize
