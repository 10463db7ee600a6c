"""A user's own data without edits: headerless TSV/CSV, joined text columns, quoted CSV fields,
JSONL and Parquet, label names or numbers, and the counts of truncated rows and class imbalance."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.errors import ConfigError, DataError
from pipeline.stages import data
from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config

AG_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
AG_ROWS = [(3, "Wall St. Bears Claw Back", "Short-sellers, Wall Street's dwindling band, are seeing green again."),
           (4, "New Mars rover", "NASA lands a rover, a big one."),
           (2, "Cup final", 'Fans cheer as the "Reds" win.'),
           (1, "Summit ends", "Leaders agree on trade.")]


def config(root, **data_overrides):
    section = {"root": str(root), "train": {"path": "train.csv"}, "dev": {"path": "train.csv"},
               "labels": AG_LABELS, **data_overrides}
    return validate_config({"name": "t", "output_dir": str(root / "runs"), "data": section})


def write_ag_csv(path, rows=AG_ROWS):
    """AG News's own layout: no header, "label","title","description", every field quoted."""
    path.write_text("".join('"{}","{}","{}"\n'.format(y, t, d.replace('"', '""')) for y, t, d in rows),
                    encoding="utf-8")
    return path


def read(cfg, split="train"):
    return data.read_split(cfg.data, getattr(cfg.data, split), labeled=True)


def test_headerless_csv_with_joined_columns_and_numbered_labels(tmp_path):
    write_ag_csv(tmp_path / "train.csv")
    cfg = config(tmp_path, columns=["label", "title", "description"], text_columns=["title", "description"],
                 label_values=[1, 2, 3, 4])
    table = read(cfg)
    # the first line is data; quoted commas and doubled quotes survive; 1..4 -> World..Sci/Tech
    assert table["text"][0] == "Wall St. Bears Claw Back Short-sellers, Wall Street's dwindling band, are seeing green again."
    assert table["text"][2] == 'Cup final Fans cheer as the "Reds" win.'
    assert table["label"] == [2, 3, 1, 0]


def test_text_separator_joins_the_columns(tmp_path):
    write_ag_csv(tmp_path / "train.csv")
    cfg = config(tmp_path, columns=["label", "title", "description"], text_columns=["title", "description"],
                 text_separator=" | ", label_values=[1, 2, 3, 4])
    assert read(cfg)["text"][1] == "New Mars rover | NASA lands a rover, a big one."


def test_label_names_and_numbers_map_to_the_same_classes(tmp_path):
    # the same file may hold the names or the numbers, in any order
    (tmp_path / "train.tsv").write_text("text\ty\nA\tSci/Tech\nB\t1\nC\tSports\nD\t3\n", encoding="utf-8")
    cfg = config(tmp_path, train={"path": "train.tsv"}, text_column="text", label_column="y",
                 label_values=[1, 2, 3, 4])
    assert read(cfg)["label"] == [3, 0, 1, 2]
    assert data.label_map(cfg.data) == {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3,
                                        "1": 0, "2": 1, "3": 2, "4": 3}


def test_a_value_outside_the_label_set_names_row_value_and_allowed_values(tmp_path):
    write_ag_csv(tmp_path / "train.csv", [*AG_ROWS[:2], (5, "Odd", "row")])
    cfg = config(tmp_path, columns=["label", "title", "description"], text_columns=["title", "description"],
                 label_values=[1, 2, 3, 4])
    with pytest.raises(DataError, match=r"train\.csv: row 3: label 5 is not in the configured label set "
                                        r"\['World', 'Sports', 'Business', 'Sci/Tech'\] \(allowed file values: "
                                        r"\['1', '2', '3', '4', 'Business', 'Sci/Tech', 'Sports', 'World'\]\)"):
        read(cfg)


@pytest.mark.parametrize("bad", [
    {"text_columns": ["title", "description"], "text_column": "title"},  # one of the two
    {"label_values": [1, 2]},  # one per label
    {"label_values": [2, 1, 3, "World"]},  # "World" names another label
])
def test_conflicting_data_options_are_config_errors(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"^config: data: Value error"):
        config(tmp_path, **bad)


def test_headerless_tsv_keeps_its_first_line(tmp_path):
    (tmp_path / "train.tsv").write_text('1\ta "quoted" film\n0\tbad\n', encoding="utf-8")
    cfg = config(tmp_path, train={"path": "train.tsv"}, columns=["y", "s"], text_column="s", label_column="y",
                 labels=[0, 1])
    assert read(cfg)["text"] == ['a "quoted" film', "bad"] and read(cfg)["label"] == [1, 0]


def test_jsonl_and_parquet_read_like_the_csv(tmp_path):
    write_ag_csv(tmp_path / "train.csv")
    records = [{"label": y, "title": t, "description": d} for y, t, d in AG_ROWS]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    pd.DataFrame(records).to_parquet(tmp_path / "train.parquet")
    options = {"text_columns": ["title", "description"], "label_values": [1, 2, 3, 4]}
    expected = read(config(tmp_path, columns=["label", "title", "description"], **options))
    for name in ("train.jsonl", "train.parquet"):
        table = read(config(tmp_path, train={"path": name}, **options))
        assert table.to_dict() == expected.to_dict(), name


def test_stage_counts_truncated_rows_and_imbalance(tmp_path):
    long = " ".join(["word"] * 40)
    rows = [(1, "Short", "one"), (1, "Long", long), (2, "Short", "two"), (1, "Also long", long)]
    write_ag_csv(tmp_path / "train.csv", rows)
    cfg = validate_config({"name": "t", "output_dir": str(tmp_path / "runs"), "teacher": {"max_length": 16},
                           "data": {"root": str(tmp_path), "train": {"path": "train.csv"},
                                    "dev": {"path": "train.csv"}, "columns": ["label", "title", "description"],
                                    "text_columns": ["title", "description"], "labels": ["World", "Sports"],
                                    "label_values": [1, 2]}})
    summary = data.run(cfg, RunDir(cfg.run_dir))
    assert summary["train"]["truncated_rows"] == 2 and summary["transfer"]["truncated_rows"] == 2
    assert summary["train"]["label_counts"] == {"0": 3, "1": 1} and summary["train"]["imbalance"] == 3.0
    assert summary["label_map"] == {"World": 0, "Sports": 1, "1": 0, "2": 1}
    stored = pq.read_table(RunDir(cfg.run_dir).split_file("train")).to_pydict()
    assert stored["text"][1] == f"Long {long}" and stored["label"] == [0, 0, 1, 0]
