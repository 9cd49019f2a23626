"""Shared set-up of the engine tests: the demo preset's model sizes, its images, a step (the op-count
benchmark, bench/bench_op_count.py, builds the same demo model and images on its own: bench/ imports no
test code)."""

import torch

from infmae.config import preset
from infmae.model.infmae import InfMAE


def demo_model(encoder: str = "dense", seed: int = 0) -> InfMAE:
    """The demo preset's model (96 px, widths 32/48/96), fp32 reference kernels, fixed initial weights."""
    torch.manual_seed(seed)
    config = preset("demo").model
    config.encoder, config.kernels = encoder, "reference"
    return InfMAE(config)


def images(batch: int, seed: int, size: int = 96) -> torch.Tensor:
    """[B,3,size,size] N(0,1) images (a gray image repeated, as the loader gives them)."""
    gray = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return gray.expand(-1, 3, -1, -1).contiguous()


def step_grads(model: InfMAE, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward: -> (loss, {name: grad})."""
    model.zero_grad(set_to_none=True)
    out = model(imgs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads
