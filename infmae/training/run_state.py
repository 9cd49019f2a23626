"""What a checkpoint holds of a run, and a run restored from it.

A single process saves one file (model, optimizer, step, data position, config, RNG states, skipped
files); a distributed run saves a DCP folder of shards keyed by parameter name, rank 0's run state and
each rank's RNG states (``checkpoint.py`` writes and checks both). Restoring checks that the config did
not change (except the fields in ``RESUME_MAY_CHANGE``), then loads into the built model and optimizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from infmae.config import Config
from infmae.training import checkpoint as ckpt
from infmae.training.distributed import barrier, gather_dict
from infmae.training.parallel import unwrap
from infmae.training.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)

RESUME_MODES = ("never", "must", "auto")

# train fields that may change between a run and its resumption without changing its results
RESUME_MAY_CHANGE = {
    "max_steps",
    "log_every",
    "checkpoint_every",
    "keep_last",
    "async_checkpoint",
    "visualize_every",
    "eval_every",
    "device",
    "parallel",
    "fsdp_group",
    "reshard_after_forward",
    "activation_checkpointing",
    "compile",
    "channels_last",  # engine: summation order only
    "cuda_graphs",  # engine: the same kernels, replayed
    "engine",  # engine: its effect on results shows in the fields it sets
    "tensorboard",
    "collective_timeout_s",
    "cpu_threads",
}


def resume_mode(resume: bool | str) -> str:
    """'never' (False; a folder with a checkpoint is refused), 'must' (True; a folder without one is
    refused: a mistyped --output must not start a new run) or 'auto' (continue if there is one)."""
    mode = {False: "never", True: "must"}.get(resume, resume)
    if mode not in RESUME_MODES:
        raise ValueError(f"pretrain: expected resume in {RESUME_MODES}, got {resume!r}")
    return mode


def check_run_folder(run_dir: Path, mode: str) -> Path | None:
    """Refuse a folder that does not fit the resume ``mode``, then create it (collective). -> its newest
    checkpoint."""
    existing = ckpt.latest_checkpoint(run_dir)
    if existing is not None and mode == "never":
        raise ValueError(
            f"pretrain: expected a new run folder, got {run_dir} which holds {existing.name}; "
            "pass --resume to continue it, or choose another --output"
        )
    if existing is None and mode == "must":
        ckpt.require_checkpoint(run_dir)
    barrier()  # every rank has looked for a checkpoint before rank 0 writes into the folder
    run_dir.mkdir(parents=True, exist_ok=True)
    return existing


@dataclass
class RunState:
    """The parts of a run a checkpoint saves and restores besides the tensors it shares with the model."""

    config: Config
    model: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    world_size: int
    step: int = 0
    skipped: dict[str, str] | None = None

    def data_position(self) -> dict:
        """Where the data stream stands after ``step`` optimizer steps (epoch and micro-batch in it)."""
        return {
            "epoch": self.step // self.steps_per_epoch,
            "micro_step": (self.step % self.steps_per_epoch) * self.config.train.accum_steps,
        }

    def file_state(self) -> dict:
        """Everything of a single-process save, in one dict (``step_N.pt``)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "data": self.data_position(),
            "config": self.config.to_dict(),
            "rng": rng_state(),
            "skipped": self.skipped,
            "format": ckpt.FORMAT_VERSION,
        }

    def sharded_tensors(self) -> dict:
        """{'model', 'optimizer'}: this rank's shards, keyed by parameter name (DCP's form)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def sharded_save(self) -> tuple[dict, dict, dict]:
        """(this rank's shards, rank 0's run state, this rank's RNG states) for a DCP save (collective:
        the skipped files of every rank are merged first)."""
        self.skipped = gather_dict(self.skipped)
        extra = {
            "step": self.step,
            "data": self.data_position(),
            "config": self.config.to_dict(),
            "skipped": self.skipped,
            "world_size": self.world_size,
            "format": ckpt.FORMAT_VERSION,
        }
        return self.sharded_tensors(), extra, {"rng": rng_state()}

    # ------------------------------------------------------------------------------------------
    def restore(self, run_dir: Path, distributed: bool) -> Path | None:
        """Load the newest intact checkpoint of ``run_dir`` into the model, optimizer, step, skipped files
        and RNG states. -> its path (None: no intact checkpoint)."""
        path, state = choose_checkpoint(run_dir, distributed)
        if path is None:
            return None
        if path.is_dir():
            self._restore_distributed(path)
        elif distributed:
            raise ValueError(
                f"pretrain --resume: expected a distributed checkpoint folder for {self.world_size} "
                f"ranks, got the single-process file {path}; resume it with one process"
            )
        else:  # read on the CPU: the RNG states must stay CPU tensors; load_state_dict copies the rest
            check_config(self.config, state["config"])
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = state["step"]
            self.skipped.update(state.get("skipped", {}))
            set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return path

    def _restore_distributed(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        check_config(self.config, ckpt.safe_load(path / ckpt.EXTRA)["config"])  # before the collective load
        tensors = self.sharded_tensors()
        extra, rank_state = ckpt.load_distributed_checkpoint(path, tensors)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optimizer"]
        )
        self.step = extra["step"]
        self.skipped.update(extra.get("skipped", {}))
        saved_world = extra.get("world_size", 1)
        if saved_world != self.world_size or rank_state is None:
            log.warning(
                "resumed a %d-rank checkpoint on %d ranks: the weights and optimizer are resharded; the "
                "global batch, lr and data order differ, so the run is not an exact continuation",
                saved_world,
                self.world_size,
            )
        if rank_state is not None:
            set_rng_state(rank_state["rng"])


def check_config(config: Config, saved: dict) -> None:
    """Refuse a resume whose config changed in a field that changes results. The saved config is read as
    a config (``Config.from_dict``): a field it predates takes the value it had then (a run saved before
    ``train.engine`` existed is the reference), so a field added since cannot slip past the check."""
    now = config.to_dict()
    saved = Config.from_dict(saved).to_dict()
    changed = [
        f"{section}.{key}"
        for section in ("model", "data", "train")
        for key in now[section]
        if now[section][key] != saved[section][key]
        and key not in RESUME_MAY_CHANGE
        and (section, key) != ("data", "num_workers")
    ]
    if changed:
        raise ValueError(
            f"pretrain --resume: expected the run's config, got changes to {changed}; "
            "resume with the saved config (RUN/config.json) or start a new run"
        )


def choose_checkpoint(run_dir: Path, distributed: bool) -> tuple[Path | None, dict | None]:
    """The newest intact checkpoint (damaged ones are set aside with a warning): rank 0 checks and
    every rank gets its choice. -> (path, its state when it is a file read here)."""
    if not distributed:
        return ckpt.open_newest_intact(run_dir)
    choice: list = [None, None]
    if dist.get_rank() == 0:
        try:
            path, _ = ckpt.open_newest_intact(run_dir, load=False)
            choice = [str(path) if path else None, None]
        except ckpt.CheckpointError as error:
            choice = [None, str(error)]
    dist.broadcast_object_list(choice, src=0)
    if choice[1] is not None:
        raise ckpt.CheckpointError(choice[1])
    return (Path(choice[0]) if choice[0] else None), None
