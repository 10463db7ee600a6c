"""Reading Hugging Face checkpoint folders: what students and teachers both need from one.

Teachers load and fine-tune checkpoints (:mod:`teachers.checkpoint`); transformer students are
built from them (:mod:`students.transformer`). The helpers both use live here, so neither
package imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import ConfigError

CLASSIFIER_SUFFIXES = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}
"""End of the ``architectures`` name of a classifier of each task ("sequence", "token")."""


def checkpoint_config(checkpoint: Path | str) -> dict:
    """The parsed ``config.json`` of a local checkpoint folder.

    Raises:
        ConfigError: the file is not valid JSON (names the file, the line and the fix).
    """
    config_file = Path(checkpoint) / "config.json"
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ConfigError(f"teacher.model: {config_file} is not valid JSON ({where}); fix the file or save "
                          f"the checkpoint again with save_pretrained") from None


def classifier_labels(config: dict) -> int:
    """Number of labels of a checkpoint's ``config.json`` mapping (``id2label``, else ``num_labels``)."""
    return len(config.get("id2label") or {}) or config.get("num_labels", 2)


def is_classifier_for(checkpoint: Path | str, num_labels: int, task: str = "sequence") -> bool:
    """True when a local checkpoint already is a classifier of ``task`` ("sequence": one label per
    input, "token": one per sub-token) with ``num_labels`` outputs."""
    if not (Path(checkpoint) / "config.json").is_file():
        return False
    config = checkpoint_config(checkpoint)
    architectures = config.get("architectures") or []
    return (any(a.endswith(CLASSIFIER_SUFFIXES[task]) for a in architectures)
            and classifier_labels(config) == num_labels)


def takes_token_type_ids(config) -> bool:
    """Whether a model of this transformers config reads segment ids (``token_type_ids``, 0 on a
    pair's first sentence and 1 on its second): BERT's two segment embeddings do; MPNet and
    DistilBERT have none, and RoBERTa's single one (``type_vocab_size`` 1) takes only 0s, which
    its default already gives. Their tokenizers make no ``token_type_ids`` either."""
    return getattr(config, "type_vocab_size", 0) > 1


POSITION_OFFSET_TYPES = ("mpnet", "roberta")
"""Model types whose position ids start after the padding id (at ``pad_token_id + 1``), so that
``max_position_embeddings`` counts ``pad_token_id + 1`` positions no token uses (514 for 512 tokens)."""


def max_tokens(config) -> int:
    """The most tokens a model of this transformers config reads: ``max_position_embeddings``,
    less the positions an offset architecture skips (:data:`POSITION_OFFSET_TYPES`)."""
    skipped = config.pad_token_id + 1 if config.model_type in POSITION_OFFSET_TYPES else 0
    return config.max_position_embeddings - skipped


def load_tokenizer(checkpoint: Path | str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The checkpoint's (fast) tokenizer; ``trust_remote_code`` lets a checkpoint run its own tokenizer code."""
    return AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=trust_remote_code)


WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")
"""Weight files of a Hugging Face checkpoint folder, single or sharded."""


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, sorted; empty when it has none."""
    return sorted(f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern))
