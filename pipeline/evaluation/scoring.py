"""What every stage that scores a model shares: the dev rows, the scorer and batched prediction.

One reader of a data-stage split (:func:`read_split`), one place that turns logits into
predictions of rows or words (:func:`predicted_classes`), one scorer (:func:`score`: accuracy and the task's
``data.metric``, or entity-level F1), one batched predictor (:func:`predict`, :func:`predict_with`), used by the
evaluate, prune and benchmark stages and by the training loop's dev scoring; and the batch-1
inputs whose latency the evaluate and benchmark stages time (:func:`batch1_features`).
"""

from __future__ import annotations

from collections.abc import Callable
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import sklearn.metrics
import torch
from torch import nn

from core.hf_checkpoint import load_tokenizer
from core.schema import TEXT_PAIR, TaskKind
from pipeline.evaluation.entity_metrics import entity_scores
from teachers.checkpoint import CLASSIFIERS
from teachers.token_alignment import WordTagger, word_features

EVAL_BATCH = 64
"""Rows per batch, taken in length order so that padding stays small."""


@dataclass(frozen=True)
class Split:
    """The rows of one evaluated split.

    Attributes:
        texts: N sentences, or N word lists for token tasks.
        pairs: N second sentences of a pair task, else None.
        gold: N class ids, or N tag-id lists for token tasks.
    """

    texts: list
    pairs: list[str] | None
    gold: list


def featurize_for(featurize: Callable[..., dict[str, Any]], task: str | None) -> Callable[..., dict[str, Any]]:
    """``featurize`` itself for an unnamed task; for a named one, its features with ``task`` added
    (the head a multi-task student runs)."""
    if task is None:
        return featurize

    def featurize_task(texts: list, pairs: list[str] | None = None) -> dict[str, Any]:
        return {**featurize(texts, pairs), "task": task}

    return featurize_task


SEQUENCE_METRICS: dict[str, Callable[[list[int], list[int]], float]] = {
    "accuracy": sklearn.metrics.accuracy_score,
    "f1": partial(sklearn.metrics.f1_score, pos_label=1, average="binary", zero_division=0.0),
    "macro_f1": partial(sklearn.metrics.f1_score, average="macro", zero_division=0.0),
    "matthews": sklearn.metrics.matthews_corrcoef,
}
"""The scores of a sequence task's ``data.metric``, ``f(gold, predicted) -> float`` over class ids
(scikit-learn's): ``f1`` is the F1 of class 1 (``data.labels[1]``, the positive class of a two-label
task), ``macro_f1`` the unweighted mean of the per-class F1 over the classes in gold or predictions,
``matthews`` the Matthews correlation coefficient (-1..1, 0 for a constant prediction)."""


def dev_metric_name(tag_names: list[str] | None, metric: str = "accuracy") -> str:
    """The key of :func:`score` that picks the best epoch: ``metric`` (``data.metric``, see
    :attr:`pipeline.config.data_sections.DataConfig.scored_metric`), or ``entity_f1`` for tags."""
    return metric if tag_names is None else "entity_f1"


def score(predicted: list, gold: list, tag_names: list[str] | None, metric: str = "accuracy") -> dict[str, float]:
    """Scores of predictions against gold labels.

    Args:
        predicted: N class ids, or N tag-id lists (one per word).
        gold: the same shape.
        tag_names: IOB2 name of each tag id for token tasks; None for sentence labels.
        metric: a sequence task's metric, a key of :data:`SEQUENCE_METRICS` (ignored for tags).

    Returns:
        ``{metric, "accuracy"}`` for sentence labels (the metric first, the headline; one key when it
        is accuracy; every score 0.0 without rows); ``{"entity_f1", "entity_precision",
        "entity_recall"}`` (micro-averaged over entities,
        :func:`pipeline.evaluation.entity_metrics.entity_scores`) for tags.
    """
    if tag_names is None:
        if not gold:
            return dict.fromkeys((metric, "accuracy"), 0.0)
        with warnings.catch_warnings():  # matthews on one class only: sklearn warns, and returns 0.0
            warnings.simplefilter("ignore", UserWarning)
            return {name: float(SEQUENCE_METRICS[name](gold, predicted)) for name in (metric, "accuracy")}
    overall = entity_scores(predicted, gold, tag_names).overall
    return {"entity_f1": overall.f1, "entity_precision": overall.precision, "entity_recall": overall.recall}


def agreement(predicted: list, reference: list) -> float:
    """The fraction of rows whose prediction equals the reference model's: a class id, or a
    tagger's whole tag list ([N] each; 0.0 without rows)."""
    return float(np.mean([a == b for a, b in zip(predicted, reference)])) if reference else 0.0


def predicted_classes(logits: torch.Tensor | np.ndarray, word_mask: torch.Tensor | np.ndarray | None = None) -> list:
    """The argmax class of each row, or of each real word of each row: what :func:`score` takes.

    Args:
        logits: float [B, C] (one label per row) or [B, W, C] (word taggers), a torch tensor (any
            device or dtype) or a numpy array.
        word_mask: bool [B, W], the words of each row to keep (None: all W); only for [B, W, C].

    Returns:
        B class ids, or B lists of tag ids (one per kept word, in order).
    """
    best = _numpy(logits.argmax(-1))  # [B] or [B, W] int64
    if best.ndim == 1:
        return best.tolist()
    return word_rows(best, np.ones(best.shape, dtype=bool) if word_mask is None else word_mask)


def word_rows(values: torch.Tensor | np.ndarray, word_mask: torch.Tensor | np.ndarray) -> list[list[int]]:
    """Each row's values [B, W] (tag ids) at its kept words (``word_mask`` bool [B, W]), as B lists."""
    values, keep = _numpy(values), _numpy(word_mask).astype(bool)
    return [row[kept].tolist() for row, kept in zip(values, keep)]


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def read_split(path: Path, kind: TaskKind, rows: int | None = None) -> Split:
    """The first ``rows`` rows (None: all) of a data-stage split table (``data/<split>.parquet``,
    the columns of ``kind``) as a :class:`Split`; the transfer set's unlabeled rows have gold -1."""
    table = pq.read_table(path, columns=kind.text_columns + [kind.label_column]).slice(0, rows)
    pairs = table.column(TEXT_PAIR).to_pylist() if kind is TaskKind.PAIR else None
    return Split(table.column(kind.text_columns[0]).to_pylist(), pairs, table.column(kind.label_column).to_pylist())


def teacher_model(teacher_dir: Path, max_length: int, task: str = "sequence") -> tuple[nn.Module, Callable, Path]:
    """The fine-tuned teacher in eval mode, its featurizer (tokenizer to ``max_length``) and folder.

    A token classifier is wrapped as a :class:`WordTagger` whose featurizer takes word lists,
    so that it returns word logits [B, W, C] like a tagging student.
    """
    model = CLASSIFIERS[task].from_pretrained(str(teacher_dir), use_safetensors=True).eval()
    return (WordTagger(model).eval() if task == "token" else model), teacher_featurizer(teacher_dir, max_length,
                                                                                        task), teacher_dir


def teacher_featurizer(teacher_dir: Path, max_length: int, task: str = "sequence") -> Callable:
    """``(texts, pairs=None) -> features``: the tokenizer of a Hugging Face folder, truncating to
    ``max_length`` tokens: int64 tensors [B, T] (``input_ids``, ``attention_mask``,
    ``token_type_ids``); for ``task="token"`` the texts are word lists and ``first_subtoken``
    [B, W] is added (:func:`teachers.token_alignment.word_features`)."""
    tokenizer = load_tokenizer(teacher_dir)
    if task == "token":
        return lambda sentences, pairs=None: word_features(tokenizer, sentences, max_length)

    def featurize(texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt"))

    return featurize


def predict(model: nn.Module, featurize: Callable, split: Split) -> list:
    """The argmax class of every row ([N] ids), or of every word of every row (N lists) for taggers.

    Rows are batched in length order (characters, or words for word lists) to keep padding small.
    """
    with torch.inference_mode():
        return predict_with(lambda batch: logits_of(model, batch), featurize, split, EVAL_BATCH)


def predict_with(logits_fn: Callable, featurize: Callable, split: Split, batch_size: int) -> list:
    """:func:`predict` through any runtime: ``logits_fn(featurize(texts, pairs))`` gives logits
    [b, C] or [b, W, C] (a torch tensor or a numpy array) of ``batch_size`` rows at a time,
    taken in length order; :func:`predicted_classes` turns them into predictions (a word list's
    first W words, W the batch's word axis)."""
    texts, pairs = split.texts, split.pairs
    predictions: list = [None] * len(texts)
    order = np.argsort([len(t) + len(p or "") for t, p in zip(texts, pairs or [None] * len(texts))], kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch = featurize([texts[i] for i in rows], [pairs[i] for i in rows] if pairs else None)
        logits = logits_fn(batch)  # [b, C] or [b, W, C]
        words = (np.arange(logits.shape[1]) < np.array([len(texts[i]) for i in rows])[:, None]
                 if logits.ndim == 3 else None)  # [b, W]: each row's words, not the batch's padding
        for row, prediction in zip(rows, predicted_classes(logits, words)):
            predictions[row] = prediction
    return predictions


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits float32 of a teacher or a student (both return an object with ``logits``):
    [B, C] for sentences, [B, W, C] for word taggers."""
    return model(**batch).logits.float()


def batch1_features(featurize: Callable[..., dict[str, Any]], split: Split, rows: int) -> list[dict[str, Any]]:
    """The split's first ``rows`` rows (all, if fewer), each featurized alone: the batch-1 inputs
    whose latency :func:`compress.latency.measure` times, one dict of [1, T] features per row."""
    return [featurize([split.texts[i]], [split.pairs[i]] if split.pairs else None)
            for i in range(min(rows, len(split.texts)))]
