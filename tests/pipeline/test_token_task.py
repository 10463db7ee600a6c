"""A token-classification (NER) task through every stage, on a tiny generated CoNLL corpus.

The rule to learn: capitalised first names are ``B-PER`` (a following surname ``I-PER``), city
names ``B-LOC``, company names ``B-ORG``, lower-case words ``O``. The teacher is a tiny random
BERT token classifier with the real MiniLM tokenizer, fine-tuned briefly; the students are
small CNN-LSTM taggers.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForTokenClassification

from core.schema import TaskKind
from pipeline.stages import data
from pipeline.training.collate import Collate
from core.artifacts import read_json
from pipeline.artifacts import RunDir
from pipeline.config.loading import validate_config
from core.errors import ConfigError, DataError
from pipeline.runner import run_pipeline
from students.base import BuildInputs
from students.cnn_lstm import build_cnn_lstm_tagger
from students.registry import load_student
from core.hf_checkpoint import load_tokenizer
from teachers.token_alignment import WordTagger, encode_words, word_features, words_logits

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
FIRST, SURNAMES = ["Alice", "Bob", "Carol", "Dmitri"], ["Smith", "Jones"]
CITIES, COMPANIES = ["Paris", "Berlin", "Tokyo", "Lagos"], ["Acme", "Globex", "Initech"]
FILLER = "the said on visited met in a and with from today yesterday report".split()


def tagged_sentences(count: int, seed: int) -> list[list[tuple[str, str]]]:
    """``count`` sentences of (word, tag) pairs following the module's rule."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = [(w, "O") for w in rng.choices(FILLER, k=rng.randint(2, 6))]
        for _ in range(rng.randint(1, 2)):
            kind = rng.choice(["PER", "LOC", "ORG"])
            if kind == "PER":
                entity = [(rng.choice(FIRST), "B-PER")] + ([(rng.choice(SURNAMES), "I-PER")] if rng.random() < .5 else [])
            else:
                entity = [(rng.choice(CITIES if kind == "LOC" else COMPANIES), f"B-{kind}")]
            at = rng.randrange(len(words) + 1)
            words[at:at] = entity
        sentences.append(words)
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n".join("".join(f"{w} NN {t}\n" for w, t in s) for s in sentences), encoding="utf-8")
    return path


def saved_student_figures(folder: Path) -> dict[str, float]:
    """The evaluate stage's ``parameters`` and ``size_mb`` (MB of 2^20 bytes, 2 decimals) of the
    student saved in ``folder``, recomputed from its files."""
    return {"parameters": sum(p.numel() for p in load_student(folder).parameters()),
            "size_mb": round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20, 2)}


def token_config(root: Path, teacher: Path, **sections):
    """A token-task run over the CoNLL files in ``root``; ``sections`` update the top level."""
    return validate_config({
        "name": "ner", "output_dir": str(root / "runs"), "seed": 0, "tracking": {"mode": "disabled"},
        "data": {"task": "token", "root": str(root), "train": {"path": "train.txt"}, "dev": {"path": "dev.txt"},
                 "test": {"path": "test.txt"}, "unlabeled": {"path": "unlabeled.txt"}, "labels": TAGS},
        "teacher": {"model": str(teacher), "max_length": 12},
        "finetune": {"force": True, "epochs": 4, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0},
        "label": {"shard_rows": 64, "num_actors": 1},
        "train": {"epochs": 3, "batch_size": 8, "lr": 2e-2, "warmup_ratio": 0.0,  # mean LR 1e-2 over the decay
                  "student": {"family": "cnn_lstm", "word_embed_dim": 16, "char_embed_dim": 8, "char_filters": 8,
                              "hidden_dim": 16, "dropout": 0.1}},
        "evaluate": {"latency_runs": 5, "latency_warmup": 1},
        **sections})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conll")
    for name, count, seed in (("train", 120, 1), ("dev", 40, 2), ("test", 40, 3), ("unlabeled", 80, 4)):
        write_conll(root / f"{name}.txt", tagged_sentences(count, seed))
    return root


@pytest.fixture(scope="module")
def token_teacher(tiny_token_teacher_dir) -> Path:
    return tiny_token_teacher_dir


@pytest.fixture(scope="module")
def ner_run(corpus, token_teacher, ray_local):
    cfg = token_config(corpus, token_teacher)
    return cfg, run_pipeline(cfg)


def test_data_stage_writes_tagged_word_tables(ner_run):
    cfg, manifests = ner_run
    run = RunDir(cfg.run_dir)
    assert {k: manifests["data"][k]["rows"] for k in ("train", "dev", "test", "transfer")} == {
        "train": 120, "dev": 40, "test": 40, "transfer": 200}
    transfer = pq.read_table(run.split_file("transfer"))
    assert transfer.column_names == ["id", "tokens", "tags"]
    assert str(transfer.schema.field("tags").type) == "list<element: int64>"
    first = tagged_sentences(120, 1)[0]
    assert transfer.slice(0, 1).to_pylist()[0]["tokens"] == [w for w, _ in first]
    assert transfer.slice(0, 1).to_pylist()[0]["tags"] == [TAGS.index(t) for _, t in first]
    assert transfer.column("tags").to_pylist()[120:] == [[]] * 80  # unlabeled rows carry no hard tags
    assert manifests["data"]["transfer"]["unlabeled_rows"] == 80


def test_teacher_is_finetuned_as_a_token_classifier(ner_run):
    cfg, manifests = ner_run
    assert manifests["finetune"]["finetuned"] is True
    scores = manifests["finetune"]["dev_scores"]  # dev entity F1 after each of the 4 epochs; the best is kept
    assert len(scores) == 4 and manifests["finetune"]["best_epoch"] == scores.index(max(scores)) + 1
    history = manifests["finetune"]["loss_history"]
    assert history[-1] < 0.5 * history[0]
    model = AutoModelForTokenClassification.from_pretrained(RunDir(cfg.run_dir).teacher_dir)
    assert model.config.id2label == dict(enumerate(TAGS))


def test_label_stage_stores_first_subtoken_logits_per_word(ner_run):
    cfg, _ = ner_run
    run = RunDir(cfg.run_dir)
    index = read_json(run.shard_index)
    assert [e["rows"] for e in index["shards"]] == [64, 64, 64, 8] and index["num_labels"] == len(TAGS)
    shard = pq.read_table(run.stage_dir("label") / index["shards"][0]["file"]).slice(0, 8).to_pylist()
    model = AutoModelForTokenClassification.from_pretrained(run.teacher_dir).eval()
    tokenizer = load_tokenizer(run.teacher_dir)
    for row in shard:
        encoded = encode_words(tokenizer, [row["tokens"]], max_length=12)
        with torch.no_grad():
            direct = model(**encoded).logits[0]  # [T, C]
        first = [encoded.word_ids(0).index(w) if w in encoded.word_ids(0) else None for w in range(len(row["tokens"]))]
        assert row["num_words"] == len(row["tokens"])
        assert row["word_mask"] == [p is not None for p in first]
        stored = np.asarray(row["logits"], dtype=np.float32).reshape(row["num_words"], len(TAGS))
        for word, position in enumerate(first):
            expected = direct[position].numpy() if position is not None else np.zeros(len(TAGS))
            np.testing.assert_allclose(stored[word], expected, atol=1e-5)
    masks = [m for e in index["shards"] for m in pq.read_table(run.stage_dir("label") / e["file"])
             .column("word_mask").to_pylist()]
    assert not all(all(m) for m in masks), "max_length 12 should cut the words of some long sentence"


def test_taggers_learn_the_rule(ner_run):
    _, manifests = ner_run
    for kind in ("kd", "ce_only"):
        result = manifests["train"][kind]
        assert result["dev_metric"] == "entity_f1"
        assert result["best_dev_score"] == max(h["dev_score"] for h in result["history"])
        assert result["best_dev_score"] > 0.9, kind
    kd_history = manifests["train"]["kd"]["history"]
    assert kd_history[-1]["loss_kd"] < kd_history[0]["loss_kd"]
    assert manifests["train"]["kd"]["rows"] == 200 and manifests["train"]["ce_only"]["rows"] == 120


def test_evaluate_reports_entity_scores_on_dev_and_test(ner_run):
    cfg, manifests = ner_run
    evaluation = manifests["evaluate"]
    assert evaluation["score_keys"] == [f"{s}_entity_{m}" for s in ("dev", "test") for m in ("f1", "precision", "recall")]
    assert (evaluation["dev_rows"], evaluation["test_rows"]) == (40, 40)
    models = evaluation["models"]
    assert set(models) == {"teacher", "kd", "ce_only"}
    for kind in ("kd", "ce_only"):
        assert models[kind]["dev_entity_f1"] == pytest.approx(manifests["train"][kind]["best_dev_score"], abs=1e-4)
        assert models[kind]["test_entity_f1"] > 0.9
        figures = saved_student_figures(RunDir(cfg.run_dir).student_dir(kind))
        assert {key: models[kind][key] for key in figures} == figures, kind
    assert 0 <= models["teacher"]["test_entity_f1"] <= 1
    assert models["teacher"]["dev_entity_f1"] == pytest.approx(max(manifests["finetune"]["dev_scores"]), abs=1e-4)
    report = RunDir(cfg.run_dir).report_file.read_text()
    assert "| model | dev entity F1 | dev entity precision | dev entity recall | test entity F1 |" in report
    assert f"| student, KD | {models['kd']['dev_entity_f1']:.4f} |" in report
    assert "Dev rows: 40; test rows: 40." in report


def test_word_tagger_gathers_first_subtoken_logits(token_teacher):
    model = AutoModelForTokenClassification.from_pretrained(token_teacher).eval()
    tokenizer = load_tokenizer(token_teacher)
    sentences = [["Globex", "visited", "Tokyo"], ["Alice"]]
    features = word_features(tokenizer, sentences, max_length=16)
    assert features["first_subtoken"][1].tolist()[1:] == [-1, -1]  # padding words
    with torch.no_grad():
        words = WordTagger(model)(**features).logits  # [2, 3, C]
        token_logits = model(**{k: v for k, v in features.items() if k != "first_subtoken"}).logits
    encoded = encode_words(tokenizer, sentences, max_length=16)
    for row, sentence in enumerate(sentences):
        expected = words_logits(token_logits[row], encoded.word_ids(row), len(sentence)).logits
        torch.testing.assert_close(words[row, :len(sentence)], expected)
    assert words[1, 1:].abs().sum() == 0


def test_collate_pads_tags_teacher_logits_and_the_distillation_mask():
    torch.manual_seed(0)
    student = build_cnn_lstm_tagger(validate_config({
        "name": "t", "data": {"task": "token", "train": {"path": "a"}, "dev": {"path": "b"}, "labels": TAGS},
        "train": {"student": {"family": "cnn_lstm", "init_from_teacher_embeddings": False}}}).train.student,
        BuildInputs(Path("unused"), [["Alice", "met", "Bob"]], len(TAGS)))
    c = len(TAGS)
    batch = {"tokens": np.array([np.array(["Alice", "met", "Bob"]), np.array(["Paris"])], dtype=object),
             "tags": np.array([np.array([1, 0, 1]), np.array([], dtype=np.int64)], dtype=object),
             "logits": np.array([np.arange(3 * c, dtype=np.float32), np.ones(c, dtype=np.float32)], dtype=object),
             "num_words": np.array([3, 1], dtype=np.int32),
             "word_mask": np.array([np.array([True, True, False]), np.array([True])], dtype=object)}
    out = Collate(student, ([], []), TaskKind.TOKEN)(batch)
    assert out.labels.tolist() == [[1, 0, 1], [-1, -1, -1]]
    assert out.mask.tolist() == [[True, True, False], [True, False, False]]
    assert out.teacher["logits"].shape == (2, 3, c)
    assert out.teacher["logits"][0, 2].tolist() == list(range(2 * c, 3 * c))
    assert out.teacher["logits"][1, 0].tolist() == [1.0] * c and out.teacher["logits"][1, 1:].abs().sum() == 0
    assert out.features["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_augmentation_adds_whole_word_sentences_without_tags(corpus, token_teacher, tmp_path, ray_local):
    augment_cfg = {"copies": 3, "p_mask": 0.5, "p_pos": 0.0, "p_ngram": 0.0, "pos_lexicon": "train.txt",
                   "num_actors": 1}
    base = token_config(corpus, token_teacher).data.model_dump(mode="json")
    cfg = token_config(corpus, token_teacher, output_dir=str(tmp_path / "runs"), data={**base, "augment": augment_cfg})
    summary = data.run(cfg, RunDir(cfg.run_dir))
    transfer = pq.read_table(RunDir(cfg.run_dir).split_file("transfer")).to_pydict()
    added = summary["augmented"]["rows"]
    assert 0 < added <= 3 * 120 and len(transfer["tokens"]) == 200 + added
    assert transfer["tags"][200:] == [[]] * added  # the teacher's soft labels are their only target
    sources = {tuple(w for w, _ in s) for s in tagged_sentences(120, 1)}
    for words in transfer["tokens"][200:]:  # a source's words, each kept whole or masked
        assert "[MASK]" in words and any(len(words) == len(source) and all(w in ("[MASK]", o) for w, o in
                                                                           zip(words, source)) for source in sources)
    assert len({tuple(words) for words in transfer["tokens"]}) == len(transfer["tokens"])


def test_tag_outside_the_label_set_names_the_line(corpus, token_teacher, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("dev", "test", "unlabeled"):
        (bad / f"{name}.txt").write_text((corpus / f"{name}.txt").read_text())
    (bad / "train.txt").write_text("Alice NN B-PER\nsaid NN O\n\nParis NN B-CITY\n")
    cfg = token_config(bad, token_teacher)
    with pytest.raises(DataError, match=r"train\.txt: line 4: tag 'B-CITY' is not in the label set"):
        data.run(cfg, RunDir(cfg.run_dir))


def test_token_task_with_a_sentence_student_fails_at_config_time(corpus, token_teacher):
    with pytest.raises(ConfigError, match=r"train\.student\.family: bilstm classifies sentences"):
        token_config(corpus, token_teacher, train={"student": {"family": "bilstm"}})
