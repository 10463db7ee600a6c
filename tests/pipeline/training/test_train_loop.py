"""Both strategies optimise alike: the same LR schedule (linear warmup and decay), the same
gradient clipping, hence the same weights after the same steps."""

import copy
import socket

import pytest
import torch
from torch import nn

from core.precision import GRADIENT_CLIP_NORM, select_precision
from pipeline.training.collate import Batch
from pipeline.config.sections import TrainConfig
from pipeline.training.loop import optimization, optimizer_step
from students.distillation import LossTerms

STEPS = 8


class Quadratic(nn.Module):
    """A tiny module with the call signature of DistillationStep: loss = scale * ||W x - y||^2."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, features, teacher, labels, mask, progress):
        error = self.linear(features["x"]) - teacher["y"]
        total = features["scale"] * error.pow(2).sum()
        return LossTerms(total, {"mse": total.detach()}, {"mse": 1.0})


def batches():
    generator = torch.Generator().manual_seed(0)
    for step in range(STEPS):  # gradient norms from ~0.02 to ~1000: clipping matters on some steps only
        yield Batch({"x": torch.randn(4, 3, generator=generator), "scale": 10.0 ** (step % 5 - 2)},
                    {"y": torch.randn(4, 2, generator=generator)}, torch.zeros(4, dtype=torch.int64))


@pytest.fixture
def process_group(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")  # what a launcher (here Ray Train) sets for DeepSpeed
    if torch.distributed.is_initialized():  # a stage run earlier in this process left its group of one
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def train(strategy: str, module: nn.Module) -> tuple[list[float], list[float]]:
    cfg = TrainConfig(strategy=strategy, zero_stage=1, lr=0.05, warmup_ratio=0.25, batch_size=4, precision="fp32")
    precision = select_precision("fp32", "test")
    model, optimisation = optimization(module, cfg, precision, total_steps=STEPS)
    rates, norms = [], []
    for batch in batches():
        rates.append(optimisation.optimizer.param_groups[0]["lr"])  # the rate this step uses
        optimizer_step(model, batch, optimisation, precision, progress=0.0)
        if strategy == "deepspeed":
            norms.append(float(model.get_global_grad_norm()))  # before clipping
    return rates, norms


def test_ddp_and_deepspeed_share_the_schedule_clipping_and_so_the_weights(process_group):
    pytest.importorskip("deepspeed")
    torch.manual_seed(0)
    plain = Quadratic()
    engine_module = copy.deepcopy(plain)

    ddp_rates, _ = train("ddp", plain)
    ds_rates, ds_norms = train("deepspeed", engine_module)

    peak = 0.05  # 2 warmup steps, then linear decay to 0 at step 8
    expected = [0.0, peak / 2, peak, peak * 5 / 6, peak * 4 / 6, peak * 3 / 6, peak * 2 / 6, peak / 6]
    assert ddp_rates == pytest.approx(expected) and ds_rates == pytest.approx(expected)
    assert max(ds_norms) > 10 * GRADIENT_CLIP_NORM and min(n for n in ds_norms if n > 0) < GRADIENT_CLIP_NORM
    for a, b in zip(plain.parameters(), engine_module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ddp_path_clips_the_global_gradient_norm():
    module = Quadratic()
    cfg = TrainConfig(lr=0.05, batch_size=4, precision="fp32")
    precision = select_precision("fp32", "test")
    model, optimisation = optimization(module, cfg, precision, total_steps=STEPS)
    batch = Batch({"x": torch.ones(4, 3), "scale": 1000.0}, {"y": torch.zeros(4, 2)}, torch.zeros(4))
    optimizer_step(model, batch, optimisation, precision, progress=0.0)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert norm.item() == pytest.approx(GRADIENT_CLIP_NORM, rel=1e-5)
