"""Reading Hugging Face checkpoint folders: what students and teachers both need from one.

Teachers load and fine-tune checkpoints (:mod:`teachers.checkpoint`); transformer students are
built from them (:mod:`students.transformer`). The helpers both use live here, so neither
package imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def is_classifier_for(checkpoint: Path | str, num_labels: int, task: str = "sequence") -> bool:
    """True when a local checkpoint already is a classifier of ``task`` ("sequence": one label per
    input, "token": one per sub-token) with ``num_labels`` outputs."""
    config_file = Path(checkpoint) / "config.json"
    if not config_file.is_file():
        return False
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    suffix = "ForTokenClassification" if task == "token" else "ForSequenceClassification"
    return any(a.endswith(suffix) for a in architectures) and labels == num_labels


def load_tokenizer(checkpoint: Path | str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The checkpoint's (fast) tokenizer; ``trust_remote_code`` lets a checkpoint run its own tokenizer code."""
    return AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=trust_remote_code)
