"""AdamW with the released parameter groups, and the per-iteration warmup + half-cosine schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from infmae.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on trainable tensors with 2+ dims whose names do not end in ``.bias`` (the mask
    token is decayed); none on biases and LayerNorm weights. Frozen tensors are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


APEX_BUILD = (
    "git clone https://github.com/NVIDIA/apex && cd apex && pip install -v --disable-pip-version-check "
    "--no-cache-dir --no-build-isolation --config-settings '--build-option=--cpp_ext' "
    "--config-settings '--build-option=--cuda_ext' ."
)
"""NVIDIA's Apex is built from source; the PyPI package named `apex` is not NVIDIA's: never install it."""


def _apex_optimizer(config: TrainConfig, groups: list[dict], lr: float, device: torch.device) -> torch.optim.Optimizer:
    name = {"apex_adam": "FusedAdam", "apex_lamb": "FusedLAMB"}[config.optimizer]
    if device.type != "cuda":
        raise ValueError(
            f"optimizer: expected a CUDA device for train.optimizer={config.optimizer} (apex {name}), "
            f"got {device}; use train.optimizer=adamw on the CPU"
        )
    try:
        from apex import optimizers as apex_optimizers
    except ImportError:
        raise ValueError(
            f"optimizer: expected NVIDIA Apex for train.optimizer={config.optimizer}, got no importable "
            f"`apex`; build it with: {APEX_BUILD}  (or use train.optimizer=adamw)"
        ) from None
    cls = getattr(apex_optimizers, name)
    kwargs = dict(lr=lr, betas=config.betas)
    if name == "FusedAdam":
        kwargs["adam_w_mode"] = True  # decoupled weight decay, as torch's AdamW
    return cls(groups, **kwargs)


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """torch's AdamW: the fused kernel on CUDA (one launch for all tensors), foreach on the CPU; or
    Apex FusedAdam / FusedLAMB (``train.optimizer``) where Apex is built."""
    if config.optimizer != "adamw":
        return _apex_optimizer(config, parameter_groups(model, config.weight_decay), lr, device)
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=lr,
        betas=config.betas,
        fused=fused,
        foreach=None if fused else True,
    )


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """lr at optimizer step ``step`` (0-based): linear warmup to ``peak_lr`` over ``warmup_steps``, then a
    half-cosine down to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
