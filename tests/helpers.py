"""Set-up shared by the tests: tiny model and run configs, a folder of generated images, a run's metrics
column, and the CLI arguments of a short demo pretrain. Each test file states only what it changes."""

from __future__ import annotations

import json
from pathlib import Path

from infmae.config import Config, DataConfig, ModelConfig, TrainConfig
from infmae.data import generate_dataset
from infmae.training import checkpoint as ckpt
from infmae.training.trainer import Trainer

TINY_MODEL = dict(
    img_size=(32, 32), embed_dims=(16, 24, 32), depths=(1, 1, 1), num_heads=2,
    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
)  # fmt: skip
"""A model of 16x16 patches small enough to train a few steps on a CPU in seconds."""

TINY_TRAIN = dict(batch_size=4, warmup_epochs=1, blr=1e-2, log_every=1, visualize_every=0, device="cpu")
"""Every step logged (the loss column is what resume tests compare), no pictures, on the CPU (on a GPU host
``auto`` would resolve to the engine)."""


def tiny_model(**overrides) -> ModelConfig:
    """``TINY_MODEL`` with ``overrides`` (e.g. img_size, depths, kernels, encoder)."""
    return ModelConfig(**{**TINY_MODEL, **overrides})


def tiny_run(data_path: str | Path, model: ModelConfig, **train) -> Config:
    """A run on the images at ``data_path``, read in the main process (no loader workers), with
    ``TINY_TRAIN`` and ``train`` (which wins) as its train settings."""
    return Config(
        model=model,
        data=DataConfig(path=str(data_path), num_workers=0),
        train=TrainConfig(**{**TINY_TRAIN, **train}),
        preset="test",
    )


def image_folder(tmp_path_factory, name: str, count: int, seed: int, include_bad: bool = False) -> Path:
    """A fresh folder of ``count`` generated infrared images (plus the unusable files when ``include_bad``)."""
    root = tmp_path_factory.mktemp(name)
    generate_dataset(root, count, seed=seed, include_bad=include_bad)
    return root


def finished_run(tmp_path_factory, config: Config) -> Path:
    """A run trained to its end in a fresh folder: the reference a stopped and resumed run must equal."""
    run = tmp_path_factory.mktemp("whole") / "run"
    Trainer(config, run).fit()
    return run


def assert_latest_alone(run_dir: Path, checkpoint: Path) -> None:
    """``checkpoint`` is `latest` and, with its checksum, the only file in RUN/checkpoints."""
    assert ckpt.latest_checkpoint(run_dir) == checkpoint
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["latest", checkpoint.name, checkpoint.name + ".sha256"]


def losses(run_dir: Path, key: str = "loss") -> list:
    """``key`` (the loss unless said) of every record in RUN/metrics.jsonl, in order (floats round-trip
    exactly through JSON, so runs compare bitwise)."""
    return [json.loads(line)[key] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def demo_pretrain_args(output: Path, *settings: str) -> list[str]:
    """``infmae pretrain --preset demo`` into ``output`` on 24 synthetic images, 2 steps of batch 8, with
    ``settings`` ("section.field=value") added as --set overrides."""
    args = ["pretrain", "--preset", "demo", "--output", str(output)]
    for item in ("data.synthetic_count=24", "train.batch_size=8", "train.max_steps=2", *settings):
        args += ["--set", item]
    return args
