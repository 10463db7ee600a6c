"""Fine-tune a teacher as a sequence or token classifier with DeepSpeed.

A token classifier (``task="token"``) learns word tags on each word's first sub-token; the
other positions carry the ignore index (:func:`teachers.token_alignment.subtoken_labels`).

The model is wrapped by ``deepspeed.initialize`` (ZeRO stage 0/1/2, fp16/bf16 on CUDA, fp32 on
a CPU with the gloo backend) around a torch AdamW optimizer (fused on CUDA) and DeepSpeed's
``WarmupDecayLR`` schedule. Keys of a user DeepSpeed JSON (``finetune.deepspeed_config``, e.g.
one of ``clusters/deepspeed/``) override the generated ones.

Given a dev scorer, the dev split is scored after each epoch and the best epoch's weights are
the ones saved (:class:`BestEpoch`), as the students' training keeps its best epoch.

``epochs``, ``lr`` and ``warmup_ratio`` may be ``auto``: the recipe then follows the labeled
set's size N (:func:`resolve_recipe`), after Mosbach et al. (2021), "On the Stability of
Fine-tuning BERT", and Zhang et al. (2021), "Revisiting Few-sample BERT Fine-tuning": on a few
thousand rows, the 2-4 epochs of Devlin et al. (2019) stop while the model is still
under-trained (the failed runs of small sets are an optimisation failure, fixed by more steps,
a small learning rate, bias-corrected Adam and a warm-up), so

    epochs        enough for AUTO_MIN_STEPS optimizer steps, within [3, 10] epochs
                  (N = 1,000 at batch 32: 10 epochs, 320 steps; N = 67k: 3 epochs)
    lr            compact teachers (hidden size <= 512, e.g. MiniLM-L6's 384): 1e-4 (Turc et al.
                  2019, "Well-Read Students Learn Better", fine-tune compact BERTs on a grid up to
                  1e-4; measured: MiniLM-L6 on 1,000 CoNLL-2003 sentences reached 0.59 dev entity
                  F1 in 10 epochs at 2e-5, see docs/results.md "A small labeled set");
                  wider teachers: 2e-5 below 5,000 rows, 3e-5 below 50,000, else 5e-5 (Devlin et
                  al.'s grid, smallest on the smallest sets: Mosbach et al.)
    warmup_ratio  0.1 (Devlin et al.; Mosbach et al.)

torch's AdamW corrects its moments' bias (Zhang et al.'s first fix); best-epoch selection on dev
guards the extra epochs against over-fitting.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import datasets
import numpy as np
import torch
from pydantic import BeforeValidator, Field
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from core.artifacts import atomic_dir
from core.config import Section
from core.precision import Precision, deepspeed_config
from core.hf_checkpoint import load_tokenizer
from teachers.checkpoint import encode, load_classifier
from teachers.distributed import init_single_process
from teachers.token_alignment import encode_words, subtoken_labels

log = logging.getLogger(__name__)


def auto_or_number(low: float, high: float | None = None, low_inclusive: bool = False) -> Any:
    """The type of a field that takes ``auto`` or a number in ``(low, high)`` (``[low, high)`` with
    ``low_inclusive``), so that a bad value gets one error line naming both choices."""
    def check(value: Any) -> Any:
        if value == "auto":
            return value
        bounds = f"{'>=' if low_inclusive else '>'} {low}" + ("" if high is None else f" and < {high}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected 'auto' or a number {bounds}") from None
        if number < low or (number == low and not low_inclusive) or (high is not None and number >= high):
            raise ValueError(f"expected 'auto' or a number {bounds}")
        return number

    return Annotated[float | Literal["auto"], BeforeValidator(check)]


class FinetuneConfig(Section):
    """Stage ``finetune``: fine-tune the teacher on the labeled split with DeepSpeed.

    Skipped when the configured teacher already is a sequence classifier for the label set,
    unless ``force`` is set.
    """

    force: bool = False
    epochs: auto_or_number(0) = Field(
        default=1.0, description="auto: by the labeled set's size (teachers.finetune.resolve_recipe)")
    batch_size: int = Field(default=32, gt=0)
    lr: auto_or_number(0) = Field(default=5e-5, description="peak learning rate; auto: by the labeled set's size")
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: auto_or_number(0, 1, low_inclusive=True) = Field(
        default=0.06, description="share of the steps that warm the LR up; auto: 0.1")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    zero_stage: Literal[0, 1, 2] = 0
    deepspeed_config: Path | None = Field(
        default=None, description="DeepSpeed JSON whose keys override the generated ones (see clusters/deepspeed/)")


AUTO_MIN_STEPS = 1000
"""Optimizer steps that ``epochs: auto`` aims for (Mosbach et al. 2021 train RTE's 2,490 rows for
20 epochs at batch 16, about 3,100 steps; 1,000 within 10 epochs is what a CPU run affords)."""
AUTO_EPOCHS = (3, 10)
"""The fewest and most epochs of ``epochs: auto``: Devlin et al.'s 3 on large sets, 10 on small ones."""
AUTO_LR = ((5_000, 2e-5), (50_000, 3e-5))
"""``lr: auto`` of a wide teacher below each row count, in order; :data:`AUTO_LR_LARGE` above the last."""
AUTO_LR_LARGE = 5e-5
AUTO_LR_COMPACT = (512, 1e-4)
"""``lr: auto`` of a teacher whose hidden size is at most the first number, whatever the row count."""
AUTO_WARMUP_RATIO = 0.1


def resolve_recipe(cfg: FinetuneConfig, rows: int, hidden_size: int) -> FinetuneConfig:
    """``cfg`` with its ``auto`` values (``epochs``, ``lr``, ``warmup_ratio``) replaced by the
    recipe for a labeled set of ``rows`` rows and a teacher of width ``hidden_size`` (see the
    module docstring); numbers are kept.

    ``epochs: auto`` is ``ceil(AUTO_MIN_STEPS / steps_per_epoch)`` clamped to :data:`AUTO_EPOCHS`,
    with ``steps_per_epoch = ceil(rows / batch_size)``.
    """
    steps_per_epoch = max(1, math.ceil(rows / cfg.batch_size))
    epochs = min(max(math.ceil(AUTO_MIN_STEPS / steps_per_epoch), AUTO_EPOCHS[0]), AUTO_EPOCHS[1])
    lr = (AUTO_LR_COMPACT[1] if hidden_size <= AUTO_LR_COMPACT[0]
          else next((rate for below, rate in AUTO_LR if rows < below), AUTO_LR_LARGE))
    auto = {"epochs": float(epochs), "lr": lr, "warmup_ratio": AUTO_WARMUP_RATIO}
    return cfg.model_copy(update={name: value for name, value in auto.items() if getattr(cfg, name) == "auto"})


class BestEpoch:
    """Keeps the weights of the epoch with the highest dev score, to restore after training.

    Args:
        score: ``score(model) -> float``, higher is better, called on the model in eval mode
            (it is put back in train mode after); ties keep the earlier epoch.
    """

    def __init__(self, score: Callable[[nn.Module], float]):
        self.score = score
        self.scores: list[float] = []
        self.state: dict[str, torch.Tensor] | None = None

    def observe(self, model: nn.Module) -> None:
        """Score the model at an epoch's end; copy its weights to the CPU when it is the best so far."""
        model.eval()
        value = float(self.score(model))
        model.train()
        if not self.scores or value > max(self.scores):
            self.state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        self.scores.append(value)

    @property
    def best_epoch(self) -> int:
        """1-based epoch of the best score (0 before any)."""
        return int(np.argmax(self.scores)) + 1 if self.scores else 0

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (nothing when no epoch was scored)."""
        if self.state is not None:
            model.load_state_dict(self.state)


def finetune_deepspeed_config(cfg: FinetuneConfig, precision: Precision, total_steps: int) -> dict[str, Any]:
    """The DeepSpeed config dict for a fine-tune of ``total_steps`` optimizer steps: see
    :func:`core.precision.deepspeed_config`, plus a linear warm-up and decay of the
    learning rate (``WarmupDecayLR``); ``cfg.deepspeed_config`` keys override the generated ones."""
    warmup = max(1, int(cfg.warmup_ratio * total_steps))  # DeepSpeed needs at least one step
    scheduler = {"type": "WarmupDecayLR", "params": {
        "total_num_steps": max(total_steps, 1), "warmup_num_steps": warmup,
        "warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_type": "linear"}}
    return deepspeed_config(cfg.batch_size, cfg.zero_stage, precision, cfg.deepspeed_config, scheduler=scheduler)


def finetune_classifier(checkpoint: Path | str, train: datasets.Dataset, label_names: list[str],
                        out_dir: Path, cfg: FinetuneConfig, precision: Precision,
                        max_length: int, seed: int, task: str = "sequence", trust_remote_code: bool = False,
                        on_step: Callable[[dict[str, float]], None] | None = None,
                        dev_score: Callable[[nn.Module], float] | None = None) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` on ``train`` and save it to ``out_dir`` in Hugging Face format:
    the weights of the epoch that ``dev_score`` rates best (:class:`BestEpoch`), else the last.

    Args:
        checkpoint: the pretrained teacher (folder or hub id).
        train: labeled rows; for ``task="sequence"`` columns ``text`` (str), for pair tasks
            ``text_pair`` (str), and ``label`` (int64 class index); for ``task="token"``
            columns ``tokens`` (list of words) and ``tags`` (int64 tag index per word).
        label_names: class (tag) names in index order.
        out_dir: written atomically (a temporary folder renamed at the end).
        cfg: epochs, batch size, learning rate, ZeRO stage; ``auto`` values are resolved for
            ``len(train)`` rows and the model's hidden size (:func:`resolve_recipe`).
        precision: from :func:`core.precision.select_precision`.
        max_length: tokens per row; longer rows are truncated.
        seed: for the shuffling and the new classification head.
        task: "sequence" or "token" (see :data:`teachers.checkpoint.CLASSIFIERS`).
        trust_remote_code: let the checkpoint run its own code (see :func:`teachers.checkpoint.check_checkpoint`).
        on_step: called after every step with its row (see :func:`train_steps`), e.g. to log it live.
        dev_score: ``dev_score(model) -> float`` (higher is better), called at each epoch's end
            (and after a last partial epoch); None: keep the last weights.

    Returns:
        ``{"steps": int, "final_loss": float, "loss_history": [float, ...], "epochs": float,
        "lr": float, "warmup_ratio": float}`` with the mean training loss of each tenth of the run
        and the recipe used; with ``dev_score`` also ``dev_scores`` (one per epoch) and
        ``best_epoch`` (1-based).
    """
    import deepspeed

    torch.manual_seed(seed)
    init_single_process()
    tokenizer = load_tokenizer(checkpoint, trust_remote_code)
    model = load_classifier(checkpoint, label_names, task, trust_remote_code).train()
    cfg = resolve_recipe(cfg, len(train), model.config.hidden_size)
    if task == "token":
        encoded = train.map(lambda b: encode_tagged(tokenizer, b["tokens"], b["tags"], max_length), batched=True,
                            remove_columns=train.column_names, desc="tokenize")
        collate = DataCollatorForTokenClassification(tokenizer)  # pads labels with -100
    else:
        pairs = "text_pair" in train.column_names
        encoded = train.map(lambda b: encode(tokenizer, b["text"], b["text_pair"] if pairs else None, max_length),
                            batched=True, remove_columns=[c for c in train.column_names if c != "label"],
                            desc="tokenize").rename_column("label", "labels")
        collate = DataCollatorWithPadding(tokenizer)
    encoded = encoded.with_format("torch")
    # Batches of similar length (as transformers' Trainer group_by_length): SST-2 padded to the
    # longest row of a random batch holds 3x its real tokens.
    sampler = LengthGroupedSampler(cfg.batch_size, lengths=[len(ids) for ids in encoded["input_ids"]],
                                   generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(encoded, batch_size=cfg.batch_size, sampler=sampler, drop_last=False, collate_fn=collate)
    total_steps = math.ceil(cfg.epochs * len(loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=precision.device == "cuda")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=finetune_deepspeed_config(cfg, precision, total_steps))
    best = BestEpoch(dev_score) if dev_score is not None else None
    losses = train_steps(engine, loader, total_steps, on_step, None if best is None else
                         lambda: best.observe(engine.module))
    if best is not None:
        best.restore(engine.module)
    save_hf(engine.module, tokenizer, out_dir)
    history = [float(np.mean(part)) for part in np.array_split(np.asarray(losses), min(10, len(losses)))]
    recipe = {"epochs": cfg.epochs, "lr": cfg.lr, "warmup_ratio": cfg.warmup_ratio}
    scores = {} if best is None else {"dev_scores": best.scores, "best_epoch": best.best_epoch}
    return {"steps": total_steps, "final_loss": history[-1], "loss_history": history, **recipe, **scores}


def encode_tagged(tokenizer: PreTrainedTokenizerBase, sentences: list[list[str]], tags: list[list[int]],
                  max_length: int) -> dict[str, list[list[int]]]:
    """Unpadded token ids of pre-split sentences and their sub-token labels (first sub-token
    rule, -100 elsewhere; see :func:`teachers.token_alignment.subtoken_labels`).

    Returns:
        Per row lists: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT), ``labels``.
    """
    encoded = encode_words(tokenizer, sentences, max_length, pad=False)
    labels = [subtoken_labels(encoded.word_ids(i), row_tags) for i, row_tags in enumerate(tags)]
    return {**encoded, "labels": labels}


def train_steps(engine, loader: DataLoader, total_steps: int,
                on_step: Callable[[dict[str, float]], None] | None = None,
                on_epoch: Callable[[], None] | None = None) -> list[float]:
    """Run ``total_steps`` DeepSpeed steps over ``loader`` (cycling epochs); returns each step's loss.

    ``on_step`` receives ``{"step": 0-based step, "loss": mean cross-entropy of the batch,
    "lr": the learning rate the step used, "examples_per_s": rows of the batch / wall time of the step}``;
    ``on_epoch`` is called after each pass over ``loader``, the last (possibly partial) one included.
    """
    losses: list[float] = []
    with tqdm(total=total_steps, desc="finetune teacher", unit="step") as bar:
        while len(losses) < total_steps:
            for batch in loader:
                began = time.perf_counter()
                batch = {k: v.to(engine.device) for k, v in batch.items()}
                lr = engine.get_lr()[0]
                loss = engine(**batch).loss
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
                if on_step is not None:
                    on_step({"step": len(losses) - 1, "loss": losses[-1], "lr": lr,
                             "examples_per_s": len(batch["labels"]) / (time.perf_counter() - began)})
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if len(losses) == total_steps:
                    break
            if on_epoch is not None:
                on_epoch()
    return losses


def save_hf(model, tokenizer, out_dir: Path) -> None:
    """Save model and tokenizer with ``save_pretrained``, atomically (see :func:`atomic_dir`)."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
