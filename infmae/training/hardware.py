"""This process's device and its CPU compute threads."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from infmae.config import usable_cores


def cpu_threads_for(cores: int, local_ranks: int, workers: int) -> int:
    """Compute threads for one training process: its share of the cores, less one per loader worker
    (each decodes on a core of its own). More threads than free cores make OpenMP's threads wait on each
    other, and a busy machine then slows training several-fold."""
    share = max(1, cores // max(1, local_ranks))
    return max(1, share - workers)


def set_cpu_threads(requested: int, workers: int) -> int:
    """``torch.set_num_threads``: ``requested`` when > 0; else the automatic choice, unless the user (or
    torchrun) set OMP_NUM_THREADS. -> the number in use."""
    if requested > 0:
        torch.set_num_threads(requested)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads_for(usable_cores(), int(os.environ.get("LOCAL_WORLD_SIZE", 1)), workers))
    return torch.get_num_threads()


def pick_device(choice: str) -> torch.device:
    """CUDA (this process's current device: torchrun's LOCAL_RANK under a process group) or the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(
                "config: expected train.device 'cuda' to be available, got no CUDA device; use train.device=cpu or auto"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA with ``precision='bf16'``; otherwise a context that changes nothing (fp32)."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
