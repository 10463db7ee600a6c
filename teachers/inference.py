"""Teacher inference under DeepSpeed with length-sorted dynamic batching.

Rows are tokenized without padding, sorted by length, and cut into batches of at most
``max_batch_size`` rows and ``max_batch_tokens`` padded tokens, so short sentences are not
padded to the longest one in the set; outputs are returned in input order. Besides logits,
the teacher can emit hidden states and attention maps of selected layers (see
:class:`teachers.signals.SignalsConfig`), cut to each row's real tokens. When only logits are
emitted, a BERT classifier runs its last layer for the [CLS] position alone
(:class:`ClsOnlyBertClassifier`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.errors import ConfigError
from core.precision import Precision
from core.hf_checkpoint import load_tokenizer
from teachers.checkpoint import CLASSIFIERS, encode, weight_sizes
from teachers.distributed import init_single_process
from teachers.signals import SignalsConfig, check_signals
from teachers.token_alignment import encode_words, words_logits
from teachers.zero_inference import load_partitioned, zero_inference_config

if TYPE_CHECKING:  # transformers' modeling modules load when a teacher does, not with this module
    from transformers.modeling_outputs import SequenceClassifierOutput

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


def inference_config(precision: Precision, tensor_parallel: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """``deepspeed.init_inference`` config: dtype, tensor-parallel degree, and kernel injection
    for fp16/bf16 on CUDA; ``overrides`` (a DeepSpeed JSON's keys) win."""
    return {"dtype": precision.dtype, "tensor_parallel": {"tp_size": tensor_parallel},
            "replace_with_kernel_inject": precision.device == "cuda" and precision.name != "fp32", **overrides}


def check_tensor_parallel(tp_size: int, device: str) -> None:
    """Fail before DeepSpeed builds its engine when it cannot form a tensor-parallel group of ``tp_size``.

    DeepSpeed's tensor parallelism shards every layer over ``tp_size`` processes, one per GPU,
    that share a torch.distributed group (``deepspeed.init_inference`` calls
    ``dist.new_group(range(tp_size))``). A label actor is one process with a group of one, so
    ``tp_size > 1`` only works where a launcher started that many ranks.

    Args:
        tp_size: ``label.tensor_parallel`` (or a DeepSpeed JSON's ``tensor_parallel.tp_size``).
        device: "cpu" or "cuda".

    Raises:
        ConfigError: ``tp_size > 1`` on a CPU, with fewer visible GPUs, or in a smaller process group.
    """
    if tp_size == 1:
        return
    if device != "cuda":
        raise ConfigError(f"label.tensor_parallel: {tp_size} needs CUDA GPUs (one per rank); on a CPU set it "
                          "to 1 and scale with label.num_actors")
    if torch.cuda.device_count() < tp_size:
        raise ConfigError(f"label.tensor_parallel: {tp_size} needs {tp_size} GPUs per actor; "
                          f"{torch.cuda.device_count()} visible")
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if world < tp_size:
        raise ConfigError(f"label.tensor_parallel: {tp_size} needs {tp_size} processes in one torch.distributed "
                          f"group (e.g. under the deepspeed launcher); this process's group has {world}")


def load_model(checkpoint: Path, task: str, eager_attention: bool, zero: dict[str, Any] | None) -> torch.nn.Module:
    """The teacher classifier in eval mode: ``from_pretrained`` (safetensors only), or with a ZeRO
    stage-3 config built partitioned and filled a tensor at a time (:func:`teachers.zero_inference.load_partitioned`).

    Args:
        checkpoint: Hugging Face checkpoint folder.
        task: "sequence" or "token" (see :data:`teachers.checkpoint.CLASSIFIERS`).
        eager_attention: load the eager attention kernel (fused SDPA kernels never materialise
            attention maps).
        zero: the ZeRO-Inference config (:func:`teachers.zero_inference.zero_inference_config`), or None.
    """
    attention = {"attn_implementation": "eager"} if eager_attention else {}
    if zero is not None:
        return load_partitioned(checkpoint, CLASSIFIERS[task], zero, attention).eval()
    return CLASSIFIERS[task].from_pretrained(str(checkpoint), use_safetensors=True, **attention).eval()


class ClsOnlyBertClassifier(torch.nn.Module):
    """A BERT sequence classifier's logits with its last encoder layer run for the [CLS] row only.

    The head reads only the [CLS] state of the last layer (``BertPooler`` takes position 0), so
    in that layer only the [CLS] query needs attention, the attention output projection, the
    feed-forward block and the LayerNorms; keys and values still come from every token. The
    last layer is run as ``transformers``' ``BertCrossAttention`` (decoder cross-attention, here
    with the [CLS] state as the query and the layer's input as keys/values) sharing the layer's
    query/key/value modules, then the layer's ``BertSelfOutput``, ``BertIntermediate`` and
    ``BertOutput``, the pooler and the classifier. The embeddings and the other layers are the
    model's own modules; masks are built as ``BertModel.forward`` builds them. Logits equal the
    full forward's up to float rounding. The saving is the last layer's Q, output projection and
    feed-forward for every other token: about 10 / (12 L) of the matmul FLOPs (14% for MiniLM-L6).

    Args:
        model: a ``BertForSequenceClassification`` (not a subclass) in eval mode, encoder only.

    Raises:
        ValueError: the model is another class, in training mode, or a decoder.
    """

    def __init__(self, model: torch.nn.Module):
        from transformers.models.bert.modeling_bert import BertCrossAttention

        super().__init__()
        if not self.supports(model):
            raise ValueError(f"ClsOnlyBertClassifier needs a BertForSequenceClassification encoder in eval mode; "
                             f"got {type(model).__name__} (training={model.training}, "
                             f"is_decoder={model.config.is_decoder})")
        self.model = model
        last = model.bert.encoder.layer[-1]
        self.last_attention = BertCrossAttention(model.config, layer_idx=len(model.bert.encoder.layer) - 1).eval()
        for name in ("query", "key", "value"):  # share, not copy, the last layer's projections
            setattr(self.last_attention, name, getattr(last.attention.self, name))

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Whether ``model`` is a ``BertForSequenceClassification`` encoder in eval mode."""
        from transformers import BertForSequenceClassification

        return type(model) is BertForSequenceClassification and not model.training and not model.config.is_decoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> SequenceClassifierOutput:
        """Logits of a padded batch, as ``BertForSequenceClassification.forward`` in eval mode.

        Args:
            input_ids: int64 [B, T].
            attention_mask: int64 [B, T], 1 on real tokens.
            token_type_ids: int64 [B, T] segment ids, or None for all 0.
            output_hidden_states, output_attentions: must be False; they are taken so that
                this module is called like the model.

        Returns:
            ``SequenceClassifierOutput`` with ``logits`` [B, C] in the model's dtype, nothing else.

        Raises:
            ValueError: hidden states or attention maps are asked for.
        """
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import SequenceClassifierOutput

        if output_hidden_states or output_attentions:
            raise ValueError("ClsOnlyBertClassifier computes no per-token states; use the model's own forward")
        bert, config = self.model.bert, self.model.config
        states = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # [B, T, D]
        mask = create_bidirectional_mask(config=config, inputs_embeds=states, attention_mask=attention_mask)
        *layers, last = bert.encoder.layer
        for layer in layers:
            states = layer(states, mask)  # [B, T, D]
        cls = states[:, :1]  # [B, 1, D]
        # the key mask for one query row, as BertModel builds encoder_attention_mask
        cls_mask = create_bidirectional_mask(config=config, inputs_embeds=cls, attention_mask=attention_mask,
                                             encoder_hidden_states=states)
        attended, _ = self.last_attention(cls, encoder_hidden_states=states, attention_mask=cls_mask)  # [B, 1, D]
        attended = last.attention.output(attended, cls)  # [B, 1, D]
        cls = last.output(last.intermediate(attended), attended)  # [B, 1, D]
        pooled = bert.pooler(cls)  # [B, D]
        return SequenceClassifierOutput(logits=self.model.classifier(self.model.dropout(pooled)))  # [B, C]


class TeacherInference:
    """A fine-tuned sequence (or token) classifier run by DeepSpeed, emitting the configured signals.

    Args:
        checkpoint: Hugging Face checkpoint folder of a sequence classifier, or of a token
            classifier with ``task="token"`` (then use :meth:`word_logits`).
        precision: dtype and device; on CUDA, kernel injection is used for fp16/bf16.
        max_length: tokens per row; longer rows are truncated.
        max_batch_size: see :func:`length_sorted_batches`.
        max_batch_tokens: see :func:`length_sorted_batches`.
        signals: what to emit besides logits.
        engine: "inference" (``deepspeed.init_inference``) or "zero" (ZeRO-Inference: stage 3
            with parameters offloaded, for teachers larger than device memory).
        offload: "cpu" or "nvme", with ``engine = "zero"``.
        nvme_path: folder for ``offload = "nvme"``.
        deepspeed_config: JSON file whose keys override the generated engine config.
        tensor_parallel: DeepSpeed tensor-parallel degree; see :func:`check_tensor_parallel`.
        task: "sequence" or "token" (see :data:`teachers.checkpoint.CLASSIFIERS`).

    With ``engine = "inference"`` and logits only, a BERT classifier without injected kernels
    runs through :class:`ClsOnlyBertClassifier` over the engine's module (see
    :func:`cls_only_applies`); ZeRO-Inference keeps the full forward, as its stage-3 hooks gather
    parameters around the model's own forward and the [CLS]-only path is not checked under them.

    Raises:
        ConfigError: the signals name layers or heads the teacher does not have, or the
            tensor-parallel degree cannot be formed here.
    """

    def __init__(self, checkpoint: Path, precision: Precision, max_length: int,
                 max_batch_size: int = 64, max_batch_tokens: int = 512, signals: SignalsConfig = SignalsConfig(),
                 engine: str = "inference", offload: str = "cpu", nvme_path: Path | None = None,
                 deepspeed_config: Path | None = None, tensor_parallel: int = 1, task: str = "sequence"):
        import deepspeed

        init_single_process()
        self.tokenizer = load_tokenizer(checkpoint)
        overrides = json.loads(Path(deepspeed_config).read_text()) if deepspeed_config else {}
        zero = (zero_inference_config(precision, offload, nvme_path, overrides, max(weight_sizes(checkpoint)))
                if engine == "zero" else None)
        model = load_model(checkpoint, task, bool(signals.attention_layers), zero)
        check_signals(signals, model.config)
        self.signals = signals
        self.storage_dtype = np.float16 if signals.dtype == "fp16" else np.float32
        self.num_labels = model.config.num_labels
        if zero is not None:
            wrapped, *_ = deepspeed.initialize(model=model, config=zero)
            self.forward = wrapped.module.eval()
        else:
            config = inference_config(precision, tensor_parallel, overrides)
            check_tensor_parallel(config["tensor_parallel"]["tp_size"], precision.device)
            self.forward = deepspeed.init_inference(model, config=config)
            if cls_only_applies(self.forward.module, signals, config["replace_with_kernel_inject"]):
                self.forward = ClsOnlyBertClassifier(self.forward.module)
        log.info("teacher: %s on %s, engine %s, %s", checkpoint, precision.device, engine,
                 "last layer for [CLS] only" if isinstance(self.forward, ClsOnlyBertClassifier) else "full forward")
        self.device = torch.device(precision.device)
        self.max_length = max_length
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens

    def logits(self, texts: list[str], text_pairs: list[str] | None = None) -> np.ndarray:
        """Teacher logits for each text (or pair): float32 [N, C], row i for texts[i]."""
        return self.outputs(texts, text_pairs)["logits"]

    @torch.inference_mode()
    def outputs(self, texts: list[str], text_pairs: list[str] | None = None) -> dict[str, np.ndarray | list[np.ndarray]]:
        """Every configured signal for each text, in input order.

        Args:
            texts: N input sentences.
            text_pairs: N second sentences of a pair task, encoded with ``texts`` as one
                sequence (see :func:`teachers.checkpoint.encode`), else None.

        Returns:
            ``logits``: float32 [N, C]; with per-token signals also ``length``: int32 [N] real
            tokens T_i, ``hidden_{l}``: N arrays [T_i, D] and ``attention_{l}``: N arrays
            [H, T_i, T_i] (H = the kept heads), in the storage dtype (fp16 by default).
        """
        signals = self.signals
        # input_ids and, for BERT, token_type_ids (segment 1 = text_pair); pad rebuilds the mask
        columns = {k: v for k, v in encode(self.tokenizer, texts, text_pairs, self.max_length).items()
                   if k != "attention_mask"}
        encoded = columns["input_ids"]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        out: dict[str, np.ndarray | list] = {"logits": np.empty((len(texts), self.num_labels), dtype=np.float32)}
        if signals.needs_lengths:
            out["length"] = lengths.astype(np.int32)
        for layer in signals.hidden_layers:
            out[f"hidden_{layer}"] = [None] * len(texts)
        for layer in signals.attention_layers:
            out[f"attention_{layer}"] = [None] * len(texts)
        for rows in length_sorted_batches(lengths, self.max_batch_size, self.max_batch_tokens):
            batch = self.tokenizer.pad({k: [v[i] for i in rows] for k, v in columns.items()}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            result = self.forward(**batch, output_hidden_states=bool(signals.hidden_layers),
                                 output_attentions=bool(signals.attention_layers))
            out["logits"][rows] = result.logits.float().cpu().numpy()  # [b, C]
            for layer in signals.hidden_layers:
                states = result.hidden_states[layer].to(torch.float32).cpu().numpy()  # [b, T, D]
                for j, row in enumerate(rows):
                    out[f"hidden_{layer}"][row] = states[j, :lengths[row]].astype(self.storage_dtype)  # [T_i, D]
            for layer in signals.attention_layers:
                maps = result.attentions[layer - 1]  # [b, H, T, T]
                if signals.attention_heads is not None:
                    maps = maps[:, signals.attention_heads]  # [b, H_kept, T, T]
                maps = maps.to(torch.float32).cpu().numpy()
                for j, row in enumerate(rows):
                    t = lengths[row]
                    out[f"attention_{layer}"][row] = maps[j, :, :t, :t].astype(self.storage_dtype)  # [H, T_i, T_i]
        return out


    @torch.inference_mode()
    def word_logits(self, sentences: list[list[str]]) -> dict[str, list[np.ndarray]]:
        """Word-level logits of a token classifier, each word's first sub-token's (Izsak et al. 2019).

        Sentences are encoded with the words kept (:func:`teachers.token_alignment.encode_words`)
        and batched by length like :meth:`outputs`.

        Args:
            sentences: N sentences, each a list of W_i words.

        Returns:
            ``logits``: N float32 arrays [W_i, C], zero rows for words without a sub-token;
            ``word_mask``: N bool arrays [W_i], False for words cut off by ``max_length`` (or
            dropped by the tokenizer), which have no teacher signal.
        """
        encoded = encode_words(self.tokenizer, sentences, self.max_length, pad=False)
        columns = {k: v for k, v in encoded.items() if k != "attention_mask"}  # pad rebuilds the mask
        lengths = np.fromiter((len(ids) for ids in columns["input_ids"]), dtype=np.int64, count=len(sentences))
        out: dict[str, list] = {"logits": [None] * len(sentences), "word_mask": [None] * len(sentences)}
        for rows in length_sorted_batches(lengths, self.max_batch_size, self.max_batch_tokens):
            batch = self.tokenizer.pad({k: [v[i] for i in rows] for k, v in columns.items()}, return_tensors="pt")
            logits = self.forward(**{k: v.to(self.device) for k, v in batch.items()}).logits.float().cpu()  # [b, T, C]
            for j, row in enumerate(rows):
                words = words_logits(logits[j, :lengths[row]], encoded.word_ids(row), len(sentences[row]))
                out["logits"][row] = words.logits.numpy()  # [W_i, C]
                out["word_mask"][row] = words.has_signal.numpy()  # [W_i]
        return out


def cls_only_applies(model: torch.nn.Module, signals: SignalsConfig, kernel_inject: bool) -> bool:
    """Whether :class:`ClsOnlyBertClassifier` can stand in for ``model``: logits only (any
    per-token signal keeps the full forward), a BERT sequence classifier encoder in eval mode,
    and no DeepSpeed kernel injection (its fused layers replace the modules it reuses)."""
    return not signals.needs_lengths and not kernel_inject and ClsOnlyBertClassifier.supports(model)
