"""``distill predict BUNDLE "text" ... | --file F [--artifact NAME] [--check [--dev FILE]]``: a bundle's
artifacts (:mod:`pipeline.evaluation.bundle`) from raw text.

An *id* artifact (``model.onnx``, ``model.ort``, ``model.pte``) is loaded from the bundle with
:func:`compress.backends.load_predictor` and fed by the featurizer of the run's model
(:func:`pipeline.evaluation.variants.featurizer`, the run folder recorded in ``bundle.json``);
a *text* artifact (``model_text.onnx`` / ``.ort``, :mod:`compress.text_graph`) takes each string
as it is, its tokenizer inside. Both go through :class:`pipeline.api.StudentPredictor`.

``--check`` runs every artifact over the dev split (the run's ``data/dev``, or ``--dev``) and
compares its predicted class with the PyTorch model's (the variant's source folder, as the
benchmark loads it) row by row; for a text graph it also checks that its tokenizer gives the
featurizer's (Hugging Face or SentencePiece) ids on every row (:func:`compress.text_graph.
check_text_graph`). The command exits 1 when an artifact agrees on fewer than
:data:`AGREEMENT_TARGET` of the rows or a tokenizer differs on any row, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.backends import load_predictor
from core.artifacts import read_json
from core.errors import ArtifactError, ConfigError
from pipeline.api import StudentPredictor
from pipeline.artifacts import RunDir
from pipeline.evaluation.bundle import AGREEMENT_TARGET, BUNDLE_FILE
from pipeline.evaluation.scoring import EVAL_BATCH, Split, agreement, predict_with, read_split
from pipeline.evaluation.variants import featurizer, read_meta
from pipeline.stages.benchmark import model_meta, word_logits

@dataclass(frozen=True)
class Bundle:
    """A bundle folder, its ``bundle.json`` and the run it came from."""

    folder: Path
    info: dict[str, Any]
    run_dir: RunDir

    def artifact(self, name: str | None) -> dict[str, Any]:
        """The artifact ``name`` (its path in the bundle), or the first listed when None.

        Raises:
            ConfigError: no artifact of that name (the names listed).
        """
        artifacts = {a["name"]: a for a in self.info["artifacts"]}
        if name is None:
            return self.info["artifacts"][0]
        if name not in artifacts:
            raise ConfigError(f"--artifact {name}: not in {self.folder}; choose from {', '.join(artifacts)}")
        return artifacts[name]


def open_bundle(path: str | Path) -> Bundle:
    """The bundle at ``path``.

    Raises:
        ArtifactError: ``path`` has no ``bundle.json`` (not a bundle), naming it.
    """
    folder = Path(path).resolve()
    if not (folder / BUNDLE_FILE).is_file():
        raise ArtifactError(folder, f"not a bundle (no {BUNDLE_FILE}); give runs/<name>/ship/<model>, written by the "
                                    "benchmark stage")
    info = read_json(folder / BUNDLE_FILE)
    return Bundle(folder, info, RunDir(Path(info["run"])))


class TextGraphPredictor:
    """A text graph (:mod:`compress.text_graph`) as a predictor: ``{"text": N strings}`` -> logits [N, C],
    one string per run (the graph reads one)."""

    def __init__(self, path: Path):
        from compress.ort_format import session

        self.session = session(path, custom_ops=True)

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        from compress.text_graph import TEXT_INPUT

        return np.concatenate([self.session.run(None, {TEXT_INPUT: np.array([text])})[0]
                               for text in features[TEXT_INPUT]])


def text_features(texts: list, pairs: list[str] | None = None) -> dict[str, np.ndarray]:
    """A text graph's "features": the strings themselves (sentence pairs have no text graph)."""
    from compress.text_graph import TEXT_INPUT

    return {TEXT_INPUT: np.array(texts, dtype=object)}


def load_artifact(bundle: Bundle, artifact: dict[str, Any], threads: int = 1) -> StudentPredictor:
    """A :class:`pipeline.api.StudentPredictor` of one artifact of the bundle.

    Raises:
        ArtifactError: the file or the run's source model folder is missing or does not load.
    """
    path = bundle.folder / artifact["name"]
    if artifact["input"] == "text":
        return StudentPredictor(TextGraphPredictor(path), text_features, bundle.info["labels"], EVAL_BATCH, path)
    meta = read_meta(path.parent)
    predictor = load_predictor(artifact["backend"], path, threads)
    batch = bundle.info.get("batch_size") or EVAL_BATCH  # the benchmark's: dynamic int8 ranges depend on the batch
    batch_size = min(batch, meta.settings.get("max_batch") or batch)
    return StudentPredictor(predictor, featurizer(bundle.run_dir, meta, bundle.info["max_length"]),
                            bundle.info["labels"], batch_size, path)


def dev_predictions(student: StudentPredictor, dev: Split) -> list:
    """The predicted class of every dev row ([N] ids, or word lists of ids for taggers)."""
    return predict_with(lambda batch: word_logits(student.predictor.predict(batch), batch), student.featurize, dev,
                        student.batch_size)


def check(bundle: Bundle, dev_file: Path | None = None) -> dict[str, Any]:
    """Every artifact against the PyTorch model on the dev split (see the module docstring).

    Returns:
        ``{"rows", "artifacts": {name: {"agreement", "score"?, "ids_equal"?}}, "passed"}``:
        agreement in [0, 1]; ``ids_equal`` the rows on which a text graph's tokenizer gives the
        featurizer's ids; ``passed`` whether all meet :data:`AGREEMENT_TARGET` and all ids agree.

    Raises:
        ArtifactError: the dev split or the run's model folder is missing.
    """
    from compress.backends import load_model_folder
    from compress.text_graph import check_text_graph
    from core.schema import TaskKind

    dev = read_split(dev_file or bundle.run_dir.split_file("dev"), TaskKind(bundle.info["kind"]))
    first = read_meta((bundle.folder / bundle.artifact(None)["name"]).parent)
    source = bundle.run_dir.root / first.source
    reference = pytorch_model(bundle, model_meta(bundle.run_dir, bundle.info["model"], source))
    expected = dev_predictions(reference, dev)
    results, passed = {}, True
    for artifact in bundle.info["artifacts"]:
        got = dev_predictions(load_artifact(bundle, artifact), dev)
        entry = {"agreement": agreement(got, expected)}
        if artifact["input"] == "text":
            folder = bundle.folder / artifact["name"]
            ids = check_text_graph(load_model_folder(source), source, reference.featurize,
                                   folder.with_name("model.onnx"), folder, list(dev.texts), bundle.info["max_length"])
            entry["ids_equal"] = ids["ids_equal"]
            passed &= ids["ids_equal"] == len(dev.texts)
        passed &= entry["agreement"] >= AGREEMENT_TARGET
        results[artifact["name"]] = entry
    return {"rows": len(dev.texts), "artifacts": results, "passed": bool(passed)}


def pytorch_model(bundle: Bundle, meta) -> StudentPredictor:
    """The run's PyTorch model of ``meta`` (:func:`pipeline.evaluation.variants.load_variant`) with its featurizer."""
    from pipeline.evaluation.variants import load_variant

    return StudentPredictor(load_variant(bundle.run_dir, meta, 1), featurizer(bundle.run_dir, meta,
                                                                               bundle.info["max_length"]),
                            bundle.info["labels"], EVAL_BATCH, bundle.run_dir.root / meta.file)


def read_texts(texts: list[str], file: str | None) -> list[str]:
    """The texts given, then those of ``file`` (one a line, blank lines skipped).

    Raises:
        ConfigError: no text at all, or ``file`` missing.
    """
    if file is not None:
        if not Path(file).is_file():
            raise ConfigError(f"--file {file}: no such file; give a text file, one text a line")
        texts = texts + [line for line in Path(file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError("distill predict needs texts: distill predict BUNDLE \"some text\" ... or --file FILE")
    return texts


def render_predictions(texts: list[str], predictions: list) -> str:
    """One line per text: label, then each label's probability, then the text."""
    lines = []
    for text, p in zip(texts, predictions):
        if hasattr(p, "tags"):
            lines.append(" ".join(f"{w}/{t}" for w, t in zip(p.words, p.tags)))
        else:
            lines.append(f"{p.label}\t" + " ".join(f"{k}={v:.4f}" for k, v in p.probabilities.items()) + f"\t{text}")
    return "\n".join(lines)


def render_check(report: dict[str, Any]) -> str:
    """The ``--check`` table: artifact, agreement with PyTorch, tokenizer ids equal, then a verdict line."""
    lines = [f"{'artifact':<48} {'agreement':>9}  ids equal ({report['rows']} dev rows)"]
    for name, entry in report["artifacts"].items():
        ids = f"{entry['ids_equal']}/{report['rows']}" if "ids_equal" in entry else "-"
        lines.append(f"{name:<48} {entry['agreement']:>9.2%}  {ids}")
    verdict = "passed" if report["passed"] else "FAILED"
    lines.append(f"{verdict}: every artifact >= {AGREEMENT_TARGET:.1%} agreement, every tokenizer id equal")
    return "\n".join(lines)


def run_predict(args) -> int:
    """``distill predict`` (see the module docstring); returns the exit code."""
    bundle = open_bundle(args.bundle)
    if args.check:
        report = check(bundle, Path(args.dev) if args.dev else None)
        print(render_check(report))
        return 0 if report["passed"] else 1
    texts = read_texts(args.texts, args.file)
    rows = [text.split() for text in texts] if bundle.info["task"] == "token" else texts
    print(render_predictions(texts, load_artifact(bundle, bundle.artifact(args.artifact)).predict(rows)))
    return 0
