"""Process-group setup and teardown, from torchrun's environment (or a caller that set it up already).

One process per device. ``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; without them the run is a single process and no process group is made. Backend: NCCL
on CUDA, gloo on the CPU. Rank 0 logs at INFO; other ranks at WARNING (``infmae.logging_utils``).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """A process group is in use (even of one process, under torchrun)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, local rank and world size from torchrun's variables (0, 0, 1 when they are not set)."""
    try:
        return DistInfo(
            int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        )
    except ValueError as error:
        raise ValueError(
            f"distributed: expected integer RANK/LOCAL_RANK/WORLD_SIZE, got {error}; "
            "launch with torchrun, which sets them"
        ) from None


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(device_type: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group that torchrun described (once), or return the one already joined.

    ``device_type``: 'cuda', 'cpu' or 'auto' (CUDA when there); picks NCCL or gloo and, on CUDA, binds
    this process to ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())
        if dist.get_backend() == "nccl" and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(info.local_rank)  # else every rank of a node would pick cuda:0
    elif launched_by_torchrun():
        info = env_info()
        use_cuda = device_type == "cuda" or (device_type == "auto" and torch.cuda.is_available())
        if use_cuda:
            if not torch.cuda.is_available():
                raise ValueError(
                    "distributed: expected a CUDA device for train.device=cuda, got none; use train.device=cpu (gloo)"
                )
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    else:
        return DistInfo()
    return info


def teardown() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_dict(local: dict) -> dict:
    """The union of every rank's dict (rank order; later ranks do not override earlier ones)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(local)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def is_collective_timeout(error: BaseException) -> bool:
    """A collective that gave up waiting or lost a peer (gloo and NCCL word it differently)."""
    text = str(error).lower()
    return isinstance(error, getattr(dist, "DistBackendError", ())) or "timed out" in text or "timeout" in text
