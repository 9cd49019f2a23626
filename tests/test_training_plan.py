"""The trainer's parts that need no model: the run plan (schedule numbers and the lines that describe a
run) and the micro-batch stream that resumes from a data position."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infmae.config import Config, TrainConfig
from infmae.training.data_setup import TrainingData
from infmae.training.plan import RunPlan
from infmae.training.run_state import resume_mode


def plan(steps_per_epoch: int = 10, world_size: int = 2, **train) -> RunPlan:
    return RunPlan.of(Config(train=TrainConfig(**train), preset="test"), steps_per_epoch, world_size)


def test_the_plan_follows_the_config():
    p = plan(epochs=2.5, warmup_epochs=0.5, batch_size=8, accum_steps=3, blr=1e-3)
    assert (p.total_steps, p.warmup_steps, p.stop_step) == (25, 5, 25)  # ceil(2.5 x 10), round(0.5 x 10)
    assert p.global_batch == 8 * 3 * 2
    assert p.peak_lr == pytest.approx(1e-3 * 48 / 256)


def test_max_steps_stops_early_but_keeps_the_schedule():
    early = plan(epochs=3, warmup_epochs=1, max_steps=7)
    assert (early.stop_step, early.total_steps) == (7, 30)
    assert plan(epochs=3, warmup_epochs=1, max_steps=70).stop_step == 30


class Images(list):
    """A stand-in dataset: its length and the files dropped at its scan."""

    def __init__(self, n: int, dropped: list):
        super().__init__(range(n))
        self.dropped = dropped


def test_the_plan_describes_the_run_and_its_schedule():
    dataset = Images(40, dropped=[("a.png", "too_small")])
    run, schedule = plan(epochs=1, warmup_epochs=0.2, batch_size=4, blr=1e-3).describe(
        Path("runs/x"), torch.device("cpu"), "fsdp", dataset, 2_500_000, 3.5e9, 4
    )
    assert run == (
        "run runs/x | preset test | device cpu | 2 rank(s), fsdp | 40 images (1 skipped at scan) | "
        "2.50M trainable parameters"
    )
    assert schedule == (
        "global batch 8 (4 x 1 accum x 2 ranks) | lr = blr 0.001 x 8 / 256 = 3.125e-05 | 10 steps/epoch | "
        "steps 4 -> 10 of 10 (warmup 2) | 3.50 GFLOPs/img forward"
    )


class CountingLoader:
    """Micro-batches numbered ``epoch * 100 + i``, ``per_epoch`` of them per epoch."""

    def __init__(self, per_epoch: int):
        self.per_epoch = per_epoch

    def iter_epoch(self, epoch: int, start_step: int = 0):
        return iter(range(epoch * 100 + start_step, epoch * 100 + self.per_epoch))


def test_micro_batches_resume_mid_epoch_and_drop_a_tail_short_of_a_step():
    # 7 micro-batches, accum 2: 3 optimizer steps per epoch, micro-batch 6 of each epoch is never read
    data = TrainingData(None, None, CountingLoader(7), None, steps_per_epoch=3)
    stream = data.micro_batches({"epoch": 1, "micro_step": 4}, accum_steps=2)
    assert [next(stream) for _ in range(4)] == [(1, 104), (1, 105), (2, 200), (2, 201)]


def test_resume_modes():
    assert (resume_mode(False), resume_mode(True), resume_mode("auto")) == ("never", "must", "auto")
    with pytest.raises(ValueError, match=r"expected resume in \('never', 'must', 'auto'\), got 'sometimes'"):
        resume_mode("sometimes")
