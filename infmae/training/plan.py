"""The run plan: the optimizer-step schedule a config implies for a data shard, and the two lines that
describe a run before its first step (what trains on what, and the schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from infmae.config import Config


@dataclass(frozen=True)
class RunPlan:
    config: Config
    steps_per_epoch: int
    """Optimizer steps per epoch (``data_setup.py``)."""
    total_steps: int
    """``ceil(epochs x steps_per_epoch)``: where the learning-rate schedule ends."""
    warmup_steps: int
    stop_step: int
    """``total_steps``, or ``train.max_steps`` when that comes first."""
    world_size: int
    global_batch: int
    """batch_size x accum_steps x world_size."""
    peak_lr: float
    """blr x global_batch / 256."""

    @classmethod
    def of(cls, config: Config, steps_per_epoch: int, world_size: int) -> RunPlan:
        tc = config.train
        total_steps = math.ceil(tc.epochs * steps_per_epoch)
        global_batch = tc.batch_size * tc.accum_steps * world_size
        return cls(
            config=config,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            warmup_steps=round(tc.warmup_epochs * steps_per_epoch),
            stop_step=min(total_steps, tc.max_steps) if tc.max_steps else total_steps,
            world_size=world_size,
            global_batch=global_batch,
            peak_lr=tc.blr * global_batch / 256,
        )

    def describe(
        self,
        run_dir: Path,
        device: torch.device,
        parallel: str,
        dataset,
        n_params: int,
        flops_per_image: float,
        start_step: int,
    ) -> tuple[str, str]:
        """-> the run (folder, preset, device, ranks, images, parameters) and its schedule from ``start_step``."""
        tc = self.config.train
        run = (
            f"run {run_dir} | preset {self.config.preset} | device {device} | {self.world_size} rank(s), {parallel} | "
            f"{len(dataset)} images ({len(dataset.dropped)} skipped at scan) | "
            f"{n_params / 1e6:.2f}M trainable parameters"
        )
        schedule = (
            f"global batch {self.global_batch} ({tc.batch_size} x {tc.accum_steps} accum x {self.world_size} ranks) | "
            f"lr = blr {tc.blr:.3g} x {self.global_batch} / 256 = {self.peak_lr:.4g} | "
            f"{self.steps_per_epoch} steps/epoch | steps {start_step} -> {self.stop_step} of {self.total_steps} "
            f"(warmup {self.warmup_steps}) | {flops_per_image / 1e9:.2f} GFLOPs/img forward"
        )
        return run, schedule
