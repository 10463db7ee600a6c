"""Fine-tune a teacher as a sequence or token classifier with DeepSpeed.

A token classifier (``task="token"``) learns word tags on each word's first sub-token; the
other positions carry the ignore index (:func:`teachers.token_alignment.subtoken_labels`).

The model is wrapped by ``deepspeed.initialize`` (ZeRO stage 0/1/2, fp16/bf16 on CUDA, fp32 on
a CPU with the gloo backend) around a torch AdamW optimizer (fused on CUDA) and DeepSpeed's
``WarmupDecayLR`` schedule. Keys of a user DeepSpeed JSON (``finetune.deepspeed_config``, e.g.
one of ``clusters/deepspeed/``) override the generated ones.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from pydantic import Field
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


class FinetuneConfig(Section):
    """Stage ``finetune``: fine-tune the teacher on the labeled split with DeepSpeed.

    Skipped when the configured teacher already is a sequence classifier for the label set,
    unless ``force`` is set.
    """

    force: bool = False
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    zero_stage: Literal[0, 1, 2] = 0
    deepspeed_config: Path | None = Field(
        default=None, description="DeepSpeed JSON whose keys override the generated ones (see clusters/deepspeed/)")


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
                        on_step: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` on ``train`` and save it to ``out_dir`` in Hugging Face format.

    Args:
        checkpoint: the pretrained teacher (folder or hub id).
        train: labeled rows; for ``task="sequence"`` columns ``text`` (str), for pair tasks
            ``text_pair`` (str), and ``label`` (int64 class index); for ``task="token"``
            columns ``tokens`` (list of words) and ``tags`` (int64 tag index per word).
        label_names: class (tag) names in index order.
        out_dir: written atomically (a temporary folder renamed at the end).
        cfg: epochs, batch size, learning rate, ZeRO stage.
        precision: from :func:`core.precision.select_precision`.
        max_length: tokens per row; longer rows are truncated.
        seed: for the shuffling and the new classification head.
        task: "sequence" or "token" (see :data:`teachers.checkpoint.CLASSIFIERS`).
        trust_remote_code: let the checkpoint run its own code (see :func:`teachers.checkpoint.check_checkpoint`).
        on_step: called after every step with its row (see :func:`train_steps`), e.g. to log it live.

    Returns:
        ``{"steps": int, "final_loss": float, "loss_history": [float, ...]}`` with the mean
        training loss of each tenth of the run.
    """
    import deepspeed

    torch.manual_seed(seed)
    init_single_process()
    tokenizer = load_tokenizer(checkpoint, trust_remote_code)
    model = load_classifier(checkpoint, label_names, task, trust_remote_code).train()
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
    losses = train_steps(engine, loader, total_steps, on_step)
    save_hf(engine.module, tokenizer, out_dir)
    history = [float(np.mean(part)) for part in np.array_split(np.asarray(losses), min(10, len(losses)))]
    return {"steps": total_steps, "final_loss": history[-1], "loss_history": history}


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
                on_step: Callable[[dict[str, float]], None] | None = None) -> list[float]:
    """Run ``total_steps`` DeepSpeed steps over ``loader`` (cycling epochs); returns each step's loss.

    ``on_step`` receives ``{"step": 0-based step, "loss": mean cross-entropy of the batch,
    "lr": the learning rate the step used, "examples_per_s": rows of the batch / wall time of the step}``.
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
    return losses


def save_hf(model, tokenizer, out_dir: Path) -> None:
    """Save model and tokenizer with ``save_pretrained``, atomically (see :func:`atomic_dir`)."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
