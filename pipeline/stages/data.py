"""Stage ``data``: read the labeled train split, the dev (and test) split and build the transfer set.

The transfer set is the labeled split, the unlabeled rows, and, with ``data.augment``, the
augmented sentences of :mod:`pipeline.textdata.augment` (Tang et al. 2019; for token tasks too),
deduplicated.

For sequence tasks, tables are read with Hugging Face ``datasets`` (local TSV/CSV/JSONL/JSON/
Parquet, or a hub dataset when online), checked, and written as Parquet with the columns

    id         int64   row id, unique within the table
    text       string  the input sentence
    text_pair  string  the second sentence, only with ``data.text_pair_column`` (pair tasks)
    label      int64   class index into ``data.labels``; -1 for an unlabeled transfer row

For token tasks (``data.task: token``) every split is a CoNLL-format file read by
:func:`pipeline.textdata.conll.read_conll`, and the tables hold

    id         int64         row id, unique within the table
    tokens     list<string>  the sentence's words
    tags       list<int64>   tag index into ``data.labels`` per word; [] for an unlabeled transfer row

Every check runs before any model work, and each failure names the file and what to do; the
teacher's folder is checked here too (:func:`teachers.checkpoint.check_teacher`), and its tokenizer
counts the rows longer than ``teacher.max_length`` tokens, which the teacher sees truncated.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import datasets

from core.artifacts import atomic_path
from core.errors import DataError
from core.hf_checkpoint import load_tokenizer
from core.schema import ID, LABEL, NO_LABEL, TAGS, TEXT, TEXT_PAIR, TOKENS, TaskKind
from pipeline.artifacts import RunDir
from pipeline.textdata.augment import augment
from pipeline.config.sections import DataConfig, RunConfig, SplitConfig, task_kind
from pipeline.textdata.conll import read_conll
from pipeline.textdata.lexicon import lexicon_path, read_pos_lexicon
from pipeline.textdata.files import load_table
from pipeline.textdata.hub import hub_name, hub_tagged_table, load_hub_split, reads_hub
from teachers.checkpoint import check_teacher, resolve_teacher

log = logging.getLogger(__name__)

_TOKENIZE_ROWS = 8192
"""Rows tokenized at once when counting truncated rows (bounds the memory of long documents)."""

SMALL_TOKEN_SET = 5_000
"""A token task's transfer set below this many sentences, without ``data.augment``, gets a warning
that suggests it. 5,000 is about a third of CoNLL-2003's train split: there a 20,000-word tagger
sees most of its words a handful of times, a 3,394-sentence social-media set left the CNN-LSTM
tagger at 0.00 entity F1 (issue 26), and Tang et al. (2019) report the largest gains of their
augmentation on the smallest sets. Not on by default: that would change the transfer set of
runs that leave ``data.augment`` out without changing their fingerprint."""


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Read, check and store the three tables of the run.

    Returns:
        Summary for the stage manifest: ``label_map`` (file value -> class index), and per table
        its rows, label counts (per tag over words for token tasks), ``unlabeled_rows`` (the rows
        without a hard label), ``truncated_rows`` (rows over ``teacher.max_length`` tokens) and,
        for labeled tables, ``imbalance`` (largest over smallest class count; None when a class
        has no row).

    Raises:
        DataError: a file cannot be read (see :func:`pipeline.textdata.files.load_table`), lacks a
            column, or holds a label outside ``data.labels`` (for CoNLL files: see
            :func:`pipeline.textdata.conll.read_conll`).
        ConfigError: the teacher's folder fails :func:`teachers.checkpoint.check_teacher`.
    """
    data = cfg.data
    kind = task_kind(data)
    teacher = resolve_teacher(cfg.teacher.model)
    check_teacher(teacher, len(data.labels), data.task)
    read = read_tagged_split if data.task == "token" else read_split
    train = read(data, data.train, labeled=True)
    splits = {"dev": read(data, data.dev, labeled=True)}
    if data.test is not None:
        splits["test"] = read(data, data.test, labeled=True)
    extras = [read(data, data.unlabeled, labeled=False)] if data.unlabeled else []
    if data.task == "token" and data.augment is None and len(train) + sum(map(len, extras)) < SMALL_TOKEN_SET:
        log.warning("data: the transfer set has only %d sentences (labeled and unlabeled); a tagger learns little "
                    "from under %d; set data.augment={copies: 5} to grow it (Tang et al. 2019)",
                    len(train) + sum(map(len, extras)), SMALL_TOKEN_SET)
    summary = {}
    if data.augment is not None:
        extras.append(augmented_table(train, extras, data, kind, cfg.seed))
        added = len(extras[-1])
        summary["augmented"] = {"rows": added, "growth": round(added / len(train), 2)}
        log.info("data: augmentation added %d rows (%.1fx the labeled split)", added, added / len(train))
    transfer = build_transfer_set(train, extras, kind)
    tokenizer = load_tokenizer(teacher)
    summary["label_map"] = label_map(data)
    log.info("data: file label values -> class indices %s", summary["label_map"])
    for name, table in {"train": train, **splits, "transfer": transfer}.items():
        with atomic_path(run_dir.split_file(name)) as tmp:
            table.to_parquet(str(tmp))
        summary[name] = table_summary(table, kind, len(data.labels), name != "transfer")
        summary[name]["truncated_rows"] = truncated_rows(table, kind, tokenizer, cfg.teacher.max_length)
        log.info("data: %s has %d rows, labels %s, imbalance %s (largest / smallest class); %d rows over "
                 "teacher.max_length=%d tokens are truncated", name, len(table), summary[name]["label_counts"],
                 summary[name].get("imbalance", "n/a"), summary[name]["truncated_rows"], cfg.teacher.max_length)
    return summary


def table_summary(table: datasets.Dataset, kind: TaskKind, num_labels: int, labeled: bool) -> dict:
    """Rows, ``unlabeled_rows``, ``label_counts`` (class index -> rows, or words for token tasks)
    and, for a labeled table, ``imbalance``: the largest class count over the smallest, rounded
    to 2 decimals; None when one of the ``num_labels`` classes has no row."""
    if kind is TaskKind.TOKEN:
        labels = Counter(tag for tags in table[TAGS] for tag in tags)
        unlabeled = sum(not tags for tags in table[TAGS])
    else:
        labels = Counter(table[LABEL])
        unlabeled = labels.get(NO_LABEL, 0)
    summary = {"rows": len(table), "unlabeled_rows": unlabeled,
               "label_counts": {str(k): v for k, v in sorted(labels.items())}}
    if labeled:
        counts = [labels.get(i, 0) for i in range(num_labels)]
        summary["imbalance"] = round(max(counts) / min(counts), 2) if min(counts) else None
    return summary


def truncated_rows(table: datasets.Dataset, kind: TaskKind, tokenizer, max_length: int) -> int:
    """Rows whose teacher tokens (special tokens included) exceed ``max_length``: the rows the
    teacher (and a transformer student) sees cut to ``max_length`` tokens.

    Args:
        table: a stored table (:mod:`core.schema` columns of ``kind``).
        kind: the task's kind; token tasks tokenize each row's words (``is_split_into_words``).
        tokenizer: the teacher's tokenizer.
        max_length: ``teacher.max_length``, in tokens.
    """
    over = 0
    for batch in table.iter(batch_size=_TOKENIZE_ROWS):
        if kind is TaskKind.TOKEN:
            encoded = tokenizer(batch[TOKENS], is_split_into_words=True)
        else:
            encoded = tokenizer(batch[TEXT], batch[TEXT_PAIR] if kind is TaskKind.PAIR else None)
        over += sum(len(ids) > max_length for ids in encoded["input_ids"])
    return over


def sentences(table: datasets.Dataset, kind: TaskKind) -> list[tuple]:
    """Each row's sentences, ``(text,)``, ``(text, text_pair)`` or ``(tuple_of_words,)`` for token
    tasks: the key rows are deduplicated by."""
    if kind is TaskKind.TOKEN:
        return [(tuple(words),) for words in table[TOKENS]]
    return list(zip(*(table[name] for name in kind.text_columns)))


def augmented_table(train: datasets.Dataset, extras: list[datasets.Dataset], data: DataConfig, kind: TaskKind,
                    seed: int) -> datasets.Dataset:
    """The rows that ``data.augment`` adds (:func:`pipeline.textdata.augment.augment`), without hard labels.

    A token task's sentence is augmented as its words joined by spaces, so masking, POS-guided
    replacement and n-gram sampling keep words whole and the teacher tags every word of a
    candidate (new words included); Dai and Adel (2020) grow NER data the same way.

    Args:
        train: the labeled split, the candidates' sources.
        extras: the unlabeled rows; no candidate repeats one of them.
        data: the data section, with ``augment`` set.
        kind: the task's kind.
        seed: the run seed.

    Returns:
        A table with the columns of ``train``: label -1 (``tags = []`` for token tasks).

    Raises:
        DataError: the POS lexicon is missing or empty (:func:`pipeline.textdata.lexicon.read_pos_lexicon`).
    """
    lexicon = read_pos_lexicon(lexicon_path(data))
    as_text = (lambda keys: [(" ".join(words),) for (words,) in keys]) if kind is TaskKind.TOKEN else list
    known = set(as_text(sentences(train, kind))).union(*(as_text(sentences(extra, kind)) for extra in extras))
    rows = augment(train[ID], as_text(sentences(train, kind)), data.augment, lexicon, seed, exclude=known)
    if kind is TaskKind.TOKEN:
        columns = {TOKENS: [text.split() for (text,) in rows], TAGS: [[] for _ in rows]}
    else:
        columns = {**{name: [row[i] for row in rows] for i, name in enumerate(kind.text_columns)},
                   LABEL: [NO_LABEL] * len(rows)}
    return datasets.Dataset.from_dict({ID: list(range(len(rows))), **columns}, features=train.features)


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
    if reads_hub(path, split):
        table, origin = load_hub_split(split, path), Path(hub_name(split))
    else:
        table = load_table(path, data.columns)
        origin = path
    stop = len(table) if split.limit is None else min(len(table), split.skip + split.limit)
    table = table.select(range(split.skip, stop))
    if len(table) == 0:
        raise DataError(origin, f"no rows left after skip={split.skip}; lower data.*.skip")
    text_sources = data.text_columns or [data.text_column]
    pair_sources = [data.text_pair_column] if data.text_pair_column else []
    for column in [*text_sources, *pair_sources] + ([data.label_column] if labeled else []):
        if column not in table.column_names:
            raise DataError(origin, f"has no column {column!r} (columns: {table.column_names}); set data.columns "
                                    f"(headerless files) or data.text_column(s) / text_pair_column / label_column")
    columns = {TEXT: joined_sentences([table[c] for c in text_sources], text_sources, data.text_separator,
                                      origin, split.skip)}
    if pair_sources:
        columns[TEXT_PAIR] = joined_sentences([table[pair_sources[0]]], pair_sources, " ", origin, split.skip)
    rows = len(table)
    labels = label_indices(data, table[data.label_column], origin, split.skip) if labeled else [NO_LABEL] * rows
    return datasets.Dataset.from_dict(
        {ID: list(range(rows)), **columns, LABEL: labels},
        features=datasets.Features({ID: datasets.Value("int64"),
                                    **{name: datasets.Value("string") for name in columns},
                                    LABEL: datasets.Value("int64")}))


def read_tagged_split(data: DataConfig, split: SplitConfig, *, labeled: bool) -> datasets.Dataset:
    """Read one split of a token task (a file of one word per line, :mod:`pipeline.textdata.conll`)
    into a table with columns ``id, tokens, tags``.

    Args:
        data: the data section (label set, ``tag_column``, root folder).
        split: which file or hub split (:func:`pipeline.textdata.hub.hub_tagged_table`), and which
            sentences (``skip``, ``limit``).
        labeled: whether to keep the tags; an unlabeled split's rows get ``tags = []``.

    Raises:
        DataError: no sentence is left after ``skip``, the file fails
            :func:`pipeline.textdata.conll.read_conll`'s checks (a tag outside ``data.labels`` names
            its line), or the hub split cannot be read (:func:`pipeline.textdata.hub.load_hub_split`).
    """
    path = data.resolve(split)
    labels = [str(tag) for tag in data.labels]
    if reads_hub(path, split):
        table = hub_tagged_table(load_hub_split(split, path), labels, split)
    else:
        table = read_conll(path, labels, data.tag_column)
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


def joined_sentences(values: list[list], columns: list[str], separator: str, origin: Path,
                     first_row: int = 0) -> list[str]:
    """Each row's stripped, non-empty values of ``columns`` joined with ``separator``.

    Args:
        values: per column, its N values.
        columns: the columns' names, for messages.
        separator: what goes between two columns' values (``data.text_separator``).
        origin: the file, for messages.
        first_row: rows skipped before ``values`` (``data.*.skip``), for messages.

    Raises:
        DataError: a row has no text in any of the columns (the first such row is named).
    """
    out = []
    for row, parts in enumerate(zip(*values)):
        text = separator.join(part for part in (str(v).strip() for v in parts if v is not None) if part)
        if not text:
            named = repr(columns[0]) if len(columns) == 1 else f"{columns}"
            raise DataError(origin, f"row {first_row + row + 1} has an empty {named}; remove the row")
        out.append(text)
    return out


def label_map(data: DataConfig) -> dict[str, int]:
    """File label value -> class index: each label of ``data.labels`` (as text) and, with
    ``data.label_values``, the value standing for it, both mapping to the label's position."""
    mapping = {str(label): i for i, label in enumerate(data.labels)}
    mapping.update({str(value): i for i, value in enumerate(data.label_values or [])})
    return mapping


def label_key(value) -> str:
    """A file's label value as text: ``3.0`` (a numeric column with gaps is read as float) is ``3``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def label_indices(data: DataConfig, values: list, origin: Path, first_row: int = 0) -> list[int]:
    """Map raw label values to class indices in ``data.labels`` order (see :func:`label_map`).

    Raises:
        DataError: a value is neither a label nor one of ``data.label_values`` (the first such
            row is named, with the allowed values).
    """
    index = label_map(data)
    out = []
    for row, value in enumerate(values):
        key = label_key(value)
        if key not in index:
            raise DataError(origin, f"row {first_row + row + 1}: label {value!r} is not in the configured "
                                    f"label set {data.labels} (allowed file values: {sorted(index)}); fix the "
                                    f"row, data.labels or data.label_values")
        out.append(index[key])
    return out
