"""Stage ``data``: read the labeled train split, the dev (and test) split and build the transfer set.

The transfer set is the labeled split, the unlabeled rows, and, with ``data.augment``, the
augmented sentences of :mod:`pipeline.augment` (Tang et al. 2019), deduplicated.

For sequence tasks, tables are read with Hugging Face ``datasets`` (local TSV/CSV/JSONL/JSON/
Parquet, or a hub dataset when online), checked, and written as Parquet with the columns

    id         int64   row id, unique within the table
    text       string  the input sentence
    text_pair  string  the second sentence, only with ``data.text_pair_column`` (pair tasks)
    label      int64   class index into ``data.labels``; -1 for an unlabeled transfer row

For token tasks (``data.task: token``) every split is a CoNLL-format file read by
:func:`pipeline.conll.read_conll`, and the tables hold

    id         int64         row id, unique within the table
    tokens     list<string>  the sentence's words
    tags       list<int64>   tag index into ``data.labels`` per word; [] for an unlabeled transfer row

Every check runs before any model work, and each failure names the file and what to do.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import datasets

from core.artifacts import atomic_path
from pipeline.artifacts import RunDir
from pipeline.augment import augment, read_pos_lexicon
from pipeline.config import DataConfig, RunConfig, SplitConfig
from pipeline.conll import read_conll
from core.errors import DataError
from core.schema import ID, LABEL, NO_LABEL, TAGS, TOKENS, TaskKind

log = logging.getLogger(__name__)


_BUILDERS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_TEXT_SUFFIXES = {".tsv", ".csv", ".jsonl", ".json"}


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Read, check and store the three tables of the run.

    Returns:
        Summary for the stage manifest: per table its rows, label counts (per tag over words
        for token tasks) and ``unlabeled_rows``, the rows without a hard label.

    Raises:
        DataError: a file is missing, empty, not UTF-8, lacks a column, or holds a label
            outside ``data.labels`` (for CoNLL files: see :func:`pipeline.conll.read_conll`).
    """
    data = cfg.data
    kind = task_kind(data)
    read = read_tagged_split if data.task == "token" else read_split
    train = read(data, data.train, labeled=True)
    splits = {"dev": read(data, data.dev, labeled=True)}
    if data.test is not None:
        splits["test"] = read(data, data.test, labeled=True)
    extras = [read(data, data.unlabeled, labeled=False)] if data.unlabeled else []
    summary = {}
    if data.augment is not None:
        lexicon = read_pos_lexicon(data.resolve_path(data.augment.pos_lexicon))
        known = set(sentences(train, kind)).union(*(sentences(extra, kind) for extra in extras))
        rows = augment(train[ID], sentences(train, kind), data.augment, lexicon, cfg.seed, exclude=known)
        columns = {name: [row[i] for row in rows] for i, name in enumerate(kind.text_columns)}
        extras.append(datasets.Dataset.from_dict({ID: list(range(len(rows))), **columns,
                                                  LABEL: [NO_LABEL] * len(rows)}, features=train.features))
        summary["augmented"] = {"rows": len(rows), "growth": round(len(rows) / len(train), 2)}
        log.info("data: augmentation added %d rows (%.1fx the labeled split)", len(rows), len(rows) / len(train))
    transfer = build_transfer_set(train, extras, kind)
    for name, table in {"train": train, **splits, "transfer": transfer}.items():
        with atomic_path(run_dir.split_file(name)) as tmp:
            table.to_parquet(str(tmp))
        if kind is TaskKind.TOKEN:
            labels = Counter(tag for tags in table[TAGS] for tag in tags)
            unlabeled = sum(not tags for tags in table[TAGS])
        else:
            labels = Counter(table[LABEL])
            unlabeled = labels.get(NO_LABEL, 0)
        summary[name] = {"rows": len(table), "unlabeled_rows": unlabeled,
                         "label_counts": {str(k): v for k, v in sorted(labels.items())}}
        log.info("data: %s has %d rows, labels %s", name, len(table), dict(labels))
    return summary


def task_kind(data: DataConfig) -> TaskKind:
    """The task's kind, decided once from ``data.task`` and ``data.text_pair_column``."""
    if data.task == "token":
        return TaskKind.TOKEN
    return TaskKind.PAIR if data.text_pair_column else TaskKind.SENTENCE


def sentences(table: datasets.Dataset, kind: TaskKind) -> list[tuple]:
    """Each row's sentences, ``(text,)``, ``(text, text_pair)`` or ``(tuple_of_words,)`` for token
    tasks: the key rows are deduplicated by."""
    if kind is TaskKind.TOKEN:
        return [(tuple(words),) for words in table[TOKENS]]
    return list(zip(*(table[name] for name in kind.text_columns)))


def build_transfer_set(train: datasets.Dataset, extras: list[datasets.Dataset], kind: TaskKind) -> datasets.Dataset:
    """The transfer set: labeled rows (hard labels kept), then extra rows not already present.

    A row is present when its sentences, the pair for pair tasks, equal those of an earlier row.

    Args:
        train: the labeled split, columns ``id, text, [text_pair,] label`` (``id, tokens, tags``
            for token tasks).
        extras: unlabeled or augmented rows, same columns; their labels are dropped.
        kind: the task's kind.

    Returns:
        A table with the columns of ``train``, fresh ids ``0..N-1``; extra rows have ``label = -1``
        (``tags = []``).
    """
    parts = [train]
    seen = set(sentences(train, kind))
    no_label = {TAGS: []} if kind is TaskKind.TOKEN else {LABEL: NO_LABEL}
    for extra in extras:
        keep = [i for i, key in enumerate(sentences(extra, kind)) if not (key in seen or seen.add(key))]
        parts.append(extra.select(keep).map(lambda _: no_label))
    transfer = datasets.concatenate_datasets(parts)
    transfer = transfer.remove_columns(ID).add_column(ID, list(range(len(transfer))))
    return transfer.select_columns(train.column_names)  # the column order of the other tables


def read_split(data: DataConfig, split: SplitConfig, *, labeled: bool) -> datasets.Dataset:
    """Read one split into a ``datasets.Dataset`` with columns ``id, text, [text_pair,] label``.

    Args:
        data: the data section (columns, label set, root folder).
        split: which file or hub split, and which rows.
        labeled: whether the label column must be present and valid.

    Raises:
        DataError: see :func:`run`.
    """
    path = data.resolve(split)
    if path is None:
        table = datasets.load_dataset(split.hub, split.hub_subset, split=split.hub_split)
        origin = Path(f"{split.hub}:{split.hub_split}")
    else:
        check_file(path)
        table = _load_local(path)
        origin = path
    stop = len(table) if split.limit is None else min(len(table), split.skip + split.limit)
    table = table.select(range(split.skip, stop))
    if len(table) == 0:
        raise DataError(origin, f"no rows left after skip={split.skip}; lower data.*.skip")
    # stored column name -> source column name
    sources = dict(zip(task_kind(data).text_columns, (data.text_column, data.text_pair_column)))
    for column in [*sources.values()] + ([data.label_column] if labeled else []):
        if column not in table.column_names:
            raise DataError(origin, f"has no column {column!r} (columns: {table.column_names}); "
                                    f"set data.text_column / data.text_pair_column / data.label_column")
    columns = {name: checked_sentences(table[source], source, origin, split.skip) for name, source in sources.items()}
    rows = len(table)
    labels = label_indices(data, table[data.label_column], origin, split.skip) if labeled else [NO_LABEL] * rows
    return datasets.Dataset.from_dict(
        {ID: list(range(rows)), **columns, LABEL: labels},
        features=datasets.Features({ID: datasets.Value("int64"),
                                    **{name: datasets.Value("string") for name in columns},
                                    LABEL: datasets.Value("int64")}))


def read_tagged_split(data: DataConfig, split: SplitConfig, *, labeled: bool) -> datasets.Dataset:
    """Read one CoNLL-format split of a token task into a table with columns ``id, tokens, tags``.

    Args:
        data: the data section (label set, root folder).
        split: which file, and which sentences (``skip``, ``limit``); hub splits are not supported.
        labeled: whether to keep the tags; an unlabeled split's rows get ``tags = []``.

    Raises:
        DataError: the split names a hub dataset, no sentence is left after ``skip``, or the
            file fails :func:`pipeline.conll.read_conll`'s checks (a tag outside ``data.labels``
            names its line).
    """
    path = data.resolve(split)
    if path is None:
        raise DataError(Path(f"{split.hub}:{split.hub_split}"), "token tasks read CoNLL-format files; give the "
                                                                "split a local path instead of hub")
    table = read_conll(path, [str(tag) for tag in data.labels])
    stop = len(table) if split.limit is None else min(len(table), split.skip + split.limit)
    if split.skip >= stop:
        raise DataError(path, f"no sentences left after skip={split.skip} (the file has {len(table)}); "
                              f"lower data.*.skip")
    tags = table[TAGS][split.skip:stop] if labeled else [[] for _ in range(split.skip, stop)]
    return datasets.Dataset.from_dict(
        {ID: list(range(stop - split.skip)), TOKENS: table[TOKENS][split.skip:stop], TAGS: tags},
        features=datasets.Features({ID: datasets.Value("int64"),
                                    TOKENS: datasets.List(datasets.Value("string")),
                                    TAGS: datasets.List(datasets.Value("int64"))}))


def checked_sentences(values: list, column: str, origin: Path, first_row: int = 0) -> list[str]:
    """The values of a sentence column as stripped strings.

    Raises:
        DataError: a value is missing or blank (the first such row is named).
    """
    for row, value in enumerate(values):
        if value is None or not str(value).strip():
            raise DataError(origin, f"row {first_row + row + 1} has an empty {column!r}; remove the row")
    return [str(value).strip() for value in values]


def label_indices(data: DataConfig, values: list, origin: Path, first_row: int = 0) -> list[int]:
    """Map raw label values to class indices in ``data.labels`` order.

    Raises:
        DataError: a value is not in the configured label set (the first such row is named).
    """
    index = {str(v): i for i, v in enumerate(data.labels)}
    out = []
    for row, value in enumerate(values):
        key = str(value).strip()
        if key not in index:
            raise DataError(origin, f"row {first_row + row + 1}: label {value!r} is not in the configured "
                                    f"label set {data.labels}; fix the row or data.labels")
        out.append(index[key])
    return out


def check_file(path: Path) -> None:
    """Fail early, with the file named, on a missing, empty or non-UTF-8 input file.

    Raises:
        DataError: the file is missing, unsupported, empty, or has a line that is not UTF-8.
    """
    if not path.is_file():
        raise DataError(path, "no such file; check data.root (or $DISTILL_DATA_DIR) and the split's path")
    if path.suffix not in _BUILDERS:
        raise DataError(path, f"unsupported format {path.suffix!r}; use one of {sorted(_BUILDERS)}")
    if path.stat().st_size == 0:
        raise DataError(path, "the file is empty")
    if path.suffix in _TEXT_SUFFIXES:
        with open(path, "rb") as fh:
            lines = 0
            for lines, raw in enumerate(fh, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(path, f"line {lines} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                                          f"re-encode the file as UTF-8") from None
        if lines <= (1 if path.suffix in {".tsv", ".csv"} else 0):
            raise DataError(path, "the file has no data rows")


def _load_local(path: Path) -> datasets.Dataset:
    builder = _BUILDERS[path.suffix]
    kwargs = {}
    if path.suffix == ".tsv":
        kwargs = {"sep": "\t", "quoting": csv.QUOTE_NONE}
    elif path.suffix == ".csv":
        kwargs = {"quoting": csv.QUOTE_MINIMAL}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets wraps parser errors in several types
        raise DataError(path, f"could not be parsed as {path.suffix[1:]}: {exc}") from None
