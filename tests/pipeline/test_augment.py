"""Transfer-set augmentation (Tang et al. 2019): each operation, determinism, deduplication."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import data
from pipeline.artifacts import RunDir
from pipeline.augment import augment, augment_sentence, read_pos_lexicon
from pipeline.config import AugmentConfig, validate_config
from pipeline.errors import DataError

CONLL = "the DT O\nfilm NN O\nmovie NN O\nmovie NN O\nis VBZ O\ngreat JJ O\ngood JJ O\n\nA DT O\nplot NN O\n"


@pytest.fixture
def lexicon(tmp_path):
    (tmp_path / "pos.txt").write_text(CONLL)
    return read_pos_lexicon(tmp_path / "pos.txt")


def test_lexicon_keeps_the_most_frequent_tag_and_unigram_probabilities(lexicon):
    assert lexicon.tag_of["a"] == "DT" and lexicon.tag_of["movie"] == "NN"
    words, probabilities = lexicon.words_of["NN"]
    assert dict(zip(words, probabilities)) == pytest.approx({"film": 0.25, "movie": 0.5, "plot": 0.25})


def test_lexicon_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such POS lexicon"):
        read_pos_lexicon(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="has no 'TOKEN POS' lines"):
        read_pos_lexicon(tmp_path / "blank.txt")


def test_masking_replaces_every_word_at_p_1(lexicon):
    cfg = AugmentConfig(p_mask=1.0, p_pos=0.0, p_ngram=0.0)
    assert augment_sentence("the film is great", np.random.default_rng(0), cfg, lexicon) == "[MASK] " * 3 + "[MASK]"


def test_pos_replacement_keeps_each_words_tag(lexicon):
    cfg = AugmentConfig(p_mask=0.0, p_pos=1.0, p_ngram=0.0)
    for seed in range(20):
        out = augment_sentence("the film is great unknownword", np.random.default_rng(seed), cfg, lexicon).split()
        assert [lexicon.tag_of.get(w) for w in out[:4]] == ["DT", "NN", "VBZ", "JJ"]
        assert out[4] == "unknownword"  # not in the lexicon: kept


def test_ngram_sampling_returns_a_contiguous_piece(lexicon):
    cfg = AugmentConfig(p_mask=0.0, p_pos=0.0, p_ngram=1.0, max_ngram=3)
    text = "one two three four five six"
    for seed in range(20):
        out = augment_sentence(text, np.random.default_rng(seed), cfg, lexicon)
        assert 1 <= len(out.split()) <= 3 and f" {out} " in f" {text} "


def test_augment_is_deterministic_deduplicated_and_excludes_known_rows(lexicon, ray_local):
    cfg = AugmentConfig(copies=6, num_actors=1)
    texts = ["the film is great", "a good plot", "the movie is good"]
    first = augment([0, 1, 2], texts, cfg, lexicon, seed=0, exclude=set(texts))
    assert first == augment([0, 1, 2], texts, cfg, lexicon, seed=0, exclude=set(texts))
    assert 0 < len(first) <= 18 and len(set(first)) == len(first)
    assert not set(first) & set(texts)


def test_data_stage_adds_augmented_rows_without_hard_labels(tmp_path, lexicon, ray_local):
    (tmp_path / "pos.txt").write_text(CONLL)
    rows = ["the film is great", "the plot is good", "a movie is great", "the film is good"]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(rows)))
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    cfg = validate_config({"name": "a", "output_dir": str(tmp_path / "runs"), "data": {
        "root": str(tmp_path), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}, "labels": [0, 1],
        "augment": {"copies": 5, "pos_lexicon": "pos.txt", "num_actors": 1}}})
    summary = data.run(cfg, RunDir(cfg.run_dir))
    transfer = pq.read_table(RunDir(cfg.run_dir).split_file("transfer")).to_pydict()
    added = summary["augmented"]["rows"]
    assert 0 < added <= 20 and summary["augmented"]["growth"] == round(added / 4, 2)
    assert transfer["label"] == [0, 1, 0, 1] + [-1] * added
    assert len(set(transfer["text"])) == len(transfer["text"]) == 4 + added
