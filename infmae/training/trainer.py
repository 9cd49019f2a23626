"""Pretraining on one process (CPU, or one GPU with bf16 autocast) or on N ranks under torchrun
(FSDP2 or DDP; gloo on the CPU, NCCL on GPUs), with exact resume.

The trainer builds its parts in a fixed order: process group, device, data (this rank's shard), model,
parallelism (``parallel.parallelize``), optimizer, then (on resume) the saved state. One optimizer step
consumes ``accum_steps`` micro-batches per rank (gradients are reduced once, on the last); the data
position is derived from the step, so a resumed run reads exactly the batches an uninterrupted run
would have read. Global batch = batch_size x accum_steps x world size.

A single process saves ``step_N.pt`` files; a distributed run saves torch Distributed Checkpoint
folders (``checkpoint.py``). Rank 0 alone writes the log, metrics, TensorBoard events and pictures.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from infmae.config import Config, resolve_for_device
from infmae.data import ImageFolderDataset, ReferenceLoader, SampleSpec, generate_dataset
from infmae.model.infmae import InfMAE
from infmae.training import checkpoint as ckpt
from infmae.training.distributed import barrier, gather_dict, init_distributed
from infmae.training.engine import prepare_model, to_model_input
from infmae.training.evaluation import Evaluator, in_validation_split
from infmae.training.interrupts import GracefulStop, Heartbeat
from infmae.training.metrics import (
    MetricsWriter,
    TensorBoard,
    Throughput,
    device_peaks,
    format_line,
    peak_memory_gib,
)
from infmae.training.optim import build_optimizer, learning_rate, set_learning_rate
from infmae.training.parallel import parallelize, unwrap
from infmae.training.rng import rng_state, set_rng_state
from infmae.training.visualize import reconstruction_panels, save_grid

log = logging.getLogger(__name__)

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
    "channels_last",  # engine (issue 16): summation order only
    "cuda_graphs",  # engine (issue 16): the same kernels, replayed
    "engine",  # engine (issue 16): its effect on results shows in the fields it sets
    "tensorboard",
    "collective_timeout_s",
    "cpu_threads",
}
RESUME_MODES = ("never", "must", "auto")


def _is_timeout(error: BaseException) -> bool:
    """A collective that gave up waiting or lost a peer (gloo and NCCL word it differently)."""
    text = str(error).lower()
    return isinstance(error, getattr(dist, "DistBackendError", ())) or "timed out" in text or "timeout" in text


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
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(cpu_threads_for(cores, int(os.environ.get("LOCAL_WORLD_SIZE", 1)), workers))
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


def peak_tflops(device: torch.device) -> float | None:
    """The bf16 dense peak of ``device`` for MFU (the one hardware table, in metrics); None: MFU n/a."""
    peaks = device_peaks(device)
    return peaks.bf16_tflops if peaks else None


@dataclass
class RunSummary:
    steps: int
    first_loss: float | None
    last_loss: float | None
    checkpoint: Path | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    first_step: int | None = None
    """The step of ``first_loss``: the run's first logged step, also after a resume."""
    stopped_by: int | None = None
    """The signal that stopped the run early (SIGINT, SIGTERM, SIGUSR1), None when it ran to its end."""


class Trainer:
    """``resume``: 'never' (False; a folder with a checkpoint is refused), 'must' (True; a folder without
    one is refused: a mistyped --output must not start a new run) or 'auto' (continue if there is one)."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool | str = False):
        config = resolve_for_device(config, pick_device(config.train.device).type)  # engine (issue 16)
        self.config = config
        self.run_dir = Path(run_dir)
        tc, dc, mc = config.train, config.data, config.model
        self.resume = {False: "never", True: "must"}.get(resume, resume)
        if self.resume not in RESUME_MODES:
            raise ValueError(f"pretrain: expected resume in {RESUME_MODES}, got {resume!r}")

        # 0. process group: torchrun's (or the caller's); none for a single process
        self.dist = init_distributed(tc.device, timeout_s=tc.collective_timeout_s)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.rank == 0
        self.distributed = self.dist.distributed

        existing = ckpt.latest_checkpoint(self.run_dir)
        if existing is not None and self.resume == "never":
            raise ValueError(
                f"pretrain: expected a new run folder, got {self.run_dir} which holds {existing.name}; "
                "pass --resume to continue it, or choose another --output"
            )
        if existing is None and self.resume == "must":
            ckpt.require_checkpoint(self.run_dir)
        barrier()  # every rank has looked for a checkpoint before rank 0 writes into the folder
        self.run_dir.mkdir(parents=True, exist_ok=True)

        # 1. device (and, on the CPU, as many compute threads as this process has cores to itself)
        self.device = pick_device(tc.device)
        if self.device.type == "cpu":
            set_cpu_threads(tc.cpu_threads, dc.num_workers)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda" and tc.precision == "bf16"
            else nullcontext()
        )

        # 2. data: this rank's shard
        self.dataset = self._dataset(Path(dc.path) if dc.path else self._synthetic_data())
        self.val_dataset = self._validation_set()  # taken out of self.dataset when it is a split
        if dc.loader == "dali":
            from infmae.data.dali import DaliLoader

            self.loader = DaliLoader(
                self.dataset,
                batch_size=tc.batch_size,
                seed=tc.seed,
                rank=self.rank,
                world_size=self.world_size,
                device_id=(self.device.index or 0) if self.device.type == "cuda" else None,
                num_threads=dc.dali_threads,
            )
        else:
            self.loader = ReferenceLoader(
                self.dataset,
                batch_size=tc.batch_size,
                seed=tc.seed,
                num_workers=dc.num_workers,
                rank=self.rank,
                world_size=self.world_size,
            )
        self.steps_per_epoch = self.loader.steps_per_epoch // tc.accum_steps
        self.evaluator = (
            Evaluator(self.val_dataset, tc.batch_size, dc.num_workers, self.rank, self.world_size)
            if self.val_dataset is not None
            else None
        )
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"pretrain: expected at least one optimizer step per epoch, got "
                f"{self.loader.steps_per_epoch} micro-batches for accum_steps={tc.accum_steps}; "
                "lower train.accum_steps or train.batch_size, or add images"
            )
        self.total_steps = math.ceil(tc.epochs * self.steps_per_epoch)
        self.warmup_steps = round(tc.warmup_epochs * self.steps_per_epoch)
        self.stop_step = min(self.total_steps, tc.max_steps) if tc.max_steps else self.total_steps
        self.global_batch = tc.batch_size * tc.accum_steps * self.world_size
        self.peak_lr = tc.blr * self.global_batch / 256

        # 3. model (the same initial weights on every rank), parallelism, optimizer
        torch.manual_seed(tc.seed)
        self.module = prepare_model(InfMAE(mc).to(self.device), tc, self.device)  # engine (issue 16)
        self.n_params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)  # before sharding
        self.flops_per_image = self.module.flops_per_image()
        self.mesh = None
        if self.distributed:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(self.device.type, (self.world_size,), mesh_dim_names=("dp",))
        self.parallel = tc.parallel if self.distributed else "none"
        self.model = parallelize(self.module, tc, self.mesh, self.device)
        if self.module.ops.name == "triton":
            # The ids fed to the token kernels come from sort_stride_mask and the sparse encoder's neighbour
            # table from tile_neighbours (both tested exactly against their twins); their debugging guards
            # would cost host syncs in every forward, i.e. on every step.
            import kernels

            kernels.disable_host_sync_guards()
        self.optimizer = build_optimizer(self.model, tc, self.peak_lr, self.device)
        self.step = 0
        self.checkpointer = ckpt.Checkpointer(self.run_dir, tc.keep_last, tc.async_checkpoint, self.distributed)
        self.saved_step: int | None = None  # the step of the newest save, to not save a step twice
        # stop requests are agreed on by every rank once per step, on a CPU group apart from the training's
        self.control_group = (
            dist.new_group(backend="gloo", timeout=timedelta(seconds=tc.collective_timeout_s))
            if self.distributed
            else None
        )
        self.heartbeat = Heartbeat(self.rank, self.world_size) if self.distributed else None
        self.skipped: dict[str, str] = dict(self.dataset.dropped)

        # 4. saved state
        if self.resume != "never" and existing is not None:
            self._restore()
        elif self.resume == "auto":
            log.info("--resume=auto: no checkpoint in %s yet; starting a new run", self.run_dir)
        self.metrics = self.tensorboard = None
        if self.is_main:
            (self.run_dir / "config.json").write_text(config.to_json())
            self.metrics = MetricsWriter(self.run_dir, resume_step=self.step)
            self.tensorboard = TensorBoard(self.run_dir, enabled=tc.tensorboard)
        barrier()

    # ------------------------------------------------------------------------------------------
    def _dataset(self, root: Path) -> ImageFolderDataset:
        dc, mc = self.config.data, self.config.model
        return ImageFolderDataset(
            root,
            SampleSpec.from_config(dc, mc.img_size, mc.in_chans, self.config.train.seed),
            min_size=dc.min_size,
            base=dc.manifest_root or None,
            allow_outside_root=dc.allow_outside_root,
        )

    def _validation_set(self) -> ImageFolderDataset | None:
        dc = self.config.data
        if dc.val_path:
            held = self._dataset(Path(dc.val_path))
            held.eval_view = True
        elif dc.val_fraction > 0:
            held = self.dataset.split_off(lambda path: in_validation_split(path, dc.val_fraction))
        else:
            return None
        if len(held) < self.world_size:
            raise ValueError(
                f"data: expected at least one validation image per rank, got {len(held)} for {self.world_size} "
                "ranks; raise data.val_fraction or add images to --val-data"
            )
        log.info("validation: %d held-out images (%s)", len(held), dc.val_path or f"{dc.val_fraction:.1%} split")
        return held

    def _synthetic_data(self) -> Path:
        root = self.run_dir / "synthetic_data"
        done = root / ".complete"
        if not done.exists() and self.is_main:
            log.info(
                "no --data given: writing %d synthetic infrared images to %s", self.config.data.synthetic_count, root
            )
            generate_dataset(root, self.config.data.synthetic_count, seed=self.config.train.seed, include_bad=True)
            done.write_text("ok\n")
        barrier()  # the other ranks read what rank 0 wrote
        return root

    def _data_position(self) -> dict:
        return {
            "epoch": self.step // self.steps_per_epoch,
            "micro_step": (self.step % self.steps_per_epoch) * self.config.train.accum_steps,
        }

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "data": self._data_position(),
            "config": self.config.to_dict(),
            "rng": rng_state(),
            "skipped": self.skipped,
            "format": ckpt.FORMAT_VERSION,
        }

    def _sharded_state(self) -> dict:
        """{'model', 'optimizer'}: this rank's shards, keyed by parameter name (DCP's form)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def _check_config(self, saved: dict) -> None:
        now = self.config.to_dict()
        changed = [
            f"{section}.{key}"
            for section in ("model", "data", "train")
            for key in now[section]
            if key in saved[section]
            and now[section][key] != saved[section][key]
            and key not in RESUME_MAY_CHANGE
            and (section, key) != ("data", "num_workers")
        ]
        if changed:
            raise ValueError(
                f"pretrain --resume: expected the run's config, got changes to {changed}; "
                "resume with the saved config (RUN/config.json) or start a new run"
            )

    def _choose_checkpoint(self) -> tuple[Path | None, dict | None]:
        """The newest intact checkpoint (damaged ones are set aside with a warning): rank 0 checks and
        every rank gets its choice. -> (path, its state when it is a file read here)."""
        if not self.distributed:
            return ckpt.open_newest_intact(self.run_dir)
        choice: list = [None, None]
        if self.is_main:
            try:
                path, _ = ckpt.open_newest_intact(self.run_dir, load=False)
                choice = [str(path) if path else None, None]
            except ckpt.CheckpointError as error:
                choice = [None, str(error)]
        dist.broadcast_object_list(choice, src=0)
        if choice[1] is not None:
            raise ckpt.CheckpointError(choice[1])
        return (Path(choice[0]) if choice[0] else None), None

    def _restore(self) -> None:
        path, state = self._choose_checkpoint()
        if path is None:
            return
        if path.is_dir():
            self._restore_distributed(path)
        elif self.distributed:
            raise ValueError(
                f"pretrain --resume: expected a distributed checkpoint folder for {self.world_size} "
                f"ranks, got the single-process file {path}; resume it with one process"
            )
        else:  # read on the CPU: the RNG states must stay CPU tensors; load_state_dict copies the rest
            self._check_config(state["config"])
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = state["step"]
            self.skipped.update(state.get("skipped", {}))
            set_rng_state(state["rng"])
        self.checkpointer.last, self.saved_step = path, self.step
        log.info("resumed from %s at step %d", path, self.step)

    def _restore_distributed(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        self._check_config(ckpt.safe_load(path / ckpt.EXTRA)["config"])  # before the collective load, every rank
        tensors = self._sharded_state()
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

    def _sharded_save(self) -> tuple[dict, dict, dict]:
        """(this rank's shards, rank 0's run state, this rank's RNG states) for a DCP save."""
        self.skipped = gather_dict(self.skipped)
        extra = {
            "step": self.step,
            "data": self._data_position(),
            "config": self.config.to_dict(),
            "skipped": self.skipped,
            "world_size": self.world_size,
            "format": ckpt.FORMAT_VERSION,
        }
        return self._sharded_state(), extra, {"rng": rng_state()}

    def save(self) -> Path:
        """Collective under a process group: every rank calls it at the same step. With
        ``train.async_checkpoint`` the write goes on in the background and the path it will have is
        returned; a failed write raises ``CheckpointWriteError`` here or at the next save."""
        self.saved_step = self.step
        return self.checkpointer.save(self.step, self._state, self._sharded_save)

    def wait_for_save(self) -> Path | None:
        """Waits for a background save (collective) -> the newest complete checkpoint."""
        return self.checkpointer.wait()

    def _micro_batches(self):
        """Yield (epoch, batch) from the current step on, forever, epoch after epoch."""
        accum = self.config.train.accum_steps
        epoch, start = self.step // self.steps_per_epoch, (self.step % self.steps_per_epoch) * accum
        while True:
            used = self.steps_per_epoch * accum  # a tail that does not fill an optimizer step is dropped
            for i, batch in enumerate(self.loader.iter_epoch(epoch, start_step=start)):
                if start + i >= used:
                    break
                yield epoch, batch
            epoch, start = epoch + 1, 0

    def _grad_norm(self) -> torch.Tensor:
        """Global gradient L2 norm (over every rank's shards under FSDP: one all-reduce)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.parallel != "fsdp":
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        local = torch.stack([torch.linalg.vector_norm(g.to_local().float()) for g in grads]).square().sum()
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        return local.sqrt()

    def _clip_gradients(self, max_norm: float) -> torch.Tensor:
        if self.parallel != "fsdp":
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = self._grad_norm()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.to_local().mul_(scale)
        return norm

    def _gradient_sync(self, sync: bool):
        """Reduce gradients only on the last micro-batch of a step (accumulate locally before it)."""
        if self.parallel == "fsdp":
            self.model.set_requires_gradient_sync(sync)
        elif self.parallel == "ddp" and not sync:
            return self.model.no_sync()
        return nullcontext()

    def after_step(self) -> None:
        """Called on every rank after each optimizer step (a hook for tests and tools)."""

    # ------------------------------------------------------------------------------------------
    def fit(self) -> RunSummary:
        """Train to ``stop_step``, or until a stop signal (then the current step is finished and saved)."""
        tc = self.config.train
        self._log_plan()
        self.model.train()
        with GracefulStop(self.control_group) as stop:
            try:
                first_loss, last_loss = self._train(stop)
            except RuntimeError as error:
                if self.heartbeat is None or not _is_timeout(error):
                    raise
                raise RuntimeError(self.heartbeat.explain(self.step, tc.collective_timeout_s)) from error
            self.wait_for_save()
        stopped_by = stop.stopped_by if self.step < self.stop_step else None
        self.skipped = gather_dict(self.skipped)
        if self.is_main:
            self._report_skipped()
            self.tensorboard.close()
            if stopped_by is not None:
                log.warning(
                    "stopped at step %d by %s (checkpoint %s); continue with: infmae pretrain --output %s --resume",
                    self.step,
                    signal.Signals(stopped_by).name,
                    self.checkpointer.last.name if self.checkpointer.last else "none",
                    self.run_dir,
                )
        first_step, run_first = None, self.metrics.first("loss") if self.is_main else None
        if run_first is not None:
            first_step, first_loss = run_first  # the run's first logged loss, also after a resume
        return RunSummary(
            self.step,
            first_loss,
            last_loss,
            self.checkpointer.last,
            sorted(self.skipped.items()),
            first_step=first_step,
            stopped_by=stopped_by,
        )

    def _log_plan(self) -> None:
        tc = self.config.train
        log.info(
            "run %s | preset %s | device %s | %d rank(s), %s | %d images (%d skipped at scan) | "
            "%.2fM trainable parameters",
            self.run_dir,
            self.config.preset,
            self.device,
            self.world_size,
            self.parallel,
            len(self.dataset),
            len(self.dataset.dropped),
            self.n_params / 1e6,
        )
        log.info(
            "global batch %d (%d x %d accum x %d ranks) | lr = blr %.3g x %d / 256 = %.4g | %d steps/epoch | "
            "steps %d -> %d of %d (warmup %d) | %.2f GFLOPs/img forward",
            self.global_batch,
            tc.batch_size,
            tc.accum_steps,
            self.world_size,
            tc.blr,
            self.global_batch,
            self.peak_lr,
            self.steps_per_epoch,
            self.step,
            self.stop_step,
            self.total_steps,
            self.warmup_steps,
            self.flops_per_image / 1e9,
        )

    def _train(self, stop: GracefulStop) -> tuple[float | None, float | None]:
        """The step loop; leaves it early, after saving, when ``stop`` says so. -> (first, last) logged loss."""
        tc, mc = self.config.train, self.config.model
        batches = self._micro_batches()
        meter = Throughput()
        loss_sum = torch.zeros((), device=self.device)
        losses_in_window = 0
        first_loss = last_loss = None
        last_logged_step = self.step
        peak = peak_tflops(self.device)
        run_start = time.perf_counter()
        start_step = self.step
        while self.step < self.stop_step:
            set_learning_rate(
                self.optimizer, learning_rate(self.step, self.total_steps, self.warmup_steps, self.peak_lr, tc.min_lr)
            )
            for micro in range(tc.accum_steps):
                wait_start = time.perf_counter()
                epoch, batch = next(batches)
                meter.data_wait += time.perf_counter() - wait_start
                for path, reason in batch.skipped:
                    self.skipped.setdefault(path, reason)
                images = batch.to(self.device, torch.float32, channels=mc.in_chans, non_blocking=True).images
                images = to_model_input(images, tc)  # engine (issue 16)
                with self._gradient_sync(micro == tc.accum_steps - 1):
                    with self.autocast:
                        out = self.model(images)
                    (out.loss / tc.accum_steps).backward()
                loss_sum += out.loss.detach()
                losses_in_window += 1
                meter.images += images.shape[0]
            log_now = (self.step + 1) % tc.log_every == 0 or self.step + 1 == self.stop_step
            grad_norm = None
            if tc.grad_clip > 0:
                grad_norm = self._clip_gradients(tc.grad_clip)
            elif log_now:
                grad_norm = self._grad_norm()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.after_step()
            if self.heartbeat is not None:
                self.heartbeat.beat(self.step)

            if log_now:  # the only host sync of a step (and, with several ranks, the only GPU collective)
                elapsed, img_per_s, wait_pct = meter.summary()
                if self.distributed:  # one all-reduce: loss sum, images/s of all ranks, worst data wait
                    packed = torch.stack([loss_sum.detach().float(), torch.tensor(img_per_s, device=self.device)])
                    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
                    loss = packed[0].item() / (losses_in_window * self.world_size)
                    total_img_per_s = packed[1].item()
                else:
                    loss = loss_sum.item() / losses_in_window
                    total_img_per_s = img_per_s
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"pretrain: expected a finite loss, got {loss} between steps {last_logged_step + 1} and "
                        f"{self.step}; last batch indices {batch.indices.tolist()}; last good checkpoint "
                        f"{self.checkpointer.last_good() or 'none'}. Lower train.blr or enable train.grad_clip"
                        + (f" (batch indices of rank {self.rank} of {self.world_size})" if self.distributed else "")
                    )
                step_time = (time.perf_counter() - run_start) / (self.step - start_step)
                per_device = total_img_per_s / self.world_size
                achieved = 3 * self.flops_per_image * per_device / 1e12  # per device; forward + backward = 3x forward
                record = {
                    "step": self.step,
                    "total_steps": self.stop_step,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm),
                    "img_per_s": per_device,
                    "img_per_s_total": total_img_per_s,
                    "world_size": self.world_size,
                    "device": self.device.type,
                    "tflops_per_s": achieved,
                    "mfu": achieved / peak if peak else None,
                    "data_wait_pct": wait_pct,
                    "mem_gib": peak_memory_gib(self.device),
                    "eta_s": step_time * (self.stop_step - self.step),
                    "time": time.time(),
                }
                if self.is_main:
                    self.metrics.write(record)
                    self.tensorboard.write(record)
                    log.info(format_line(record))
                first_loss = loss if first_loss is None else first_loss
                last_loss = loss
                last_logged_step = self.step
                loss_sum.zero_()
                losses_in_window = 0
                meter.reset()
            finished = self.step == self.stop_step
            if self.evaluator is not None and (self.step % tc.eval_every == 0 or finished):
                self.evaluate()  # collective; also draws the held-out images' reconstructions
            elif (tc.visualize_every and self.step % tc.visualize_every == 0 or finished) and self.is_main:
                self.write_reconstructions(images, out, self._labels(self.dataset, batch.indices))
            if self.step % tc.checkpoint_every == 0 or finished:
                self.save()
            if not finished and stop.agreed() is not None:  # collective: every rank stops after the same step
                if self.saved_step != self.step:
                    self.save()
                break
        return first_loss, last_loss

    def evaluate(self):
        """Held-out evaluation (collective): val_loss, val_baseline_loss and val_psnr into the log,
        metrics.jsonl and TensorBoard; rank 0 draws the first validation batch. -> the Evaluation."""
        dc, mc = self.config.data, self.config.model
        result, first = self.evaluator.run(
            self.model, self.device, mc.in_chans, self.autocast, dc.std, mc.norm_pix_loss
        )
        if self.is_main:
            record = {"step": self.step, **result.record(), "time": time.time()}
            self.metrics.write(record)
            self.tensorboard.write(record)
            psnr = "" if result.val_psnr is None else f", PSNR {result.val_psnr:.2f} dB"
            log.info(
                "eval step %d: val_loss %.4f (predicting each image's visible mean: %.4f%s) on %d held-out images",
                self.step,
                result.val_loss,
                result.val_baseline_loss,
                psnr,
                result.images,
            )
            if first is not None:
                batch, images, out, errors = first
                self.write_reconstructions(images, out, self._labels(self.val_dataset, batch.indices, errors))
        return result

    @staticmethod
    def _labels(dataset, indices: torch.Tensor, errors: torch.Tensor | None = None) -> list[str]:
        """Row labels of a reconstruction grid: each image's file name (and its masked MSE)."""
        names = [dataset.path(int(i)).name for i in indices]
        if errors is None:
            return names
        return [f"{name}\nMSE {float(e):.3f}" for name, e in zip(names, errors)]

    def write_reconstructions(self, images: torch.Tensor, out, labels: list[str] | None = None) -> Path:
        dc = self.config.data
        panels = reconstruction_panels(images.detach(), out.pred.detach(), out.mask, dc.mean, dc.std)
        path = save_grid(panels, self.run_dir / "reconstructions" / f"step_{self.step:08d}.png", row_labels=labels)
        log.info("wrote reconstructions %s", path)
        return path

    def _report_skipped(self) -> None:
        path = self.run_dir / "skipped_files.tsv"
        path.write_text("".join(f"{p}\t{r}\n" for p, r in sorted(self.skipped.items())))
        if self.skipped:
            log.warning("skipped %d unusable files (listed in %s)", len(self.skipped), path)
        else:
            log.info("no files were skipped")
