"""Reading token-task files (one word per line) into tagged-sentence tables.

The forms read: one word per line, its fields separated by a tab (then a field may hold
spaces) or by spaces, the first field the word and the tag in the last field (or in field
``tag_column``, 0-based, negative from the end): two columns ``TOKEN TAG`` (the common
``TOKEN<TAB>TAG`` of WNUT and many NER sets), ``TOKEN POS NER`` (the copy in ../shared/data)
or CoNLL-2003's original ``TOKEN POS CHUNK NER``. A blank or whitespace-only line ends a
sentence (several in a row end one); ``-DOCSTART-`` lines, the original release's document
boundaries, are skipped. Tags are IOB2 (CoNLL-2003: PER/LOC/ORG/MISC).

The result is a ``datasets.Dataset`` with columns::

    id      int64           sentence number, from 0, in file order
    tokens  list<string>    the sentence's words
    tags    list<int64>     index of each word's tag in the label set (a ``ClassLabel``, so
                            ``dataset.features["tags"].feature.names`` gives the tag names)

The file is parsed here rather than through a ``datasets`` builder, because the checks must
name the offending line; the table is built in memory (CoNLL-2003's train split, 3.3 MB,
parses in about a second), so there is no cache that could go stale when a file changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets

from core.errors import DataError

CONLL2003_TAGS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
"""The 9 IOB2 tags of CoNLL-2003 NER, in the order of the Hugging Face ``conll2003`` dataset."""

DOCSTART = "-DOCSTART-"
"""First field of the original release's document-boundary lines; such lines are skipped."""


def conll_features(tags: Sequence[str]) -> datasets.Features:
    """The schema of a table read by :func:`read_conll` with label set ``tags``."""
    return datasets.Features({
        "id": datasets.Value("int64"),
        "tokens": datasets.List(datasets.Value("string")),
        "tags": datasets.List(datasets.ClassLabel(names=list(tags))),
    })


def read_conll(path: str | Path, tags: Sequence[str] = CONLL2003_TAGS, tag_column: int = -1) -> datasets.Dataset:
    """Read a token-task file into a table of tagged sentences (forms and columns: see the module docstring).

    Args:
        path: the file, UTF-8, one ``TOKEN [...] TAG`` line per word, blank lines between sentences.
        tags: the label set; a word's tag id is its index here.
        tag_column: the field that holds the tag, 0-based (negative: from the end); the default,
            -1, is the last field of every form above. It may not name the word's field.

    Returns:
        A ``datasets.Dataset`` with one row per sentence, in file order.

    Raises:
        DataError: the file is missing or empty; a line is not UTF-8, has no field ``tag_column``
            (or it is the word's), or has a tag outside ``tags``; the file holds no sentence. The
            message names the file and the line number, and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file; check data.root (or $DISTILL_DATA_DIR) and the split's path")
    if path.stat().st_size == 0:
        raise DataError(path, "the file is empty")
    tag_ids = {tag: i for i, tag in enumerate(tags)}
    sentences: list[tuple[list[str], list[int]]] = []
    tokens: list[str] = []
    tag_row: list[int] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            fields = line_fields(_decode(raw, path, number))
            if not fields or fields[0] == DOCSTART:  # a sentence's end, or a document boundary
                if tokens:
                    sentences.append((tokens, tag_row))
                    tokens, tag_row = [], []
                continue
            tag = fields[_tag_index(fields, tag_column, path, number)]
            if tag not in tag_ids:
                raise DataError(path, f"line {number}: tag {tag!r} is not in the label set {list(tags)}; "
                                      f"fix the tag, or set data.labels (or data.tag_column if the tag is "
                                      f"in another column)")
            tokens.append(fields[0])
            tag_row.append(tag_ids[tag])
    if tokens:
        sentences.append((tokens, tag_row))
    if not sentences:
        raise DataError(path, "holds no sentence (only blank or -DOCSTART- lines)")
    return datasets.Dataset.from_dict(
        {"id": list(range(len(sentences))), "tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]},
        features=conll_features(tags))


def line_fields(line: str) -> list[str]:
    """The fields of one line: split at tabs when it has one (a field may then hold spaces), else
    at runs of spaces; [] for a blank or whitespace-only line."""
    line = line.strip()
    if "\t" in line:
        return [field.strip() for field in line.split("\t")]
    return line.split()


def _tag_index(fields: list[str], tag_column: int, path: Path, number: int) -> int:
    """The non-negative index of the tag among a line's ``fields``; DataError naming the line when
    the line has no field ``tag_column`` or it is the word's."""
    index = tag_column if tag_column >= 0 else len(fields) + tag_column
    if index <= 0 or index >= len(fields):
        raise DataError(path, f"line {number}: {len(fields)} field(s) {fields!r}, expected a word and its tag "
                              f"(TOKEN TAG, or CoNLL-2003's TOKEN POS CHUNK TAG) separated by a tab or spaces, "
                              f"the tag in field {tag_column} (data.tag_column, 0-based); fix the line or "
                              f"data.tag_column")
    return index


def _decode(raw: bytes, path: Path, number: int) -> str:
    """Line ``number`` of ``path`` as text; DataError naming the line if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"line {number} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                              f"re-encode the file as UTF-8") from None
