"""Hub splits: when a split reads the hub, and a token task's hub split as tokens and tag indices."""

import datasets
import pytest

from core.errors import DataError
from pipeline.config.data_sections import SplitConfig
from pipeline.textdata.hub import hub_name, hub_tagged_table, reads_hub

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_a_split_reads_the_hub_only_without_its_local_file(tmp_path):
    both = SplitConfig(path="dev.tsv", hub="stanfordnlp/sst2", hub_split="validation")
    assert reads_hub(tmp_path / "dev.tsv", both)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n")
    assert not reads_hub(tmp_path / "dev.tsv", both)
    assert reads_hub(None, SplitConfig(hub="glue", hub_subset="sst2"))
    assert not reads_hub(tmp_path / "missing.tsv", SplitConfig(path="missing.tsv"))  # the file's own error
    assert hub_name(SplitConfig(hub="glue", hub_subset="sst2")) == "glue/sst2:train"


def test_a_token_tasks_hub_split_maps_class_label_names_onto_data_labels():
    hub_tags = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # the hub's own order
    table = datasets.Dataset.from_dict(
        {"tokens": [["Ann", "lives", "in", "Rome"], ["New", "York"]], "ner_tags": [[3, 0, 0, 1], [1, 2]]},
        features=datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                    "ner_tags": datasets.Sequence(datasets.ClassLabel(names=hub_tags))}))
    out = hub_tagged_table(table, TAGS, SplitConfig(hub="eriktks/conll2003"))
    assert out["tokens"] == [["Ann", "lives", "in", "Rome"], ["New", "York"]]
    assert out["tags"] == [[1, 0, 0, 3], [3, 4]]
    with pytest.raises(DataError, match=r"eriktks/conll2003:train: row 1 has tag 'B-PER', not one of data.labels"):
        hub_tagged_table(table, ["O", "B-LOC", "I-LOC"], SplitConfig(hub="eriktks/conll2003"))
    with pytest.raises(DataError, match="needs columns tokens and ner_tags"):
        hub_tagged_table(table.remove_columns("ner_tags"), TAGS, SplitConfig(hub="eriktks/conll2003"))
