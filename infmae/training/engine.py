"""The engine's set-up of a model and its step: channels-last conv stages, a bf16 residual stream, per-block
``torch.compile`` with static shapes (optionally CUDA graphs), cudnn.benchmark.

The fields come from ``infmae.config.resolve_for_device`` (``train.engine``); this module only applies
them, so a run with ``train.engine=reference`` is the specification's eager model unchanged.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from infmae.config import TrainConfig

log = logging.getLogger("infmae")


def compile_options(config: TrainConfig, device_type: str) -> dict:
    """Keyword arguments of ``Module.compile`` for each block. ``dynamic=False``: the shapes of a training
    run never change after the first step, and a dynamic graph would be slower and could still be
    re-specialised (the sparse CBlock saw tile sizes 4 and 2); each shape gets its own static graph.
    ``cuda_graphs``: 'reduce-overhead' replays every compiled block as a CUDA graph (one launch instead of
    its kernels); otherwise 'max-autotune-no-cudagraphs' on CUDA (autotuned matmuls/convs) and the default
    mode on the CPU."""
    if config.cuda_graphs:
        mode = "reduce-overhead"
    elif device_type == "cuda":
        mode = "max-autotune-no-cudagraphs"
    else:
        mode = None
    return {"dynamic": False, "mode": mode}


def uses_channels_last(config: TrainConfig, module: nn.Module) -> bool:
    """Whether the conv stages run in NHWC memory: ``channels_last`` with the dense encoder (the sparse one
    runs no conv on a map: it already works on channels-last tiles)."""
    return config.channels_last and getattr(module.config, "encoder", "dense") == "dense"


def prepare_model(module: nn.Module, config: TrainConfig, device: torch.device, fsdp: bool = False) -> nn.Module:
    """Apply the memory-format and precision fields to ``module`` in place (before parallelisation and
    compile). Parameter names and values are unchanged, so checkpoints load and save as before.
    ``fsdp``: the module will be sharded by FSDP2, which refuses non-contiguous parameters (torch 2.13):
    its weights stay NCHW and only the batch is channels-last (cuDNN follows the input's layout)."""
    if uses_channels_last(config, module) and not fsdp:
        # conv weights [O,I,k,k] get NHWC strides (the same values): cuDNN then runs NHWC kernels end to end.
        # The sparse encoder runs no conv on a map (matrix products on channels-last tiles), so it gains
        # nothing; and its tile blocks compiled with the aot_eager backend (the benchmarks' CPU dry run), NHWC
        # weights and a channels-last batch fail a view at run time (torch 2.13; inductor runs them).
        module.to(memory_format=torch.channels_last)
    if config.bf16_residual and device.type == "cuda" and config.precision == "bf16":
        module.residual_dtype = torch.bfloat16
    if device.type == "cuda" and config.engine == "engine":
        torch.backends.cudnn.benchmark = True  # static shapes: pick the fastest conv algorithm once
    log.info("engine: %s", describe(config, device.type))
    return module


def to_model_input(images_BCHW: torch.Tensor, config: TrainConfig, module: nn.Module) -> torch.Tensor:
    """The batch in the model's memory format (channels-last when the conv stages run so)."""
    if uses_channels_last(config, module):
        return images_BCHW.contiguous(memory_format=torch.channels_last)
    return images_BCHW


def describe(config: TrainConfig, device_type: str) -> str:
    """One log line: what the engine applies in this run."""
    parts = [f"engine={config.engine}", f"compile={config.compile}"]
    if config.compile:
        parts.append(f"compile_mode={compile_options(config, device_type)['mode'] or 'default'}")
    parts += [f"channels_last={config.channels_last}", f"bf16_residual={config.bf16_residual}"]
    return ", ".join(parts)
