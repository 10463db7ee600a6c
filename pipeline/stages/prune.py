"""Stage ``prune``: structured pruning of the run's BERT models, then KD recovery.

For each model of ``prune.models`` (the teacher, and the distilled student when it is a
transformer):

    1. dev accuracy, and one-shot sensitivity curves on a few dev rows (optional)
    2. importance of heads and FFN neurons on the first ``score_rows`` transfer rows against the
       teacher's soft labels (Michel et al. 2019), pruned iteratively (TextPruner, Yang et al.
       2022; :func:`compress.pruning.prune_iteratively`), then the vocabulary cut to the ids the
       transfer set uses (:func:`compress.vocabulary.prune_vocabulary`)
    3. KD recovery on the stored soft labels (:func:`compress.pruning.recover`, Hinton et al. 2015),
       batches streamed from the label shards
    4. saved as ``prune/<model>-pruned/`` (a Hugging Face folder that
       :func:`compress.slicing.load_pruned` loads, checked to reproduce the logits) with its
       ``meta.json`` (:mod:`pipeline.evaluation.variants`)

With ``prune.layer_drop`` the teacher's top layers are also dropped and the rest fine-tuned again on
the labeled rows with CE only, as the teacher was (Sajjad et al. 2020): ``prune/teacher-layerdrop/``.
Both train by the train stage's recipe (:mod:`core.optimisation`).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedTokenizerBase

from compress.importance import head_importance, model_logits
from compress.pruning import (plot_head_importance, plot_sensitivity, prune_iteratively, recover,
                              sensitivity)
from compress.slicing import count_parameters, drop_layers, kept_heads, layers_to_drop, load_pruned, pruning_state
from compress.vocabulary import prune_vocabulary, unkept_token_share, used_token_ids
from core.artifacts import atomic_dir
from core.errors import ArtifactError
from core.hf_checkpoint import load_tokenizer
from core.optimisation import Recipe
from core.precision import select_precision
from core.schema import LABEL, LOGITS, TEXT, TEXT_PAIR, TaskKind
from pipeline.artifacts import RunDir
from pipeline.config.compress_sections import PruneConfig
from pipeline.config.rules import layer_drop_problems, prune_architecture_problems, prune_problems, raise_problems
from pipeline.config.sections import RunConfig, task_kind
from pipeline.evaluation.scoring import Split, predict, read_split, score, teacher_model
from pipeline.training.shards import require_file, soft_label_files
from pipeline.evaluation.variants import VariantMeta, write_meta
from students.registry import load_student
from students.terms import LossConfig
from teachers.finetune import FinetuneConfig, resolve_recipe

log = logging.getLogger(__name__)

SENSITIVITY_DEV_ROWS = 256
"""Dev rows that score each point of the sensitivity curves (one-shot pruning, no recovery)."""

VOCABULARY_COST_WARNING = 0.005
"""Dev accuracy the vocabulary cut may cost (0.5 points) before the stage warns on the console."""

RELOAD_ATOL = 1e-5
"""Largest |logit difference| allowed between a pruned model and its reload from disk."""

Featurize = Callable[[list[str], list[str] | None], dict[str, torch.Tensor]]


@dataclass
class Prunable:
    """One model to prune.

    Attributes:
        name: ``teacher`` or ``kd``.
        model: its Hugging Face BERT classifier, eval mode (pruned in place).
        tokenizer: the teacher's tokenizer (the transformer student's too).
        featurize: texts (and pairs) -> input_ids / attention_mask / token_type_ids int64 [B, T].
        max_length: tokens the featurizer keeps.
        family: ``teacher`` or ``transformer`` (the meta's family).
    """

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    featurize: Featurize
    max_length: int
    family: str


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    """Prune the configured models, recover them by KD, and build the layer-dropping baseline.

    Args:
        cfg: the run config; reads ``prune``, ``data``, ``teacher.max_length``, ``train.student``
            and ``seed``.
        run_dir: reads ``finetune/teacher/``, ``train/kd/``, ``label/`` and ``data/``; writes ``prune/``.

    Returns:
        ``{"models": {model: summary of :func:`prune_model`}, "layer_drop": summary of
        :func:`layer_drop_baseline` or None}``, a ``models`` entry per model of ``prune.models``.

    Raises:
        ConfigError: a prune section that the task, the student or the teacher cannot serve
            (:func:`check_prunable`).
        ArtifactError: a model, split or label shard is missing or fails its checksum.
    """
    prune_cfg, kind = cfg.prune, task_kind(cfg.data)
    check_prunable(cfg)
    torch.manual_seed(cfg.seed)
    files = soft_label_files(run_dir, len(cfg.data.labels), LossConfig())  # the KD term needs every logit
    dev = read_split(require_file(run_dir.split_file("dev")), kind)
    out = clear_folder(run_dir.stage_dir("prune"))
    models = {}
    for name in prune_cfg.models:
        models[name] = prune_model(load_prunable(cfg, run_dir, name), files, kind, dev, prune_cfg, out)
    baseline = None
    if prune_cfg.layer_drop:
        teacher = load_prunable(cfg, run_dir, "teacher")
        train_file = require_file(run_dir.split_file("train"))
        rows = pq.read_metadata(train_file).num_rows
        finetune = resolve_recipe(cfg.finetune, rows, teacher.model.config.hidden_size)  # its auto values
        baseline = layer_drop_baseline(teacher, train_file, kind, dev, prune_cfg, finetune, out)
    return {"models": models, "layer_drop": baseline}


def check_prunable(cfg: RunConfig) -> None:
    """ConfigError, before any work, for a token task, a ``kd`` student of a family that is not
    pruned, a teacher of an architecture that is not, or a ``layer_drop`` the fine-tuned teacher
    cannot give: the rules of :mod:`pipeline.config.rules` that ``distill validate`` and
    ``distill run`` checked already."""
    raise_problems(prune_problems(cfg))
    teacher = AutoConfig.from_pretrained(str(require_file(RunDir(cfg.run_dir).teacher_dir / "config.json").parent))
    raise_problems(prune_architecture_problems(cfg.prune, teacher) or
                   layer_drop_problems(cfg.prune, teacher.num_hidden_layers))


def clear_folder(folder: Path) -> Path:
    """Remove what an earlier run of the stage left in ``folder`` (models, plots); returns it."""
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return folder


def load_prunable(cfg: RunConfig, run_dir: RunDir, name: str) -> Prunable:
    """The teacher, or the distilled student (a transformer: :func:`check_prunable`)."""
    if name == "teacher":
        model, featurize, folder = teacher_model(run_dir.teacher_dir, cfg.teacher.max_length)
        return Prunable(name, model, load_tokenizer(folder), featurize, cfg.teacher.max_length, "teacher")
    student = load_student(run_dir.student_dir(name))
    return Prunable(name, student.model.eval(), student.tokenizer, student.featurize, student.cfg.max_length,
                    "transformer")


class TableBatches:
    """Model batches read from Parquet tables (label shards, or a data split), one table at a time.

    Each batch is a dict of input_ids / attention_mask / token_type_ids int64 [B, T] (the
    featurizer's), ``teacher_logits`` float32 [B, C] when the table has logits, and ``labels``
    int64 [B] (-1 = none) when some row has a hard label: what :mod:`compress.pruning` takes.
    Rows go in table order; the last batch of each table may be smaller. Each pass re-reads the
    tables, so only one table's rows are in memory.

    Args:
        files: Parquet tables with the task's text columns and ``label`` (and ``logits``).
        kind: the task's kind (sentence or pair).
        featurize: see :class:`Prunable`.
        batch_size: rows per batch.
        rows: the first rows to use; None = all.
        epochs: passes over the rows; a fraction cuts the last pass (``len`` = round(epochs x batches)).
    """

    def __init__(self, files: list[Path], kind: TaskKind, featurize: Featurize, batch_size: int,
                 rows: int | None = None, epochs: float = 1.0):
        self.featurize, self.batch_size, self.kind = featurize, batch_size, kind
        budget = math.inf if rows is None else rows
        self.takes: list[tuple[Path, int]] = []
        for path in files:
            take = int(min(pq.ParquetFile(path).metadata.num_rows, budget))
            budget -= take
            if take:
                self.takes.append((path, take))
        self.columns = [*kind.text_columns, LABEL]
        if self.takes and LOGITS in pq.read_schema(self.takes[0][0]).names:
            self.columns.append(LOGITS)
        self.steps = round(epochs * sum(math.ceil(take / batch_size) for _, take in self.takes))

    def __len__(self) -> int:
        """Batches over all passes."""
        return self.steps

    def __iter__(self):
        yielded = 0
        while yielded < self.steps:
            for path, take in self.takes:
                table = pq.read_table(path, columns=self.columns).slice(0, take)
                for start in range(0, take, self.batch_size):
                    if yielded == self.steps:
                        return
                    yield self.model_batch(table.slice(start, self.batch_size))
                    yielded += 1

    def model_batch(self, table: pa.Table) -> dict[str, torch.Tensor]:
        """The batch of a slice of a table (see the class docstring)."""
        pairs = table.column(TEXT_PAIR).to_pylist() if self.kind is TaskKind.PAIR else None
        batch = dict(self.featurize(table.column(TEXT).to_pylist(), pairs))
        if LOGITS in table.column_names:
            flat = np.asarray(table.column(LOGITS).combine_chunks().flatten(), dtype=np.float32)
            batch["teacher_logits"] = torch.tensor(flat.reshape(table.num_rows, -1))  # [B, C], a copy
        labels = torch.from_numpy(table.column(LABEL).to_numpy().astype(np.int64))
        if (labels >= 0).any():
            batch["labels"] = labels
        return batch


def transfer_texts(files: list[Path], kind: TaskKind) -> tuple[list[str], list[str] | None]:
    """All texts of the label shards, and their second sentences for pair tasks (else None)."""
    texts: list[str] = []
    pairs: list[str] | None = [] if kind is TaskKind.PAIR else None
    for path in files:
        table = pq.read_table(path, columns=kind.text_columns)
        texts += table.column(TEXT).to_pylist()
        if pairs is not None:
            pairs += table.column(TEXT_PAIR).to_pylist()
    return texts, pairs


def prune_model(target: Prunable, files: list[Path], kind: TaskKind, dev: Split, cfg: PruneConfig,
                out: Path) -> dict[str, Any]:
    """Prune one model, recover it by KD and save it as ``<out>/<name>-pruned/`` (module docstring).

    Returns:
        ``parameters_before/after``, ``heads_before/after``, ``ffn_before/after``,
        ``vocab_before/after`` (word-embedding rows), ``dev_accuracy_before``,
        ``dev_accuracy_structured`` (heads and FFN pruned), ``dev_unkept_token_share`` (of dev
        tokens the vocabulary cut turns into [UNK]; 0.0 without it), ``dev_accuracy_pruned``
        (vocabulary cut too, before recovery), ``dev_accuracy_recovered``, ``steps`` (one
        record per pruning step: heads_left, neurons_left, parameters), ``recovery_steps``,
        ``recovery_loss_first/last`` (None without recovery) and ``plots`` (file names in ``out``).
    """
    model, name = target.model, target.name
    before = structure(model)
    accuracy_before = dev_accuracy(model, target.featurize, dev)
    score_batches = list(TableBatches(files, kind, target.featurize, cfg.batch_size, rows=cfg.score_rows))
    plots = []
    if cfg.sensitivity:
        plots.append(sensitivity_plot(target, dev, score_batches, cfg, out))
    importance = head_importance(model, score_batches, cfg.temperature)  # [L, H] before pruning
    _, steps = prune_iteratively(model, score_batches, cfg.heads, cfg.ffn, cfg.iterations, cfg.temperature)
    log.debug("prune: %s steps %s", name, steps)
    accuracy_structured = dev_accuracy(model, target.featurize, dev)  # heads and FFN neurons gone
    unkept_share = cut_vocabulary(target, files, kind, dev) if cfg.vocabulary else 0.0
    accuracy_pruned = dev_accuracy(model, target.featurize, dev) if cfg.vocabulary else accuracy_structured
    vocabulary_cost, kept_ids = accuracy_structured - accuracy_pruned, structure(model)["vocab"]
    if vocabulary_cost >= VOCABULARY_COST_WARNING:
        log.warning("prune: %s: cutting the vocabulary to the transfer set's %d ids turns %.1f %% of dev tokens "
                    "into [UNK] and costs %.2f points of dev accuracy; set prune.vocabulary: false to keep every "
                    "id (latency unchanged, %.1f MB more)", name, kept_ids, 100 * unkept_share, 100 * vocabulary_cost,
                    (before["vocab"] - kept_ids) * model.config.hidden_size * 4 / 1e6)  # fp32 rows of D floats
    recovery = TableBatches(files, kind, target.featurize, cfg.batch_size, cfg.recovery_rows, cfg.recovery_epochs)
    recipe = Recipe(cfg.lr, cfg.weight_decay, cfg.warmup_ratio)
    losses = recover_with_progress(model, recovery, recipe, cfg, f"prune: recover {name}")
    after = structure(model)
    for layer, heads in enumerate(kept_heads(model)):
        importance[layer, [h for h in range(importance.shape[1]) if h not in heads]] = torch.nan
    plots.append(plot_head_importance(importance, out / f"head_importance-{name}.png").name)
    settings = {"heads": cfg.heads, "ffn": cfg.ffn, "vocabulary": cfg.vocabulary, "iterations": cfg.iterations,
                "kept_heads": kept_heads(model), "heads_per_layer": [len(h) for h in kept_heads(model)],
                "neurons_per_layer": pruning_state(model)["intermediate_sizes"], "vocab_size": after["vocab"],
                "recovery": {**asdict(recipe), "epochs": cfg.recovery_epochs, "rows": cfg.recovery_rows,
                             "steps": len(recovery), "batch_size": cfg.batch_size, "temperature": cfg.temperature}}
    save_model(target, f"{name}-pruned", "prune", settings, score_batches[0], out)
    summary = {**{f"{key}_before": value for key, value in before.items()},
               **{f"{key}_after": value for key, value in after.items()},
               "dev_accuracy_before": accuracy_before, "dev_accuracy_structured": accuracy_structured,
               "dev_unkept_token_share": round(unkept_share, 4), "dev_accuracy_pruned": accuracy_pruned,
               "dev_accuracy_recovered": dev_accuracy(model, target.featurize, dev),
               "steps": [vars(step) for step in steps], "recovery_steps": len(losses),
               "recovery_loss_first": losses[0] if losses else None,
               "recovery_loss_last": losses[-1] if losses else None, "plots": plots}
    log.info("prune: %s %d -> %d parameters, heads %d -> %d, FFN %d -> %d, vocabulary %d -> %d; dev accuracy "
             "%.4f -> %.4f pruned -> %.4f recovered", name, before["parameters"], after["parameters"],
             before["heads"], after["heads"], before["ffn"], after["ffn"], before["vocab"], after["vocab"],
             accuracy_before, accuracy_pruned, summary["dev_accuracy_recovered"])
    return summary


def cut_vocabulary(target: Prunable, files: list[Path], kind: TaskKind, dev: Split) -> float:
    """Cut the model's vocabulary to the ids of the transfer set's texts (TextPruner); returns
    the share of dev tokens that the cut turns into [UNK] (:func:`compress.vocabulary.unkept_token_share`)."""
    texts, pairs = transfer_texts(files, kind)
    keep = used_token_ids(target.tokenizer, texts, pairs, target.max_length)
    prune_vocabulary(target.model, keep, target.tokenizer.unk_token_id)
    return unkept_token_share(target.tokenizer, dev.texts, keep, dev.pairs, target.max_length)


def layer_drop_baseline(teacher: Prunable, train_file: Path, kind: TaskKind, dev: Split, cfg: PruneConfig,
                        finetune: FinetuneConfig, out: Path) -> dict[str, Any]:
    """The teacher without its top ``cfg.layer_drop`` layers, fine-tuned again with CE on the labeled
    rows (Sajjad et al. 2020, ``drop_top``), saved as ``<out>/teacher-layerdrop/``.

    The fine-tuning is the teacher's own (``finetune``'s lr, epochs, warm-up, weight decay, batch
    size), as in the paper: the [CLS] vector the classifier reads hardly differs between sentences
    below the top layer (MiniLM-L6, SST-2 dev: 0.3 % of its norm after layer 2, 86 % after 6), so
    the model is trained afresh, not recovered (5e-5 x 1 epoch left it at the majority class).

    Returns:
        ``layers_before/after``, ``dropped`` (0-based layer ids), ``parameters_before/after``,
        ``dev_accuracy_before``, ``dev_accuracy_dropped`` (before fine-tuning),
        ``dev_accuracy_finetuned``, ``recovery_steps`` and ``recovery_loss_first/last``.
    """
    model = teacher.model
    layers_before, parameters_before = model.config.num_hidden_layers, count_parameters(model)
    accuracy_before = dev_accuracy(model, teacher.featurize, dev)
    dropped = layers_to_drop(layers_before, layers_before - cfg.layer_drop, "drop_top")
    drop_layers(model, dropped)
    accuracy_dropped = dev_accuracy(model, teacher.featurize, dev)
    labeled = TableBatches([train_file], kind, teacher.featurize, finetune.batch_size, epochs=finetune.epochs)
    recipe = Recipe(finetune.lr, finetune.weight_decay, finetune.warmup_ratio)
    losses = recover_with_progress(model, labeled, recipe, cfg, "prune: fine-tune teacher-layerdrop")
    settings = {"layer_drop": cfg.layer_drop, "strategy": "drop_top", "dropped_layers": dropped,
                "recovery": {**asdict(recipe), "epochs": finetune.epochs, "steps": len(labeled), "loss": "ce",
                             "batch_size": finetune.batch_size, "rows": "train split", "recipe": "finetune section"}}
    first_batch = next(iter(TableBatches([train_file], kind, teacher.featurize, cfg.batch_size, rows=cfg.batch_size)))
    save_model(teacher, "teacher-layerdrop", "layer_drop", settings, first_batch, out)
    summary = {"layers_before": layers_before, "layers_after": model.config.num_hidden_layers, "dropped": dropped,
               "parameters_before": parameters_before, "parameters_after": count_parameters(model),
               "dev_accuracy_before": accuracy_before, "dev_accuracy_dropped": accuracy_dropped,
               "dev_accuracy_finetuned": dev_accuracy(model, teacher.featurize, dev),
               "recovery_steps": len(losses), "recovery_loss_first": losses[0] if losses else None,
               "recovery_loss_last": losses[-1] if losses else None}
    log.info("prune: teacher-layerdrop %d -> %d layers, dev accuracy %.4f -> %.4f dropped -> %.4f fine-tuned",
             layers_before, summary["layers_after"], accuracy_before, accuracy_dropped,
             summary["dev_accuracy_finetuned"])
    return summary


def recover_with_progress(model: nn.Module, batches: TableBatches, recipe: Recipe, cfg: PruneConfig,
                          desc: str) -> list[float]:
    """:func:`compress.pruning.recover` over ``batches`` (one pass: their ``len`` counts every epoch) with a
    progress bar, by ``recipe`` at ``cfg``'s ``precision`` and ``temperature``; returns the loss of every
    step, [] when there is no step (``recovery_epochs: 0``)."""
    if not len(batches):
        return []
    with tqdm(batches, total=len(batches), desc=desc, unit="step") as bar:
        steps = recover(model, bar, recipe, select_precision(cfg.precision, "prune"), temperature=cfg.temperature)
    return [step.loss for step in steps]


def structure(model: nn.Module) -> dict[str, int]:
    """Parameters, attention heads, FFN neurons and word-embedding rows of a (pruned) BERT model."""
    return {"parameters": count_parameters(model), "heads": sum(map(len, kept_heads(model))),
            "ffn": sum(pruning_state(model)["intermediate_sizes"]),
            "vocab": model.get_input_embeddings().weight.shape[0]}


def dev_accuracy(model: nn.Module, featurize: Featurize, dev: Split) -> float:
    """Accuracy of ``model`` on the dev rows, in [0, 1]."""
    return round(score(predict(model, featurize, dev), dev.gold, None)["accuracy"], 4)


def sensitivity_plot(target: Prunable, dev: Split, score_batches: list[dict], cfg: PruneConfig, out: Path) -> str:
    """Draw the one-shot sensitivity curves of the unpruned model (dev accuracy on the first
    :data:`SENSITIVITY_DEV_ROWS` rows) to ``<out>/sensitivity-<name>.png``; returns the file name."""
    rows = slice(0, SENSITIVITY_DEV_ROWS)
    few = Split(dev.texts[rows], dev.pairs[rows] if dev.pairs else None, dev.gold[rows])
    curves = sensitivity(target.model, lambda model: dev_accuracy(model, target.featurize, few),
                         cfg.sensitivity, score_batches, cfg.temperature)
    log.debug("prune: sensitivity of %s: %s", target.name, curves)
    return plot_sensitivity(curves, out / f"sensitivity-{target.name}.png").name


def save_model(target: Prunable, name: str, method: str, settings: dict[str, Any], batch: dict[str, torch.Tensor],
               out: Path) -> Path:
    """Save ``target.model`` and its tokenizer as ``<out>/<name>/``, check that
    :func:`compress.slicing.load_pruned` gives the same logits on ``batch``, then write the meta.

    Raises:
        ArtifactError: the reloaded model's logits differ by more than :data:`RELOAD_ATOL`.
    """
    folder = out / name
    with atomic_dir(folder) as tmp:
        target.model.save_pretrained(tmp)
        target.tokenizer.save_pretrained(tmp)
        with torch.inference_mode():
            difference = (model_logits(load_pruned(tmp), batch) - model_logits(target.model, batch)).abs().max().item()
        if difference > RELOAD_ATOL:
            raise ArtifactError(tmp, f"reloads with logits {difference:.2e} away from the pruned model's; "
                                     "compress.slicing.load_pruned does not rebuild it")
        relative = f"prune/{name}"
        write_meta(tmp, VariantMeta(name=name, model=name, backend="pytorch", precision="fp32", file=relative,
                                    source=relative, parent=target.name, method=method, family=target.family,
                                    settings=settings))
    return folder
