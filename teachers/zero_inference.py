"""ZeRO-Inference (Aminabadi et al. 2022, DeepSpeed's ZeRO stage 3 with parameters offloaded):
its config, building the teacher partitioned, and whether NVMe offload can run here.

The teacher is built under ``deepspeed.zero.Init``, so each module's parameters are partitioned
to the offload device (CPU memory, or files under ``nvme_path``) as soon as the module is
created, and then filled from the checkpoint one tensor at a time: the whole model never sits in
memory at once. (transformers' own ZeRO-3 path in ``from_pretrained`` first reads every weight
file into one state dict, i.e. the whole model in CPU memory, which would defeat NVMe offload.)

NVMe offload swaps parameters through DeepSpeed's ``async_io`` op, which needs libaio's headers
and library and is built just in time, once per machine, into ``~/.cache/torch_extensions``
(about 11 minutes on a loaded 2-core CPU). DeepSpeed's CPU accelerator runs it: checked on this
project's CPU machine with DeepSpeed 0.19.8 and libaio-dev, where a tiny teacher's logits under
NVMe offload match the plain engine's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig

from core.errors import ConfigError
from core.hf_checkpoint import weight_files
from core.precision import Precision
from teachers.distributed import init_single_process

log = logging.getLogger(__name__)


def zero_inference_config(precision: Precision, offload: str, nvme_path: Path | None,
                          overrides: dict[str, Any], largest_weight: int | None = None) -> dict[str, Any]:
    """ZeRO-Inference config: ZeRO stage 3 with parameters offloaded to CPU memory or NVMe.

    With NVMe, each of DeepSpeed's swap buffers (5, locked in memory) holds ``largest_weight``
    elements, the teacher's largest tensor (one parameter is swapped in per buffer), instead of
    DeepSpeed's default 10^8 (2 GB of buffers in float32, more than a BERT-large teacher), and
    gathered parameters are released after their module's forward.
    ``memory_efficient_linear`` is off: DeepSpeed's default replaces ``torch.nn.functional.linear``
    for the rest of the process when ``zero.Init`` runs (to save activations for a backward pass,
    which inference never runs), and a later ``torch.export`` of any model in that process then
    finds no ``aten.linear`` to quantize.
    ``overrides`` (a DeepSpeed JSON's keys) win; a JSON's ``zero_optimization`` section replaces the
    generated one but keeps ``memory_efficient_linear: false`` unless it sets the key itself.
    """
    offload_param = {"device": offload, "pin_memory": precision.device == "cuda"}
    zero_optimization: dict[str, Any] = {"stage": 3, "offload_param": offload_param}
    if offload == "nvme":
        offload_param["nvme_path"] = str(nvme_path)
        if largest_weight is not None:
            offload_param["buffer_size"] = largest_weight
            # release every gathered parameter after its module (DeepSpeed keeps those it will reuse
            # within 10^9 elements, i.e. a whole <1B teacher after one forward) and prefetch at most
            # one tensor's worth ahead (default 10^9 elements live)
            zero_optimization |= {"stage3_max_reuse_distance": 0, "stage3_max_live_parameters": largest_weight}
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero_optimization,
              "fp16": {"enabled": precision.name == "fp16"}, "bf16": {"enabled": precision.name == "bf16"},
              **overrides}
    config["zero_optimization"] = {"memory_efficient_linear": False, **config["zero_optimization"]}
    return config


def load_partitioned(checkpoint: Path, model_class: type, zero: dict[str, Any],
                     model_kwargs: dict[str, Any]) -> torch.nn.Module:
    """The checkpoint's model built under ``deepspeed.zero.Init`` and filled a tensor at a time.

    Each safetensors tensor is read alone and copied into its parameter inside
    ``deepspeed.zero.GatheredParameters`` (gathered, written, partitioned again: with NVMe
    offload, swapped in and out), so at most one tensor of the checkpoint is in memory, whether
    the checkpoint is one file or many. What stays resident with NVMe offload is DeepSpeed's
    floor: 5 locked swap buffers of the largest tensor (:func:`zero_inference_config`) and the
    parameters under ``stage3_param_persistence_threshold`` (10^5 elements: biases, LayerNorms).

    Args:
        checkpoint: a Hugging Face folder with safetensors weights whose names are the model's
            (as ``save_pretrained`` writes them); tensors the model lacks (e.g. a pooler the
            head does not use) are skipped.
        model_class: the transformers auto class, e.g. ``AutoModelForSequenceClassification``.
        zero: the ZeRO stage-3 config (:func:`zero_inference_config`).
        model_kwargs: passed to ``from_config`` (e.g. ``attn_implementation``).

    Returns:
        The model, its parameters partitioned (``ds_id`` set), not yet wrapped by an engine.

    Raises:
        ConfigError: a parameter of the model has no tensor in the checkpoint.
    """
    import deepspeed
    import torch._dynamo  # noqa: F401  (see below)
    import transformers.modeling_utils  # noqa: F401
    from transformers.initialization import no_init_weights

    # zero.Init patches torch.Tensor.__new__; torch._dynamo, first imported under it (transformers'
    # model classes import it), refuses that patch with a TypeError: both are imported before it
    init_single_process()  # zero.Init partitions over a process group
    # no random init: it would run on partitioned (empty) parameters, and every one is filled below
    with deepspeed.zero.Init(config_dict_or_path=zero), no_init_weights():
        model = model_class.from_config(AutoConfig.from_pretrained(checkpoint), **model_kwargs)
    targets = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    unfilled = set(dict(model.named_parameters()))
    for file in (f for f in weight_files(checkpoint) if f.suffix == ".safetensors"):
        with safe_open(str(file), "pt") as weights:
            names = list(weights.keys())
        for name in names:
            if name not in targets:
                log.info("zero: %s in %s is not a tensor of %s; skipped", name, file.name, type(model).__name__)
                continue
            # the file is mapped for one tensor at a time: pages read through a mapping count in the
            # process's RSS until it is closed, which for a one-file teacher would be all of it
            with safe_open(str(file), "pt") as weights:
                tensor = weights.get_tensor(name)
            with deepspeed.zero.GatheredParameters([targets[name]], modifier_rank=0), torch.no_grad():
                targets[name].data.copy_(tensor)
            unfilled.discard(name)
    if unfilled:
        raise ConfigError(f"{checkpoint}: no weights for {', '.join(sorted(unfilled)[:3])} (of {len(unfilled)} "
                          f"parameters); ZeRO-Inference loads a checkpoint written by save_pretrained of the "
                          f"teacher's own class, as the finetune stage writes it")
    return model


def check_nvme_offload(engine: str, offload: str) -> None:
    """Fail before any actor starts when NVMe offload cannot run on this machine (module docstring).

    Raises:
        ConfigError: ``engine: zero`` with ``offload: nvme`` where DeepSpeed's ``async_io``
            builder finds no libaio; the line says what to install, here and on a GPU node.
    """
    if engine != "zero" or offload != "nvme":
        return
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().create_op_builder("AsyncIOBuilder").is_compatible():
        raise ConfigError("label.offload: nvme needs DeepSpeed's async_io op, which needs libaio: install libaio-dev "
                          "(apt) or libaio-devel (dnf) on every labeling node, or set label.offload: cpu; a GPU node "
                          "with NVMe needs the same, label.nvme_path on its local NVMe drive, and for reads straight "
                          "into GPU memory GPUDirect Storage (DeepSpeed's gds op, aio.use_gds)")
