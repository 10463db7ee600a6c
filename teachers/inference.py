"""Teacher inference under DeepSpeed with length-sorted dynamic batching.

Rows are tokenized without padding, sorted by length, and cut into batches of at most
``max_batch_size`` rows and ``max_batch_tokens`` padded tokens, so short sentences are not
padded to the longest one in the set; outputs are returned in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.precision import Precision
from teachers.checkpoint import load_tokenizer
from teachers.distributed import init_single_process

log = logging.getLogger(__name__)


def length_sorted_batches(lengths: np.ndarray, max_batch_size: int, max_batch_tokens: int) -> Iterator[np.ndarray]:
    """Cut row indices into batches of similar length.

    Args:
        lengths: int array [N], token count of each row.
        max_batch_size: rows per batch, at most.
        max_batch_tokens: ``rows * longest row`` per batch, at most (one row always fits).

    Yields:
        int64 arrays of row indices; every row appears in exactly one batch.
    """
    order = np.argsort(lengths, kind="stable")
    batch: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, int(lengths[index]))
        if batch and (len(batch) == max_batch_size or longest_if_added * (len(batch) + 1) > max_batch_tokens):
            yield np.asarray(batch, dtype=np.int64)
            batch, longest_if_added = [], int(lengths[index])
        batch.append(int(index))
        longest = longest_if_added
    if batch:
        yield np.asarray(batch, dtype=np.int64)


class TeacherInference:
    """A fine-tuned sequence classifier wrapped by ``deepspeed.init_inference``.

    Args:
        checkpoint: Hugging Face checkpoint folder of a sequence classifier.
        precision: dtype and device; on CUDA, DeepSpeed kernel injection is used for fp16/bf16.
        max_length: tokens per row; longer rows are truncated.
        max_batch_size: see :func:`length_sorted_batches`.
        max_batch_tokens: see :func:`length_sorted_batches`.
    """

    def __init__(self, checkpoint: Path, precision: Precision, max_length: int,
                 max_batch_size: int = 128, max_batch_tokens: int = 8192):
        import deepspeed
        from transformers import AutoModelForSequenceClassification

        init_single_process()
        self.tokenizer = load_tokenizer(checkpoint)
        model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
        self.num_labels = model.config.num_labels
        self.engine = deepspeed.init_inference(
            model,
            dtype=precision.dtype,
            replace_with_kernel_inject=precision.device == "cuda" and precision.name != "fp32",
        )
        self.device = torch.device(precision.device)
        self.max_length = max_length
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> np.ndarray:
        """Teacher logits for each text.

        Args:
            texts: N input sentences.

        Returns:
            float32 array [N, C], row i for texts[i].
        """
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        out = np.empty((len(texts), self.num_labels), dtype=np.float32)
        for rows in length_sorted_batches(lengths, self.max_batch_size, self.max_batch_tokens):
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out[rows] = self.engine(**batch).logits.float().cpu().numpy()  # [b, C]
        return out
