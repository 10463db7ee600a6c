"""The POS lexicon of augmentation's word replacement (Tang et al. 2019, section 3.2).

A lexicon maps each lower-cased word to its most frequent part-of-speech tag and, per tag, gives
its words' unigram probabilities. It is read from either of two kinds of file:

    *.tsv, *.tsv.gz   a lexicon table, one ``word <TAB> tag <TAB> count`` line per word
    anything else     a CoNLL-format corpus, ``TOKEN POS ...`` per line (counted here)

The package ships :data:`PACKAGED_LEXICON`, the default of ``data.augment.pos_lexicon``, so
augmentation works on anyone's data. It was built once by :func:`write_lexicon_table` from the
train split of CoNLL-2003 (Tjong Kim Sang and De Meulder 2003: Reuters newswire, 1996-97, with
Penn Treebank POS tags), keeping the words seen at least twice::

    python -m pipeline.textdata.lexicon ../shared/data/conll2003/train.txt pipeline/textdata/pos_lexicon.tsv.gz
"""

from __future__ import annotations

import gzip
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DataError
from pipeline.config.data_sections import DataConfig

PACKAGED_LEXICON = Path(__file__).with_name("pos_lexicon.tsv.gz")
"""The shipped lexicon: CoNLL-2003 train (Reuters), words seen >= 2 times: 10,949 words, 52 KB."""

TABLE_SUFFIXES = (".tsv", ".tsv.gz")
"""File name endings of lexicon tables; any other file is read as a CoNLL-format corpus."""


@dataclass(frozen=True)
class PosLexicon:
    """Word -> POS tag, and per tag the words and their unigram probabilities.

    Attributes:
        tag_of: lower-cased word -> its most frequent tag.
        words_of: tag -> (words, probabilities float64 [n], summing to 1).
    """

    tag_of: dict[str, str]
    words_of: dict[str, tuple[list[str], np.ndarray]]


def lexicon_path(data: DataConfig) -> Path:
    """The file of ``data.augment.pos_lexicon``: :data:`PACKAGED_LEXICON` when unset, else the
    setting resolved against ``data.root`` (:meth:`DataConfig.resolve_path`)."""
    setting = data.augment.pos_lexicon if data.augment is not None else None
    return PACKAGED_LEXICON if setting is None else data.resolve_path(setting)


def read_pos_lexicon(path: Path | None = None) -> PosLexicon:
    """Read a lexicon table or count a CoNLL-format corpus (see the module docstring).

    Args:
        path: the file; None for :data:`PACKAGED_LEXICON`.

    Raises:
        DataError: the file is missing, or has no ``TOKEN POS`` (table: ``word tag count``) lines.
    """
    path = PACKAGED_LEXICON if path is None else Path(path)
    if not path.is_file():
        raise DataError(path, "no such POS lexicon; leave data.augment.pos_lexicon unset for the packaged one, "
                              "or name a CoNLL-format file or a word/tag/count .tsv(.gz)")
    if path.name.endswith(TABLE_SUFFIXES):
        tag_of, counts = _read_table(path)
    else:
        tag_of, counts = _most_frequent_tags(count_conll_tags(path))
    if not tag_of:
        raise DataError(path, "has no 'TOKEN POS' lines; give a CoNLL-format file "
                              "(or a .tsv(.gz) of 'word<TAB>tag<TAB>count' lines)")
    by_tag: dict[str, list[str]] = defaultdict(list)
    for word, tag in tag_of.items():
        by_tag[tag].append(word)
    words_of = {}
    for tag, words in by_tag.items():
        frequency = np.asarray([counts[w] for w in words], dtype=np.float64)
        words_of[tag] = (words, frequency / frequency.sum())
    return PosLexicon(tag_of, words_of)


def count_conll_tags(path: Path) -> dict[str, Counter]:
    """Lower-cased word -> how often each POS tag marks it in a CoNLL-format file (``-DOCSTART-`` skipped)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[0] != "-DOCSTART-":
                counts[parts[0].lower()][parts[1]] += 1
    return counts


def write_lexicon_table(conll: Path, out: Path, min_count: int = 2) -> int:
    """Write the lexicon table of a CoNLL-format corpus: its words seen ``min_count`` times or more,
    each with its most frequent tag and its count, most frequent first, gzip-compressed when ``out``
    ends with ``.gz`` (with no time stamp, so a rebuild gives the same bytes).

    Returns:
        The number of words written.
    """
    tag_of, counts = _most_frequent_tags(count_conll_tags(conll))
    words = sorted((w for w in tag_of if counts[w] >= min_count), key=lambda w: (-counts[w], w))
    text = "".join(f"{w}\t{tag_of[w]}\t{counts[w]}\n" for w in words).encode("utf-8")
    out.write_bytes(gzip.compress(text, mtime=0) if out.name.endswith(".gz") else text)
    return len(words)


def _most_frequent_tags(counts: dict[str, Counter]) -> tuple[dict[str, str], dict[str, int]]:
    """``(word -> most frequent tag, word -> count over all tags)``."""
    return ({w: tags.most_common(1)[0][0] for w, tags in counts.items()},
            {w: sum(tags.values()) for w, tags in counts.items()})


def _read_table(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """``(word -> tag, word -> count)`` of a lexicon table; malformed lines name their number."""
    opener = gzip.open if path.name.endswith(".gz") else open
    tag_of, counts = {}, {}
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or not fields[2].isdigit():
                raise DataError(path, f"line {number} is not 'word<TAB>tag<TAB>count'; fix the line")
            tag_of[fields[0]], counts[fields[0]] = fields[1], int(fields[2])
    return tag_of, counts


if __name__ == "__main__":
    print(f"{write_lexicon_table(Path(sys.argv[1]), Path(sys.argv[2]))} words")
