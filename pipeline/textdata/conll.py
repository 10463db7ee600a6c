"""Reading CoNLL-2003-format files (one token per line) into tagged-sentence tables.

The format: one token per line, whitespace-separated fields of which the first is the token
and the last its tag (``TOKEN POS NER`` here, ``TOKEN POS CHUNK NER`` in the original release);
a blank line ends a sentence. ``-DOCSTART-`` lines, the original release's document
boundaries, are skipped. Tags are IOB2 over PER/LOC/ORG/MISC.

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


def read_conll(path: str | Path, tags: Sequence[str] = CONLL2003_TAGS) -> datasets.Dataset:
    """Read a CoNLL-format file into a table of tagged sentences (columns: see the module docstring).

    Args:
        path: the file, UTF-8, one ``TOKEN ... TAG`` line per word, blank lines between sentences.
        tags: the label set; a word's tag id is its index here.

    Returns:
        A ``datasets.Dataset`` with one row per sentence, in file order.

    Raises:
        DataError: the file is missing or empty; a line is not UTF-8, has fewer than 3 fields or
            a tag outside ``tags``; two blank lines in a row make an empty sentence; the file
            holds no sentence. The message names the file and the line number.
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
    sentence_end = None  # number of the blank line that ended the last sentence, until a word line follows
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            fields = _decode(raw, path, number).split()
            if fields and fields[0] == DOCSTART:
                sentence_end = None  # the blank line after a document boundary ends no sentence
                continue
            if not fields:
                if tokens:
                    sentences.append((tokens, tag_row))
                    tokens, tag_row, sentence_end = [], [], number
                elif sentence_end is not None:
                    raise DataError(path, f"line {number}: empty sentence (blank lines {sentence_end} and "
                                          f"{number} in a row); remove one of them")
                continue
            sentence_end = None
            if len(fields) < 3:
                raise DataError(path, f"line {number}: {len(fields)} field(s) {fields!r}, expected at least 3 "
                                      f"(TOKEN POS TAG) separated by spaces")
            tag = fields[-1]
            if tag not in tag_ids:
                raise DataError(path, f"line {number}: tag {tag!r} is not in the label set {list(tags)}; "
                                      f"fix the tag or configure the label set")
            tokens.append(fields[0])
            tag_row.append(tag_ids[tag])
    if tokens:
        sentences.append((tokens, tag_row))
    if not sentences:
        raise DataError(path, "holds no sentence (only blank or -DOCSTART- lines)")
    return datasets.Dataset.from_dict(
        {"id": list(range(len(sentences))), "tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]},
        features=conll_features(tags))


def _decode(raw: bytes, path: Path, number: int) -> str:
    """Line ``number`` of ``path`` as text; DataError naming the line if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"line {number} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                              f"re-encode the file as UTF-8") from None
