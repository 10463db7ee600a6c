"""Vocabulary pruning of BERT models: keep only the WordPiece ids a transfer set uses.

Follows the vocabulary pruning of TextPruner (Yang et al. 2022): the word-embedding table
[V, D] is sliced to the rows of the ids that the task's texts produce, plus the special tokens.
For MiniLM-L6 the table (30,522 x 384) holds 11.7 M of the model's 22.7 M parameters, and a
transfer set of a few thousand sentences uses only a fraction of the ids.

The tokenizer stays unchanged and the model still takes the ORIGINAL ids: the word embeddings
become a :class:`RemappedEmbedding`, which looks an id up through an int64 table ``remap``
[V] (original id -> row of the sliced table; an id that was not kept -> the row of [UNK]).
An exported ONNX / ExecuTorch graph therefore contains the remap (a Gather before the
embedding Gather) and keeps the model's inputs.

The saved model. ``config.vocab_size`` stays the original V (the size of the id space the inputs
come from), and the config's ``pruning`` record (see :mod:`compress.slicing`) gains two fields::

    "pruning": {..., "vocab": [0, 100, 101, 102, 103, 1005, ...],   # kept original ids, ascending
                     "vocab_unk_id": 100}                            # the id unkept ids fall back to

``remap`` is not saved with the weights: :func:`compress.slicing.load_pruned` rebuilds it by
applying :func:`prune_vocabulary` with the record before it loads the weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BERT_UNK_ID = 100  # [UNK] of the BERT uncased WordPiece vocabulary (MiniLM's too)
_TOKENIZE_CHUNK = 2048  # texts per tokenizer call in used_token_ids


class RemappedEmbedding(nn.Embedding):
    """An embedding table of the kept ids only, looked up through a remap of the original ids.

    Attributes:
        weight: float [V_kept, D]; row r is the original row of the r-th kept id (ascending ids).
        remap: int64 buffer [V_orig] (not in the state dict): original id -> its row; an id that
            was not kept -> the row of [UNK].
        unk_id: the original id of [UNK].
    """

    def __init__(self, weight: torch.Tensor, remap: torch.Tensor, unk_id: int, padding_idx: int | None):
        super().__init__(weight.shape[0], weight.shape[1], padding_idx=padding_idx, _weight=weight)
        self.register_buffer("remap", remap, persistent=False)
        self.unk_id = unk_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int64 [B, T] of the original vocabulary -> embeddings float [B, T, D]."""
        return super().forward(self.remap[input_ids])

    def kept_ids(self) -> list[int]:
        """The original ids that have their own row, ascending."""
        unk_row = self.remap[self.unk_id]
        kept = (self.remap != unk_row).nonzero().flatten().tolist()
        return sorted([*kept, self.unk_id])


def used_token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                   pairs: Sequence[str] | None = None, max_length: int = 128) -> list[int]:
    """Every id the tokenizer produces on the texts, plus the special ids (pad, unk, cls, sep, mask).

    The texts are tokenized as the transformer student featurizes them (truncated to
    ``max_length``), so ids past the cut, which never reach the model, are not counted.

    Args:
        tokenizer: the teacher's / student's tokenizer.
        texts: the transfer set's texts (first segments).
        pairs: the second segments of a pair task, as long as ``texts``; None for single texts.
        max_length: the student's max_length (tokens, specials included).

    Returns:
        The used ids, ascending.

    Raises:
        ValueError: ``pairs`` is not as long as ``texts``.
    """
    used = set(special_ids(tokenizer))
    for ids in token_ids(tokenizer, texts, pairs, max_length):
        used.update(ids)
    return sorted(used)


def unkept_token_share(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], keep_ids: Iterable[int],
                       pairs: Sequence[str] | None = None, max_length: int = 128) -> float:
    """The share of the texts' tokens that a vocabulary cut to ``keep_ids`` turns into [UNK].

    Tokenized as :func:`used_token_ids` does; special tokens and tokens that already were [UNK]
    are not counted. On a dev split it says how much of unseen text the cut loses.

    Args:
        tokenizer: the model's tokenizer.
        texts, pairs, max_length: as in :func:`used_token_ids`.
        keep_ids: the original ids that keep their row.

    Returns:
        A fraction in [0, 1]; 0.0 for texts without a non-special token.

    Raises:
        ValueError: ``pairs`` is not as long as ``texts``.
    """
    kept, specials = set(keep_ids), set(special_ids(tokenizer))
    counted = unkept = 0
    for ids in token_ids(tokenizer, texts, pairs, max_length):
        words = [i for i in ids if i not in specials]
        counted += len(words)
        unkept += sum(i not in kept for i in words)
    return unkept / counted if counted else 0.0


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's pad, unk, cls, sep and mask ids (those it has)."""
    specials = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id,
                tokenizer.sep_token_id, tokenizer.mask_token_id)
    return [token_id for token_id in specials if token_id is not None]


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str] | None,
              max_length: int) -> Iterator[list[int]]:
    """Each text's (and pair's) ids, specials included, truncated to ``max_length``; tokenized in chunks.

    Raises:
        ValueError: ``pairs`` is not as long as ``texts``.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"token_ids: {len(pairs)} pairs for {len(texts)} texts; give one pair per text")
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = slice(start, start + _TOKENIZE_CHUNK)
        encoded = tokenizer(list(texts[chunk]), None if pairs is None else list(pairs[chunk]),
                            truncation=True, max_length=max_length)
        yield from encoded["input_ids"]


def _check_keep_ids(embedding: nn.Embedding, keep: list[int], unk_id: int, vocab_size: int) -> None:
    """ValueError unless every kept id is in 0..vocab_size-1, still has a row, and [UNK] is kept."""
    out_of_range = [i for i in keep if not 0 <= i < vocab_size]
    if out_of_range:
        raise ValueError(f"prune_vocabulary: ids {out_of_range[:10]} are outside the vocabulary 0..{vocab_size - 1}")
    if unk_id not in keep:
        raise ValueError(f"prune_vocabulary: the [UNK] id {unk_id} must be kept (ids not kept become [UNK]); "
                         "add it to keep_ids (used_token_ids does)")
    if isinstance(embedding, RemappedEmbedding):
        gone = sorted(set(keep) - set(embedding.kept_ids()))
        if gone:
            raise ValueError(f"prune_vocabulary: ids {gone[:10]} ({len(gone)} in all) were pruned before; "
                             "a second pruning can only keep a subset of the kept ids")


def prune_vocabulary(model: PreTrainedModel, keep_ids: Iterable[int], unk_id: int = BERT_UNK_ID) -> None:
    """Keep only the word-embedding rows of ``keep_ids``, in place (TextPruner, Yang et al. 2022).

    The word embeddings become a :class:`RemappedEmbedding` of [len(keep_ids), D]; the model still
    takes original ids, and an id not kept gives exactly what [UNK] gives. Logits on inputs whose
    ids are all kept do not change. Records the kept ids in ``config.pruning`` (see the module
    docstring); ``config.vocab_size`` stays the original size. A vocab-pruned model can be pruned
    again to a subset of its kept ids.

    Args:
        model: a BERT model without output embeddings (``BertFor{Sequence,Token}Classification``
            or ``BertModel``; for the transformer student, ``student.model``).
        keep_ids: original ids to keep, e.g. :func:`used_token_ids`; order and repeats do not matter.
        unk_id: the tokenizer's [UNK] id (``tokenizer.unk_token_id``); must be among ``keep_ids``.

    Raises:
        ValueError: a model whose output embeddings share the table (a masked-LM head), an id
            outside the vocabulary or pruned before, or [UNK] not kept.
    """
    if model.get_output_embeddings() is not None:
        raise ValueError(f"prune_vocabulary: {type(model).__name__} ties its output layer to the word embeddings; "
                         "prune a classifier (BertFor*Classification) or BertModel")
    embedding, config = model.get_input_embeddings(), model.config
    keep = sorted({int(i) for i in keep_ids})
    vocab_size = embedding.remap.numel() if isinstance(embedding, RemappedEmbedding) else embedding.num_embeddings
    _check_keep_ids(embedding, keep, unk_id, vocab_size)
    keep_tensor = torch.tensor(keep, dtype=torch.long)
    rows = embedding.remap[keep_tensor] if isinstance(embedding, RemappedEmbedding) else keep_tensor
    remap = torch.full((vocab_size,), keep.index(unk_id), dtype=torch.long, device=embedding.weight.device)
    remap[keep_tensor] = torch.arange(len(keep), device=embedding.weight.device)
    pad_id = config.pad_token_id
    padding_idx = int(remap[pad_id]) if embedding.padding_idx is not None and pad_id in keep else None
    weight = embedding.weight.detach().index_select(0, rows.to(embedding.weight.device)).clone()
    pruned = RemappedEmbedding(weight, remap, unk_id, padding_idx)
    pruned.weight.requires_grad_(embedding.weight.requires_grad)
    model.set_input_embeddings(pruned)
    config.pruning = {**(getattr(config, "pruning", None) or {}), "vocab": keep, "vocab_unk_id": unk_id}
