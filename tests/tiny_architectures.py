"""Tiny random-weight encoders of four Hugging Face architectures, each with a tokenizer built
from a small generated vocabulary, saved with ``save_pretrained``: nothing is downloaded.

    save_tiny_encoder(folder, "mpnet", head="sequence")   # -> folder, loadable with Auto* classes

Every model has hidden size 32, 2 layers, 4 heads of 8 and an FFN of 64 (width and depth can be
asked for). BERT, MPNet and DistilBERT read a WordPiece vocabulary (:data:`WORDS`, their letters
and specials; a word outside it splits into letters); RoBERTa reads a byte-level BPE trained
with the ``tokenizers`` library on :func:`sentences` text. Each architecture keeps its own
special tokens and ids (MPNet and RoBERTa: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, as the real
checkpoints), so code that assumes BERT's fails on them.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

ARCHITECTURES = ("bert", "mpnet", "roberta", "distilbert")
"""The architectures :func:`save_tiny_encoder` builds."""

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
WORDS = sorted({a + b for a in SYLLABLES for b in SYLLABLES[::5]} | {"good", "bad", "the", "film", "a"})
"""The generated in-vocabulary words (a few hundred); tests build sentences from them."""

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
MAX_POSITIONS = 64
"""Tokens a tiny encoder reads, at most (RoBERTa and MPNet get 2 more positions, as their
position ids start after the padding id)."""


def sentences(count: int, seed: int, out_of_vocabulary: bool = True) -> list[list[str]]:
    """``count`` random sentences of 3-8 :data:`WORDS` (as word lists); with ``out_of_vocabulary``
    about one word in six is two words glued together, which WordPiece splits into sub-tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(3, 8))
        if out_of_vocabulary:
            words = [w + rng.choice(WORDS) if rng.random() < 1 / 6 else w for w in words]
        rows.append(words)
    return rows


def wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    """``specials`` first (ids 0..), then the letters, their ``##`` continuations, punctuation and :data:`WORDS`."""
    pieces = specials + list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    pieces += list(string.punctuation) + [w for w in WORDS if len(w) > 1]
    return {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}


def byte_level_bpe():
    """A RoBERTa tokenizer whose byte-level BPE (vocabulary 400) is trained on generated text."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    text = [" ".join(words) for words in sentences(2000, seed=7, out_of_vocabulary=False)]
    bpe.train_from_iterator(text, vocab_size=400, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return RobertaTokenizer(vocab=bpe.get_vocab(), merges=[tuple(m) if isinstance(m, list) else tuple(m.split())
                                                            for m in merges])


def tiny_tokenizer(architecture: str):
    """The tokenizer of ``architecture`` over the generated vocabulary."""
    from transformers import BertTokenizer, DistilBertTokenizer, MPNetTokenizer

    if architecture == "roberta":
        return byte_level_bpe()
    if architecture == "mpnet":  # the real all-mpnet-base-v2's first ids
        return MPNetTokenizer(vocab=wordpiece_vocab(["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>"]))
    vocab = wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return (DistilBertTokenizer if architecture == "distilbert" else BertTokenizer)(vocab=vocab)


def tiny_config(architecture: str, tokenizer, label_names: tuple[str, ...], initializer_range: float,
                sizes: dict[str, int] = SIZES):
    """A transformers config of ``architecture`` with ``sizes`` (BERT's field names, default
    :data:`SIZES`), the tokenizer's vocabulary and labels."""
    from transformers import BertConfig, DistilBertConfig, MPNetConfig, RobertaConfig

    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {name: i for i, name in enumerate(label_names)}}
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
              "initializer_range": initializer_range, **labels}
    if architecture == "distilbert":
        return DistilBertConfig(dim=sizes["hidden_size"], n_layers=sizes["num_hidden_layers"],
                                n_heads=sizes["num_attention_heads"], hidden_dim=sizes["intermediate_size"],
                                max_position_embeddings=MAX_POSITIONS, **common)
    if architecture == "bert":
        return BertConfig(max_position_embeddings=MAX_POSITIONS, **sizes, **common)
    if architecture == "roberta":  # one segment, as roberta-base
        common["type_vocab_size"] = 1
    config_class = MPNetConfig if architecture == "mpnet" else RobertaConfig
    return config_class(max_position_embeddings=MAX_POSITIONS + 2, bos_token_id=tokenizer.cls_token_id,
                        eos_token_id=tokenizer.sep_token_id, **sizes, **common)


def save_tiny_encoder(folder, architecture: str, head: str | None = "sequence",
                      label_names: tuple[str, ...] = ("negative", "positive"), seed: int = 0,
                      initializer_range: float = 0.2, hidden_size: int = 32, num_hidden_layers: int = 2):
    """Save a random-weight tiny ``architecture`` encoder drawn with ``seed`` and its tokenizer.

    Args:
        folder: written with ``save_pretrained`` (model and tokenizer).
        architecture: one of :data:`ARCHITECTURES`.
        head: ``"sequence"`` or ``"token"`` for a classifier over ``label_names``, None for the
            bare encoder (``AutoModel``), which fine-tuning gives a new head.
        initializer_range: std of the weights; larger than the default 0.02 so that logits differ
            visibly between inputs.
        hidden_size, num_hidden_layers: width and depth (4 heads, FFN 2 x width); :data:`SIZES`
            by default.

    Returns:
        ``folder`` as a Path.
    """
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
    folder = Path(folder)
    tokenizer = tiny_tokenizer(architecture)
    torch.manual_seed(seed)
    sizes = {**SIZES, "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
             "intermediate_size": 2 * hidden_size}
    config = tiny_config(architecture, tokenizer, label_names, initializer_range, sizes)
    model_class = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
                   None: AutoModel}[head]
    model_class.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
