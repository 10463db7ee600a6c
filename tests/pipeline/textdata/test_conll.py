"""Tests of pipeline/textdata/conll.py: tagged-sentence tables from token-task files (TOKEN TAG,
CoNLL-2003's TOKEN POS CHUNK TAG; tab or spaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.textdata.conll import CONLL2003_TAGS, read_conll
from core.errors import DataError

TINY = (
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "EU NNP B-ORG\n"
    "rejects VBZ O\n"
    "German JJ B-MISC\n"
    "\n"
    "Peter NNP B-PER\n"
    "Blackburn NNP I-PER\n"
    "\n"
)


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_reads_sentences_tokens_and_tag_ids(tmp_path):
    table = read_conll(write(tmp_path, TINY))
    assert table.column_names == ["id", "tokens", "tags"]
    assert table["id"] == [0, 1]
    assert table["tokens"] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert table["tags"] == [[3, 0, 7], [1, 2]]
    assert table.features["tags"].feature.names == list(CONLL2003_TAGS)
    assert str(table.data.schema.field("tags").type) == "list<item: int64>"


def test_last_sentence_needs_no_final_blank_line_and_four_columns_take_the_last(tmp_path):
    table = read_conll(write(tmp_path, "EU NNP B-NP B-ORG\nsays VBZ B-VP O"))
    assert table["tokens"] == [["EU", "says"]]
    assert table["tags"] == [[3, 0]]


def test_two_tab_separated_columns_with_spaces_in_a_word(tmp_path):
    table = read_conll(write(tmp_path, "@EU_news\tO\nNew York\tB-LOC\n \t \nPeter\tB-PER\n"))
    assert table["tokens"] == [["@EU_news", "New York"], ["Peter"]]  # the tab-only line ends a sentence
    assert table["tags"] == [[0, 5], [1]]


def test_docstart_and_whitespace_only_lines_are_skipped_however_many(tmp_path):
    text = "-DOCSTART-\tO\n\n \nEU NNP B-NP B-ORG\n\t\n\n-DOCSTART- -X- -X- O\n\nsays VBZ B-VP O\n   \n"
    table = read_conll(write(tmp_path, text))
    assert table["tokens"] == [["EU"], ["says"]]
    assert table["tags"] == [[3], [0]]


@pytest.mark.parametrize("tag_column, tags", [(1, [[0, 0]]), (-3, [[0, 0]]), (3, [[3, 0]]), (-1, [[3, 0]])])
def test_the_tag_column_picks_the_field(tmp_path, tag_column, tags):
    table = read_conll(write(tmp_path, "EU O B-NP B-ORG\nsays O B-VP O\n"), tag_column=tag_column)
    assert table["tags"] == tags


@pytest.mark.parametrize("text, tag_column, words", [
    ("EU NNP B-ORG\nrejects\n", -1, ["tiny.txt: line 2: 1 field(s) ['rejects']", "expected a word and its tag",
                                        "fix the line or data.tag_column"]),
    ("EU\tB-ORG\nrejects\tO\n", 2, ["tiny.txt: line 1: 2 field(s)", "the tag in field 2"]),
    ("EU\tB-ORG\n", 0, ["line 1", "the tag in field 0"]),
    ("EU NNP B-ORG\n\n\nPeter NNP B-PERSON\n", -1, ["tiny.txt: line 4: tag 'B-PERSON'", "'I-MISC'",
                                                       "data.tag_column"]),
])
def test_bad_lines_are_named(tmp_path, text, tag_column, words):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as error:
        read_conll(path, tag_column=tag_column)
    assert error.value.path == path
    for word in words:
        assert word in str(error.value)


def test_non_utf8_line_is_named(tmp_path):
    path = write(tmp_path, "EU NNP B-ORG\n\nM\xfcller NNP B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"tiny.txt: line 3 is not UTF-8"):
        read_conll(path)


def test_missing_empty_and_sentence_less_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_conll(tmp_path / "absent.txt")
    with pytest.raises(DataError, match="tiny.txt: the file is empty"):
        read_conll(write(tmp_path, ""))
    with pytest.raises(DataError, match="holds no sentence"):
        read_conll(write(tmp_path, "-DOCSTART- -X- -X- O\n\n"))


def test_custom_label_set(tmp_path):
    table = read_conll(write(tmp_path, "EU NNP ORG\nsays VBZ O\n"), tags=("O", "ORG"))
    assert table["tags"] == [[1, 0]]
    assert table.features["tags"].feature.names == ["O", "ORG"]


@pytest.mark.shared_data("conll2003/dev.txt")
def test_real_conll2003_dev(data_dir):
    table = read_conll(data_dir / "conll2003" / "dev.txt")
    assert len(table) == 3250
    assert table["tokens"][0][:3] == ["CRICKET", "-", "LEICESTERSHIRE"]
    assert {tag for row in table["tags"] for tag in row} == set(range(len(CONLL2003_TAGS)))
