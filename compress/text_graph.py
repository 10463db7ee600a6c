"""Text-in ONNX graphs: the model's tokenizer as onnxruntime-extensions operators in front of its
exported id graph, so an app feeds a string and gets logits (on-device tokenization).

    export_text_graph(model, folder, "model.onnx", "model_text.onnx")   # -> settings for meta.json
    session("model_text.onnx", custom_ops=True).run(None, {"text": np.array(["a fine film"])})   # logits [1, C]

The tokenizer graph is made by ``onnxruntime_extensions.gen_processing_models`` (its
``BertTokenizer`` and ``SentencepieceTokenizer`` custom operators, domain ``ai.onnx.contrib``),
its 1-D outputs are given a batch axis of 1 and joined to the id graph's inputs with
``onnx.compose.merge_models``. Which tokenizer a model reads (:data:`TOKENIZERS`):

- ``wordpiece``: the teacher and the transformer student (their Hugging Face tokenizer), and the
  BiLSTM over the teacher's vocabulary; ``input_ids``, ``attention_mask`` and, where the model reads
  them, ``token_type_ids``, truncated to the model's max length ([CLS] and [SEP] included), as
  the Hugging Face tokenizer gives them. The operator's settings (lower-casing, accent stripping,
  Chinese characters, special and unknown tokens, the sub-word prefix) are read from the
  tokenizer's ``tokenizer.json`` (``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece``).
  A vocabulary-pruned model (:mod:`compress.vocabulary`) still takes the original ids: its remap
  is inside the id graph, so the tokenizer is the unpruned one.
- ``sentencepiece``: the BiLSTM over its own SentencePiece model (no BOS/EOS, truncated to
  ``max_length``, a mask of ones).

The input is ``text``, a string tensor [1]: the ``BertTokenizer`` operator reads one sentence
(two strings would be a sentence pair), so strings are not batched. Families whose featurizer is
no tokenizer of one string (the cnn_lstm tagger's character ids, word-level token heads and
token classifiers, multitask heads, sentence-pair models) get no text graph:
:func:`unsupported_reason` says why in one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper
from torch import nn

from core.artifacts import atomic_path
from core.errors import ConfigError
from core.hf_checkpoint import load_tokenizer, max_tokens
from compress.ort_format import session
from compress.traceable import TEACHER, family_of, hf_config, input_names_of

TEXT_INPUT = "text"
"""The text graph's input: a string tensor [1]."""
TOKENIZER_PREFIX = "tokenizer/"
"""Prefix of the tokenizer's node and value names inside the text graph."""
CONTRIB_DOMAIN = "ai.onnx.contrib"


@dataclass(frozen=True)
class TokenizerSource:
    """What a model's featurizer tokenizes with.

    Attributes:
        kind: a key of :data:`TOKENIZERS`.
        tokenizer: a Hugging Face tokenizer (wordpiece) or a serialised SentencePiece model (bytes).
        max_length: the most ids of a row, special tokens included.
        input_names: the id graph's inputs, in order.
    """

    kind: str
    tokenizer: object
    max_length: int
    input_names: list[str]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model``'s featurizer cannot be a tokenizer graph, or None when it can."""
    family = family_of(model)
    if family == "cnn_lstm":
        return "the cnn_lstm tagger reads word ids and character ids of words, no tokenizer of one string"
    if family == "multitask_lstm":
        return "multitask_lstm exports one graph per head, some of them word-level (word_starts)"
    if family == TEACHER and model.__class__.__name__.endswith("ForTokenClassification"):
        return "a token classifier tags words (its rows are word lists), no single string"
    if family == "bilstm" and model.sentence_pairs:
        return "a sentence-pair BiLSTM encodes two strings apart; the text graph takes one"
    return None


def tokenizer_source(model: nn.Module, folder: Path, max_length: int | None = None) -> TokenizerSource:
    """The tokenizer, max length and inputs of a supported model (see :func:`unsupported_reason`).

    Args:
        model: a teacher, transformer or single-sentence bilstm. folder: its model folder (a
            Hugging Face folder's tokenizer is read from it).
        max_length: the tokens a Hugging Face folder (a teacher, a pruned model) is truncated to:
            the run's ``teacher.max_length``, as the evaluate and benchmark stages featurize it;
            None: its tokenizer's ``model_max_length``. Students truncate to their own ``max_length``.

    Raises:
        ConfigError: an unsupported model (the reason named).
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise ConfigError(f"no text graph for family {family_of(model)}: {reason}")
    family, names = family_of(model), input_names_of(model)
    if family == TEACHER:
        tokenizer = load_tokenizer(folder)
        limit = min(max_length or tokenizer.model_max_length, max_tokens(hf_config(model)))
        return TokenizerSource("wordpiece", tokenizer, limit, names)
    if family == "transformer":
        return TokenizerSource("wordpiece", model.tokenizer, model.cfg.max_length, names)
    vocab = model.vocab
    if getattr(vocab, "kind", None) == "sentencepiece":
        return TokenizerSource("sentencepiece", vocab.model_proto, model.cfg.max_length, names)
    return TokenizerSource("wordpiece", vocab.tokenizer, model.cfg.max_length, names)


def wordpiece_settings(tokenizer) -> dict:
    """``BertTokenizer`` operator attributes equal to a fast WordPiece tokenizer's pipeline.

    Reads the backend's ``tokenizer.json``: a ``BertNormalizer`` (``strip_accents: null`` means
    "when lower-casing", as in Hugging Face), a ``BertPreTokenizer``, a ``WordPiece`` model and a
    ``[CLS] A [SEP]`` template (or ``BertProcessing`` / ``RobertaProcessing``).

    Raises:
        ConfigError: another pipeline (a BPE or Unigram model, other normalizers), or ids that are
            not 0..V-1.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    normalizer, model, post = spec.get("normalizer") or {}, spec["model"], spec.get("post_processor") or {}
    pre = (spec.get("pre_tokenizer") or {}).get("type")
    if normalizer.get("type") != "BertNormalizer" or pre != "BertPreTokenizer" or model.get("type") != "WordPiece":
        raise ConfigError(f"tokenizer {type(tokenizer).__name__}: normalizer {normalizer.get('type')}, pre-tokenizer "
                          f"{pre}, model {model.get('type')}; the BertTokenizer operator needs BertNormalizer, "
                          "BertPreTokenizer and WordPiece")
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise ConfigError(f"tokenizer {type(tokenizer).__name__}: its ids are not 0..{len(tokens) - 1}; "
                          "the BertTokenizer operator numbers its vocabulary lines")
    lowercase = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    cls_token, sep_token = template_specials(post, tokenizer)
    return {"vocab": "\n".join(tokens), "do_lower_case": int(lowercase),
            "strip_accents": int(lowercase if strip is None else strip),
            "tokenize_chinese_chars": int(normalizer.get("handle_chinese_chars", True)),
            "unk_token": model["unk_token"], "suffix_indicator": model.get("continuing_subword_prefix", "##"),
            "cls_token": cls_token, "sep_token": sep_token, "pad_token": tokenizer.pad_token,
            "mask_token": tokenizer.mask_token or tokenizer.unk_token}


def template_specials(post: dict, tokenizer) -> tuple[str, str]:
    """The tokens a single sentence is wrapped in (``[CLS] A [SEP]``), from the post-processor.

    Raises:
        ConfigError: a template other than one special token, the sentence, one special token.
    """
    if post.get("type") in ("BertProcessing", "RobertaProcessing"):
        return post["cls"][0], post["sep"][0]
    single = post.get("single", [])
    if post.get("type") == "TemplateProcessing" and len(single) == 3 and "Sequence" in single[1]:
        return single[0]["SpecialToken"]["id"], single[2]["SpecialToken"]["id"]
    raise ConfigError(f"tokenizer {type(tokenizer).__name__}: post-processor {post.get('type')} does not wrap a "
                      "sentence as <cls> A <sep>, the BertTokenizer operator's template")


def wordpiece_graph(source: TokenizerSource) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The ``BertTokenizer`` graph of a WordPiece tokenizer: text [1] -> 1-D int64 outputs.

    Returns:
        The model (``gen_processing_models``) and {model input: tokenizer output of it}.
    """
    from onnxruntime_extensions import gen_processing_models

    settings = {**wordpiece_settings(source.tokenizer), "max_length": source.max_length}
    tokenizer, _ = gen_processing_models("BertTokenizer", pre_kwargs=settings)
    return tokenizer, {name: name for name in source.input_names}


def sentencepiece_graph(source: TokenizerSource) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The ``SentencepieceTokenizer`` graph of a SentencePiece model: text [1] -> ids, mask (1-D int64).

    No sampling (nbest 0, alpha 0), no BOS/EOS, ids cut to ``max_length``, a mask of ones: as
    :meth:`students.vocab.SentencePieceVocabulary.encode` on one row.
    """
    from onnxruntime_extensions import SentencepieceTokenizer, gen_processing_models

    tokenizer, _ = gen_processing_models("SentencepieceTokenizer", pre_kwargs={"model": source.tokenizer})
    graph, defaults = tokenizer.graph, SentencepieceTokenizer.input_default_values()
    kinds = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    graph.initializer.extend(numpy_helper.from_array(np.array(value, helper.tensor_dtype_to_np_dtype(kinds[name])),
                                                     name) for name, value in defaults.items())
    inputs = [i for i in graph.input if i.name not in defaults]
    graph.ClearField("input")
    graph.input.extend(inputs)
    tokens = graph.output[0].name
    graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "slice_start"),
                              numpy_helper.from_array(np.array([source.max_length], np.int64), "slice_end")])
    graph.node.extend([
        helper.make_node("Cast", [tokens], ["ids_all"], to=TensorProto.INT64),
        helper.make_node("Slice", ["ids_all", "slice_start", "slice_end"], ["ids"]),
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("ConstantOfShape", ["ids_shape"], ["mask"],
                         value=numpy_helper.from_array(np.array([1], np.int64)))])
    graph.ClearField("output")
    graph.output.extend([helper.make_tensor_value_info(name, TensorProto.INT64, [None]) for name in ("ids", "mask")])
    return tokenizer, {"input_ids": "ids", "attention_mask": "mask"}


TOKENIZERS: dict[str, Callable[[TokenizerSource], tuple[onnx.ModelProto, dict[str, str]]]] = {
    "wordpiece": wordpiece_graph, "sentencepiece": sentencepiece_graph}
"""Tokenizer kind -> builder of its graph: text [1] -> 1-D int64 outputs, and which output feeds
which model input. A new kind registers here and in :func:`tokenizer_source`."""


def tokenizer_model(source: TokenizerSource, id_graph: onnx.ModelProto) -> onnx.ModelProto:
    """The tokenizer as a graph of ``text`` [1] to the id graph's inputs, int64 [1, T].

    Its names carry :data:`TOKENIZER_PREFIX`; its IR version and opsets are the id graph's, plus
    ``ai.onnx.contrib`` 1, so that the two merge.
    """
    tokenizer, feeds = TOKENIZERS[source.kind](source)
    tokenizer = compose.add_prefix(tokenizer, TOKENIZER_PREFIX)
    graph = tokenizer.graph
    string_input, graph.input[0].name = graph.input[0].name, TEXT_INPUT
    for node in graph.node:
        node.input[:] = [TEXT_INPUT if name == string_input else name for name in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), TOKENIZER_PREFIX + "batch_axis"))
    graph.node.extend(helper.make_node("Unsqueeze", [TOKENIZER_PREFIX + output, TOKENIZER_PREFIX + "batch_axis"],
                                       [name]) for name, output in feeds.items())
    graph.ClearField("output")
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.INT64, [1, "sequence"]) for name in feeds)
    graph.input[0].type.tensor_type.shape.dim[0].Clear()
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    opsets = {o.domain or "ai.onnx": o.version for o in id_graph.opset_import}
    opsets.setdefault(CONTRIB_DOMAIN, 1)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = id_graph.ir_version
    return model


def text_graph(source: TokenizerSource, id_graph: onnx.ModelProto) -> onnx.ModelProto:
    """The tokenizer joined to the id graph: ``text`` string [1] -> the id graph's outputs (logits [1, C]).

    Raises:
        ConfigError: the tokenizer feeds other inputs than the id graph takes (another model's graph).
    """
    tokenizer = tokenizer_model(source, id_graph)
    fed, taken = [o.name for o in tokenizer.graph.output], [i.name for i in id_graph.graph.input]
    if fed != taken:
        raise ConfigError(f"text graph: the tokenizer gives {fed}, the id graph takes {taken}; export the id graph "
                          "from the same model")
    return compose.merge_models(tokenizer, id_graph, io_map=[(name, name) for name in fed])


def export_text_graph(model: nn.Module, folder: Path, id_path: str | Path, out_path: str | Path,
                      max_length: int | None = None) -> dict:
    """Write the text graph of a model's exported id graph and check it with ONNX's checker.

    Args:
        model: the model the id graph came from (a supported family, :func:`unsupported_reason`).
        folder: its model folder. id_path: the id graph (``model.onnx``). out_path: the text
            graph (``model_text.onnx``), written atomically.
        max_length: a Hugging Face folder's truncation (see :func:`tokenizer_source`).

    Returns:
        ``{"file", "input", "tokenizer", "max_length", "custom_domain", "export_s", "size_mb"}``.

    Raises:
        ConfigError: an unsupported model or tokenizer, or onnxruntime-extensions not installed.
        onnx.checker.ValidationError: the written graph is not valid ONNX.
    """
    require_extensions()
    source, start, out_path = tokenizer_source(model, folder, max_length), time.perf_counter(), Path(out_path)
    merged = text_graph(source, onnx.load(str(id_path)))
    with atomic_path(out_path) as tmp:
        onnx.checker.check_model(merged, full_check=False)
        onnx.save(merged, str(tmp))
    return {"file": out_path.name, "input": TEXT_INPUT, "tokenizer": source.kind, "max_length": source.max_length,
            "custom_domain": CONTRIB_DOMAIN, "export_s": round(time.perf_counter() - start, 2),
            "size_mb": round(out_path.stat().st_size / 2**20, 3)}


def require_extensions() -> None:
    """ConfigError with the install command when onnxruntime-extensions is missing."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime_extensions") is None:
        raise ConfigError("text graphs need onnxruntime-extensions; pip install onnxruntime-extensions "
                          "(or set export.text_graph: false)")


def check_text_graph(model: nn.Module, folder: Path, featurize, id_path: str | Path, text_path: str | Path,
                     texts: list[str], max_length: int | None = None) -> dict:
    """Compare the text graph with the model's own featurizer and the id graph, one row at a time.

    Args:
        model, folder: as in :func:`export_text_graph`.
        featurize: ``(texts) -> int64 features`` of the model (:func:`compress.traceable.model_featurizer`).
        id_path, text_path: the id graph and its text graph.
        texts: the rows (strings).
        max_length: as given to :func:`export_text_graph`.

    Returns:
        ``{"rows", "ids_equal", "max_abs_diff"}``: the rows checked, those whose every tokenizer
        output equals the featurizer's, and the largest |logit difference| text graph - id graph.
    """
    source = tokenizer_source(model, folder, max_length)
    tokenizer = session(tokenizer_model(source, onnx.load(str(id_path))), custom_ops=True)
    id_session, text = session(id_path), session(text_path, custom_ops=True)
    equal, max_diff = 0, 0.0
    for row in texts:
        expected = {name: np.asarray(values) for name, values in featurize([row]).items()}
        got = dict(zip([o.name for o in tokenizer.get_outputs()], tokenizer.run(None, {TEXT_INPUT: np.array([row])})))
        equal += all(np.array_equal(got[name], expected[name]) for name in source.input_names)
        logits = id_session.run(None, {name: expected[name] for name in source.input_names})[0]
        from_text = text.run(None, {TEXT_INPUT: np.array([row])})[0]
        max_diff = max(max_diff, float(np.abs(from_text - logits).max()))
    return {"rows": len(texts), "ids_equal": equal, "max_abs_diff": max_diff}
