"""Transfer-set augmentation (Tang et al. 2019): each operation, determinism, deduplication."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.stages import data
from pipeline.artifacts import RunDir
from pipeline.textdata.augment import augment, augment_sentence
from pipeline.textdata.lexicon import PACKAGED_LEXICON, read_pos_lexicon, write_lexicon_table
from pipeline.config.sections import AugmentConfig
from pipeline.config.loading import validate_config
from core.errors import DataError

CONLL = "the DT O\nfilm NN O\nmovie NN O\nmovie NN O\nis VBZ O\ngreat JJ O\ngood JJ O\n\nA DT O\nplot NN O\n"


@pytest.fixture
def lexicon(tmp_path):
    (tmp_path / "pos.txt").write_text(CONLL)
    return read_pos_lexicon(tmp_path / "pos.txt")


def test_lexicon_keeps_the_most_frequent_tag_and_unigram_probabilities(lexicon):
    assert lexicon.tag_of["a"] == "DT" and lexicon.tag_of["movie"] == "NN"
    words, probabilities = lexicon.words_of["NN"]
    assert dict(zip(words, probabilities)) == pytest.approx({"film": 0.25, "movie": 0.5, "plot": 0.25})


def test_a_lexicon_table_reads_as_the_corpus_it_was_built_from(tmp_path, lexicon):
    assert write_lexicon_table(tmp_path / "pos.txt", tmp_path / "pos.tsv.gz", min_count=1) == 8
    table = read_pos_lexicon(tmp_path / "pos.tsv.gz")
    assert table.tag_of == lexicon.tag_of
    for tag, (words, probabilities) in lexicon.words_of.items():
        assert dict(zip(*table.words_of[tag])) == pytest.approx(dict(zip(words, probabilities)))
    assert write_lexicon_table(tmp_path / "pos.txt", tmp_path / "frequent.tsv", min_count=2) == 1
    assert read_pos_lexicon(tmp_path / "frequent.tsv").tag_of == {"movie": "NN"}


def test_the_packaged_lexicon_is_small_and_tags_common_english_words():
    assert PACKAGED_LEXICON.stat().st_size < 200_000  # bytes, gzip
    lexicon = read_pos_lexicon()
    assert len(lexicon.tag_of) > 5000
    assert {w: lexicon.tag_of[w] for w in ("the", "government", "said", "good")} == \
        {"the": "DT", "government": "NN", "said": "VBD", "good": "JJ"}
    for words, probabilities in lexicon.words_of.values():
        assert len(words) == len(probabilities) and probabilities.sum() == pytest.approx(1.0)


def test_lexicon_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such POS lexicon"):
        read_pos_lexicon(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="has no 'TOKEN POS' lines"):
        read_pos_lexicon(tmp_path / "blank.txt")
    (tmp_path / "bad.tsv").write_text("the\tDT\t3\nfilm NN 2\n")
    with pytest.raises(DataError, match="bad.tsv: line 2 is not 'word<TAB>tag<TAB>count'"):
        read_pos_lexicon(tmp_path / "bad.tsv")


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
    rows = [("the film is great",), ("a good plot",), ("the movie is good",)]
    first = augment([0, 1, 2], rows, cfg, lexicon, seed=0, exclude=set(rows))
    assert first == augment([0, 1, 2], rows, cfg, lexicon, seed=0, exclude=set(rows))
    assert 0 < len(first) <= 18 and len(set(first)) == len(first)
    assert not set(first) & set(rows) and all(len(row) == 1 for row in first)


def test_augment_perturbs_both_sentences_of_a_pair(lexicon, ray_local):
    rows = [("the film is great", "the movie is good"), ("a good plot", "the plot is great")]
    masked = augment([0, 1], rows, AugmentConfig(copies=2, p_mask=1.0, p_ngram=0.0, num_actors=1), lexicon,
                     seed=0, exclude=set())
    assert masked == [("[MASK] [MASK] [MASK]", "[MASK] [MASK] [MASK] [MASK]"),  # the second row's, once
                      ("[MASK] [MASK] [MASK] [MASK]", "[MASK] [MASK] [MASK] [MASK]")]  # the first row's
    cfg = AugmentConfig(copies=6, p_mask=0.0, p_pos=1.0, p_ngram=0.0, num_actors=1)
    swapped = augment([0, 1], rows, cfg, lexicon, seed=0, exclude=set(rows))
    assert swapped and len(set(swapped)) == len(swapped) and not set(swapped) & set(rows)
    tags = {tuple(" ".join(lexicon.tag_of[w] for w in s.split()) for s in row) for row in swapped}
    assert tags == {("DT NN VBZ JJ", "DT NN VBZ JJ"), ("DT JJ NN", "DT NN VBZ JJ")}  # each sentence keeps its tags


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


def test_data_stage_augments_pairs(pair_task, ray_local):
    assert not (pair_task.root / "conll2003").exists()  # the packaged POS lexicon serves any data folder
    augment_cfg = {"copies": 4, "p_mask": 0.5, "p_pos": 0.0, "p_ngram": 0.0, "num_actors": 1}
    cfg = pair_task.config(data={"augment": augment_cfg})
    summary = data.run(cfg, RunDir(cfg.run_dir))
    transfer = pq.read_table(RunDir(cfg.run_dir).split_file("transfer")).to_pydict()
    pairs = list(zip(transfer["text"], transfer["text_pair"]))
    added = summary["augmented"]["rows"]
    assert 0 < added <= 16 and len(pairs) == 6 + added and len(set(pairs)) == len(pairs)
    assert transfer["label"] == [1, 0, 1, 0, -1, -1] + [-1] * added
    for text, text_pair in pairs[6:]:  # both sentences are one labeled pair's, words kept or masked
        assert any(masks_of(text, a) and masks_of(text_pair, b) for a, b, _ in pair_task.train)
    assert any("[MASK]" in text_pair for _, text_pair in pairs[6:])  # second sentences are perturbed too


def masks_of(candidate: str, source: str) -> bool:
    """Whether ``candidate`` is ``source`` with some words replaced by ``[MASK]``."""
    words, original = candidate.split(), source.split()
    return len(words) == len(original) and all(w in ("[MASK]", o) for w, o in zip(words, original))
