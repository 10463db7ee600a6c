"""Splits read from the Hugging Face hub: a split's only source (``hub`` without ``path``), or the
fallback of a local file that is missing (both given, as the presets do).

A hub split is read with ``datasets.load_dataset`` (its cache first when offline). When it cannot
be read (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` with nothing cached, the hub
unreachable, an unknown name or split) the run stops with one line naming both ways: the local
file to put in place and the hub dataset to read online.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from core.errors import DataError
from core.schema import TAGS, TOKENS
from pipeline.config.data_sections import SplitConfig

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
"""Environment variables that switch the hub off (``1``, ``ON``, ``YES`` or ``TRUE``)."""


def reads_hub(path: Path | None, split: SplitConfig) -> bool:
    """Whether ``split`` comes from the hub: it has no local path, or its local file is missing and it names a hub dataset."""
    return split.hub is not None and (path is None or not path.exists())


def hub_name(split: SplitConfig) -> str:
    """``NAME[/SUBSET]:SPLIT``, the hub split as messages show it (e.g. ``stanfordnlp/sst2:validation``)."""
    return f"{split.hub}{'/' + split.hub_subset if split.hub_subset else ''}:{split.hub_split}"


def offline_variable() -> str | None:
    """The first variable of :data:`OFFLINE_VARIABLES` set to a true value, else None."""
    return next((name for name in OFFLINE_VARIABLES
                 if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}), None)


def load_hub_split(split: SplitConfig, local: Path | None) -> datasets.Dataset:
    """Read the hub split of ``split`` (all its rows; ``skip`` and ``limit`` apply later).

    Args:
        split: a split with ``hub`` set.
        local: its local file when it names one (missing, else it would have been read), else None.

    Returns:
        The hub split's rows, one column per field.

    Raises:
        DataError: the hub split cannot be read; one line naming ``local`` (or, without one, the
            hub name) with why, the folder to put the file in and the hub dataset to read online.
    """
    try:
        return datasets.load_dataset(split.hub, split.hub_subset, split=split.hub_split)
    except (OSError, ValueError) as exc:  # ConnectionError, DatasetNotFoundError; an unknown split
        variable = offline_variable()
        why = f"offline ({variable}=1)" if variable else str(exc).strip().splitlines()[0].rstrip(".")
        if local is None:
            raise DataError(hub_name(split), f"hub dataset could not be read: {why}; go online, or give the split "
                                             f"a local path (e.g. a copy of the dataset)") from None
        fix = f"unset {variable} and " if variable else ""
        raise DataError(local, f"no such file, and hub dataset {hub_name(split)} could not be read: {why}; put the "
                               f"file in {local.parent}/ (data.root or $DISTILL_DATA_DIR), or {fix}read "
                               f"{split.hub} online") from None


def hub_tagged_table(table: datasets.Dataset, labels: list[str], split: SplitConfig) -> datasets.Dataset:
    """A token task's hub split as ``{tokens: list<string>, tags: list<int64>}``, tags indexed into ``labels``.

    The split holds ``tokens`` and ``ner_tags`` (else ``tags``), a sequence of class labels
    (CoNLL-2003 on the hub) or of tag strings.

    Raises:
        DataError: a column is missing, or a tag is not one of ``labels``.
    """
    column = next((c for c in ("ner_tags", "tags") if c in table.column_names), None)
    if "tokens" not in table.column_names or column is None:
        raise DataError(hub_name(split), f"a token task's hub split needs columns tokens and ner_tags (or tags); it "
                                         f"has {table.column_names}")
    feature = getattr(table.features[column], "feature", None)
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    index = {tag: i for i, tag in enumerate(labels)}
    tags = []
    for row, values in enumerate(table[column]):
        words = [names[v] if names is not None else str(v) for v in values]
        unknown = [w for w in words if w not in index]
        if unknown:
            raise DataError(hub_name(split), f"row {row + 1} has tag {unknown[0]!r}, not one of data.labels {labels}")
        tags.append([index[w] for w in words])
    return datasets.Dataset.from_dict({TOKENS: table["tokens"], TAGS: tags})
