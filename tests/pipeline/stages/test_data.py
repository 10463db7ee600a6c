"""The data stage on tiny generated files: tables, the transfer set, and bad input."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline.stages import data
from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config
from core.errors import DataError

HEADER = "sentence\tlabel\n"


def write(path, rows, header=HEADER):
    path.write_text(header + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8")
    return path


def config(tmp_path, **data_overrides):
    section = {"root": str(tmp_path), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"},
               "labels": [0, 1], **data_overrides}
    return validate_config({"name": "t", "output_dir": str(tmp_path / "runs"), "data": section})


@pytest.fixture
def files(tmp_path):
    write(tmp_path / "train.tsv", [("a good film ", 1), ('a "bad" film', 0), ("fine", 1)])
    write(tmp_path / "dev.tsv", [("good", 1), ("bad", 0)])
    write(tmp_path / "extra.tsv", [("fine", 1), ("new text", 0), ("new text", 1), ("more", 0)])
    return tmp_path


def test_tables_have_ids_texts_and_label_indices(files):
    cfg = config(files, unlabeled={"path": "extra.tsv"})
    summary = data.run(cfg, RunDir(cfg.run_dir))
    train = pq.read_table(RunDir(cfg.run_dir).split_file("train")).to_pydict()
    assert train == {"id": [0, 1, 2], "text": ["a good film", 'a "bad" film', "fine"], "label": [1, 0, 1]}
    transfer = pq.read_table(RunDir(cfg.run_dir).split_file("transfer")).to_pydict()
    # labeled rows keep their labels; unlabeled rows lose theirs and duplicates are dropped
    assert transfer["text"] == ["a good film", 'a "bad" film', "fine", "new text", "more"]
    assert transfer["label"] == [1, 0, 1, -1, -1]
    assert transfer["id"] == [0, 1, 2, 3, 4]
    assert summary["transfer"] == {"rows": 5, "unlabeled_rows": 2, "label_counts": {"-1": 2, "0": 1, "1": 2},
                                   "truncated_rows": 0}
    assert summary["train"]["imbalance"] == 2.0 and summary["dev"]["imbalance"] == 1.0
    assert summary["label_map"] == {"0": 0, "1": 1}


def test_skip_and_limit_take_a_slice(files):
    cfg = config(files, train={"path": "train.tsv", "skip": 1, "limit": 1})
    table = data.read_split(cfg.data, cfg.data.train, labeled=True)
    assert table["text"] == ['a "bad" film']


def test_string_labels_map_to_indices(tmp_path):
    write(tmp_path / "t.tsv", [("x", "pos"), ("y", "neg")])
    cfg = config(tmp_path, train={"path": "t.tsv"}, labels=["neg", "pos"])
    assert data.read_split(cfg.data, cfg.data.train, labeled=True)["label"] == [1, 0]


def test_missing_file(files):
    cfg = config(files, dev={"path": "nope.tsv"})
    with pytest.raises(DataError, match=r"nope\.tsv: no such file; check data.root"):
        data.run(cfg, RunDir(cfg.run_dir))


BAD_INPUT = {
    "empty file": ("dev.tsv", b"", r"dev\.tsv: the file is empty"),
    "header only": ("dev.tsv", HEADER.encode(), r"dev\.tsv: the file has no data rows"),
    "label outside the set": ("dev.tsv", HEADER.encode() + b"good\t1\nmeh\t2\n",
                              r"dev\.tsv: row 2: label 2 is not in the configured label set \[0, 1\]"),
    "non-UTF-8 line": ("train.tsv", HEADER.encode() + b"ok\t1\ncaf\xe9\t0\n", r"train\.tsv: line 3 is not UTF-8"),
    "missing column": ("dev.tsv", b"text\tlabel\ngood\t1\n", r"dev\.tsv: has no column 'sentence'"),
    "empty sentence": ("dev.tsv", HEADER.encode() + b"good\t1\n  \t0\n", r"dev\.tsv: row 2 has an empty 'sentence'"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_names_the_file_and_what_is_wrong(files, case):
    name, content, message = BAD_INPUT[case]
    (files / name).write_bytes(content)
    cfg = config(files)
    with pytest.raises(DataError, match=message):
        data.run(cfg, RunDir(cfg.run_dir))


def test_jsonl_and_parquet_read_the_same(files):
    (files / "dev.jsonl").write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n')
    cfg = config(files, dev={"path": "dev.jsonl"})
    table = data.read_split(cfg.data, cfg.data.dev, labeled=True)
    table.to_parquet(str(files / "dev.parquet"))
    cfg = config(files, dev={"path": "dev.parquet"}, text_column="text")
    assert data.read_split(cfg.data, cfg.data.dev, labeled=True)["label"] == table["label"] == [1, 0]


def test_cli_prints_one_line_and_exits_2(files, tmp_path):
    (files / "dev.tsv").write_bytes(b"")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ntracking: {{mode: disabled}}\n"
                           f"data: {{root: {files}, train: {{path: train.tsv}}, dev: {{path: dev.tsv}}, labels: [0, 1]}}\n")
    result = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "run", str(config_file)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"distill: error: {files / 'dev.tsv'}: the file is empty" in result.stderr


def test_pair_tables_carry_text_pair_and_dedup_by_the_pair(pair_task):
    cfg = pair_task.config()
    summary = data.run(cfg, RunDir(cfg.run_dir))
    train = pq.read_table(RunDir(cfg.run_dir).split_file("train"))
    assert train.column_names == ["id", "text", "text_pair", "label"]
    assert train.to_pydict() == {"id": [0, 1, 2, 3], "text": [a for a, _, _ in pair_task.train],
                                 "text_pair": [b for _, b, _ in pair_task.train], "label": [1, 0, 1, 0]}
    dev = pq.read_table(RunDir(cfg.run_dir).split_file("dev")).to_pydict()
    assert list(zip(dev["text"], dev["text_pair"], dev["label"])) == pair_task.dev
    transfer = pq.read_table(RunDir(cfg.run_dir).split_file("transfer"))
    assert transfer.column_names == ["id", "text", "text_pair", "label"]
    transfer = transfer.to_pydict()
    # a pair already present is dropped; a known first sentence with a new second one is kept
    assert list(zip(transfer["text"], transfer["text_pair"], transfer["label"])) == [
        *pair_task.train, ("A man is playing a guitar.", "A woman sings.", -1),
        ("Rain falls on the city.", "It is wet outside.", -1)]
    assert summary["transfer"]["rows"] == 6


def test_single_sentence_tables_have_no_text_pair(files):
    cfg = config(files)
    data.run(cfg, RunDir(cfg.run_dir))
    assert pq.read_table(RunDir(cfg.run_dir).split_file("transfer")).column_names == ["id", "text", "label"]


BAD_PAIRS = {
    "missing pair column": ("sentence1\tlabel\nA man sings.\t1\n", r"dev\.tsv: has no column 'sentence2'"),
    "empty second sentence": ("sentence1\tsentence2\tlabel\nA man sings.\tHe sings.\t1\nA man sings.\t\t0\n",
                              r"dev\.tsv: row 2 has an empty 'sentence2'; remove the row"),
    "blank second sentence": ("sentence1\tsentence2\tlabel\nA man sings.\t   \t0\n",
                              r"dev\.tsv: row 1 has an empty 'sentence2'; remove the row"),
}


@pytest.mark.parametrize("case", BAD_PAIRS)
def test_bad_pair_input_names_the_file_and_row(pair_task, case):
    content, message = BAD_PAIRS[case]
    (pair_task.root / "dev.tsv").write_text(content, encoding="utf-8")
    cfg = pair_task.config()
    with pytest.raises(DataError, match=message):
        data.run(cfg, RunDir(cfg.run_dir))


def test_a_small_token_set_without_augmentation_is_told_to_grow_it(tmp_path, caplog, files):
    for name in ("train", "dev"):
        (tmp_path / f"{name}.txt").write_text("Alice NNP B-NP B-PER\nsleeps VBZ B-VP O\n\nBob NNP B-NP B-PER\n",
                                              encoding="utf-8")
    tagged = validate_config({"name": "t", "output_dir": str(tmp_path / "runs"),
                              "train": {"student": {"family": "cnn_lstm"}},
                              "data": {"task": "token", "root": str(tmp_path), "train": {"path": "train.txt"},
                                       "dev": {"path": "dev.txt"}, "labels": ["O", "B-PER", "I-PER"]}})
    with caplog.at_level("WARNING", logger="pipeline.stages.data"):
        data.run(tagged, RunDir(tagged.run_dir))
    assert ("the transfer set has only 2 sentences (labeled and unlabeled); a tagger learns little from under 5000; "
            "set data.augment={copies: 5}") in caplog.text
    caplog.clear()
    sentences = config(files)  # a sentence task of 3 rows: no such advice
    with caplog.at_level("WARNING", logger="pipeline.stages.data"):
        data.run(sentences, RunDir(sentences.run_dir))
    assert "data.augment" not in caplog.text
