"""Entity-level precision, recall and F1 of a tagger, as the CoNLL-2003 shared task scores them.

An entity counts as found only if its type and both boundaries match a gold entity exactly.
The counting is ``seqeval``'s default mode, which reproduces ``conlleval``, the shared task's
official script (Tjong Kim Sang & De Meulder 2003): an ``I-X`` tag after ``O`` or after another
type starts a new entity rather than being an error. Scores are micro-averaged over entities;
a score with a zero denominator (no predicted, or no gold, entity) is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support


@dataclass(frozen=True)
class TypeScores:
    """Scores of one entity type (PER, LOC, ...) or of all together.

    Attributes:
        precision: correct entities / predicted entities.
        recall: correct entities / gold entities.
        f1: harmonic mean of the two.
        support: gold entities.
    """

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class EntityScores:
    """Entity-level scores of a tagged corpus.

    Attributes:
        overall: micro-averaged over all entities.
        per_type: by entity type, for the types present in gold or predictions.
    """

    overall: TypeScores
    per_type: dict[str, TypeScores]


def entity_scores(predicted: Sequence[Sequence[int]], gold: Sequence[Sequence[int]],
                  tag_names: Sequence[str]) -> EntityScores:
    """Entity-level precision, recall and F1 of predicted tag sequences against gold ones.

    Args:
        predicted: per sentence, the predicted tag id of each word (padding removed).
        gold: per sentence, the gold tag ids, of the same lengths.
        tag_names: IOB2 tag name of each id, e.g. :data:`pipeline.textdata.conll.CONLL2003_TAGS`.

    Returns:
        :class:`EntityScores` with the micro-averaged and per-type scores.

    Raises:
        ValueError: the two differ in sentence count or in a sentence's length, or an id is
            not an index of ``tag_names``.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sentences but {len(gold)} gold ones")
    for row, (pred_row, gold_row) in enumerate(zip(predicted, gold)):
        if len(pred_row) != len(gold_row):
            raise ValueError(f"sentence {row}: {len(pred_row)} predicted tags but {len(gold_row)} gold ones; "
                             f"strip padding from the predictions")
    gold_names, predicted_names = _names(gold, tag_names), _names(predicted, tag_names)
    # seqeval orders per-type scores by sorted type name
    types = sorted({entity[0] for names in (gold_names, predicted_names) for entity in get_entities(names)})
    per_type = precision_recall_fscore_support(gold_names, predicted_names, average=None, zero_division=0)
    overall = precision_recall_fscore_support(gold_names, predicted_names, average="micro", zero_division=0)
    return EntityScores(overall=_type_scores(*overall),
                        per_type={name: _type_scores(*row) for name, *row in zip(types, *per_type)})


def _names(sequences: Sequence[Sequence[int]], tag_names: Sequence[str]) -> list[list[str]]:
    """Tag ids as tag names; ValueError on an id outside ``tag_names``."""
    names = []
    for row, sequence in enumerate(sequences):
        ids = [int(tag) for tag in sequence]
        bad = [tag for tag in ids if not 0 <= tag < len(tag_names)]
        if bad:
            raise ValueError(f"sentence {row}: tag id {bad[0]} is outside 0..{len(tag_names) - 1} ({list(tag_names)})")
        names.append([tag_names[tag] for tag in ids])
    return names


def _type_scores(precision: float, recall: float, f1: float, support: int) -> TypeScores:
    """seqeval's numpy scalars as TypeScores."""
    return TypeScores(precision=float(precision), recall=float(recall), f1=float(f1), support=int(support))
