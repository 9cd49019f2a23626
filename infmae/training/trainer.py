"""Pretraining on one process (CPU, or one GPU with bf16 autocast) or on N ranks under torchrun
(FSDP2 or DDP; gloo on the CPU, NCCL on GPUs), with exact resume.

The lifecycle, in the order of this file: build (process group, device, data: this rank's shard
(``data_setup.py``), the run plan (``plan.py``), model and parallelism, optimizer), restore (on resume,
``run_state.py``), step (``accum_steps`` micro-batches per rank, gradients reduced once, on the last),
log (``metrics.py``), save (``checkpoint.py``), finish.
The data position is derived from the step, so a resumed run reads exactly the batches an uninterrupted
run would have read. Global batch = batch_size x accum_steps x world size. Rank 0 alone writes the log,
metrics, TensorBoard events and pictures.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from infmae.config import Config, resolve_for_device
from infmae.model.infmae import InfMAE
from infmae.training import checkpoint as ckpt
from infmae.training.data_setup import build_training_data, write_skipped_files
from infmae.training.distributed import DistInfo, barrier, gather_dict, init_distributed, is_collective_timeout
from infmae.training.engine import prepare_model, to_model_input
from infmae.training.hardware import autocast_for, pick_device, set_cpu_threads
from infmae.training.interrupts import GracefulStop, Heartbeat, log_how_to_continue, stop_group
from infmae.training.metrics import LogWindow, MetricsWriter, TensorBoard, format_line, step_record
from infmae.training.optim import build_optimizer, learning_rate, set_learning_rate
from infmae.training.parallel import clip_gradients, data_parallel_mesh, grad_norm, gradient_sync, parallelize
from infmae.training.plan import RunPlan
from infmae.training.run_state import RunState, check_run_folder, resume_mode
from infmae.training.visualize import row_labels, write_reconstructions

log = logging.getLogger(__name__)


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
    """``resume``: 'never' (False), 'must' (True) or 'auto' (``run_state.resume_mode``).
    ``dist_info``: the process group the caller joined (the CLI, for its log set-up); None: joined here."""

    def __init__(
        self, config: Config, run_dir: str | Path, resume: bool | str = False, dist_info: DistInfo | None = None
    ):
        config = resolve_for_device(config, pick_device(config.train.device).type)  # train.engine -> its fields
        self.config = config
        self.run_dir = Path(run_dir)
        tc, dc = config.train, config.data
        self.resume = resume_mode(resume)

        # 0. process group: torchrun's (or the caller's); none for a single process
        self.dist = dist_info or init_distributed(tc.device, timeout_s=tc.collective_timeout_s)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.rank == 0
        self.distributed = self.dist.distributed
        existing = check_run_folder(self.run_dir, self.resume)

        # 1. device (and, on the CPU, as many compute threads as this process has cores to itself)
        self.device = pick_device(tc.device)
        if self.device.type == "cpu":
            set_cpu_threads(tc.cpu_threads, dc.num_workers)
        self.autocast = autocast_for(self.device, tc.precision)

        # 2. data: this rank's shard, the held-out set, and the schedule they imply
        self.data = build_training_data(config, self.run_dir, self.device, self.rank, self.world_size)
        self.dataset, self.val_dataset, self.loader = self.data.dataset, self.data.val_dataset, self.data.loader
        self.evaluator, self.steps_per_epoch = self.data.evaluator, self.data.steps_per_epoch
        self.plan = RunPlan.of(config, self.steps_per_epoch, self.world_size)

        # 3. model (the same initial weights on every rank), parallelism, optimizer
        self._build_model()
        self.optimizer = build_optimizer(self.model, tc, self.peak_lr, self.device)
        self.state = RunState(
            config,
            self.model,
            self.optimizer,
            self.steps_per_epoch,
            self.world_size,
            skipped=dict(self.dataset.dropped),
        )
        self.checkpointer = ckpt.Checkpointer(self.run_dir, tc.keep_last, tc.async_checkpoint, self.distributed)
        self.saved_step: int | None = None  # the step of the newest save, to not save a step twice
        self.control_group = stop_group(self.distributed, tc.collective_timeout_s)  # for GracefulStop
        self.heartbeat = Heartbeat(self.rank, self.world_size) if self.distributed else None

        # 4. saved state
        if self.resume != "never" and existing is not None:
            restored = self.state.restore(self.run_dir, self.distributed)
            if restored is not None:
                self.checkpointer.last, self.saved_step = restored, self.step
        elif self.resume == "auto":
            log.info("--resume=auto: no checkpoint in %s yet; starting a new run", self.run_dir)
        self.metrics = self.tensorboard = None
        if self.is_main:
            (self.run_dir / "config.json").write_text(config.to_json())
            self.metrics = MetricsWriter(self.run_dir, resume_step=self.step)
            self.tensorboard = TensorBoard(self.run_dir, enabled=tc.tensorboard)
        barrier()

    @property
    def step(self) -> int:
        """Optimizer steps taken (restored on resume)."""
        return self.state.step

    @property
    def skipped(self) -> dict[str, str]:
        """Unusable files met so far: path -> reason (this rank's, merged over ranks at saves and the end)."""
        return self.state.skipped

    # the plan's numbers, under the names the step loop uses
    total_steps = property(lambda self: self.plan.total_steps)
    warmup_steps = property(lambda self: self.plan.warmup_steps)
    stop_step = property(lambda self: self.plan.stop_step)
    global_batch = property(lambda self: self.plan.global_batch)
    peak_lr = property(lambda self: self.plan.peak_lr)

    # ------------------------------------------------------------------------------------------
    # build
    # ------------------------------------------------------------------------------------------
    def _build_model(self) -> None:
        """``module`` (the InfMAE, the same initial weights on every rank) and ``model`` (what trains:
        ``module`` with checkpointing, compile and data parallelism applied, ``parallel.parallelize``)."""
        tc = self.config.train
        torch.manual_seed(tc.seed)
        # channels-last and bf16 residual where the engine set them (training/engine.py)
        fsdp = self.distributed and tc.parallel == "fsdp"
        self.module = prepare_model(InfMAE(self.config.model).to(self.device), tc, self.device, fsdp=fsdp)
        self.n_params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)  # before sharding
        self.flops_per_image = self.module.flops_per_image()
        self.mesh = data_parallel_mesh(self.device, self.world_size) if self.distributed else None
        self.parallel = tc.parallel if self.distributed else "none"
        self.model = parallelize(self.module, tc, self.mesh, self.device)
        if self.module.ops.name == "triton":
            # The ids fed to the token kernels come from sort_stride_mask and the sparse encoder's neighbour
            # table from tile_neighbours (both tested exactly against their twins); their debugging guards
            # would cost host syncs in every forward, i.e. on every step.
            import kernels

            kernels.disable_host_sync_guards()

    # ------------------------------------------------------------------------------------------
    # save
    # ------------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Collective under a process group: every rank calls it at the same step. With
        ``train.async_checkpoint`` the write goes on in the background and the path it will have is
        returned; a failed write raises ``CheckpointWriteError`` here or at the next save."""
        self.saved_step = self.step
        return self.checkpointer.save(self.step, self.state.file_state, self.state.sharded_save)

    def wait_for_save(self) -> Path | None:
        """Waits for a background save (collective) -> the newest complete checkpoint."""
        return self.checkpointer.wait()

    def after_step(self) -> None:
        """Called on every rank after each optimizer step: a hook for tests that record or signal mid-run."""

    # ------------------------------------------------------------------------------------------
    # run, then finish
    # ------------------------------------------------------------------------------------------
    def fit(self) -> RunSummary:
        """Train to ``stop_step``, or until a stop signal (then the current step is finished and saved)."""
        for line in self.plan.describe(
            self.run_dir, self.device, self.parallel, self.dataset, self.n_params, self.flops_per_image, self.step
        ):
            log.info("%s", line)
        self.model.train()
        with GracefulStop(self.control_group) as stop:
            try:
                first_loss, last_loss = self._train(stop)
            except RuntimeError as error:
                if self.heartbeat is None or not is_collective_timeout(error):
                    raise
                raise RuntimeError(self.heartbeat.explain(self.step, self.config.train.collective_timeout_s)) from error
            self.wait_for_save()
        stopped_by = stop.stopped_by if self.step < self.stop_step else None
        self.state.skipped = gather_dict(self.skipped)
        if self.is_main:
            self._finish(stopped_by)
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

    def _train(self, stop: GracefulStop) -> tuple[float | None, float | None]:
        """The step loop; leaves it early, after saving, when ``stop`` says so. -> (first, last) logged loss."""
        tc = self.config.train
        batches = self.data.micro_batches(self.state.data_position(), tc.accum_steps)
        window = LogWindow(self.device)
        first_loss = last_loss = None
        last_logged_step = start_step = self.step
        run_start = time.perf_counter()
        while self.step < self.stop_step:
            log_now = (self.step + 1) % tc.log_every == 0 or self.step + 1 == self.stop_step
            epoch, batch, images, out, norm = self._optimizer_step(batches, window, log_now)
            self.after_step()
            if self.heartbeat is not None:
                self.heartbeat.beat(self.step)

            if log_now:  # the only host sync of a step (and, with several ranks, the only GPU collective)
                loss, img_per_s_total, wait_pct = window.close(self.world_size)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"pretrain: expected a finite loss, got {loss} between steps {last_logged_step + 1} and "
                        f"{self.step}; last batch indices {batch.indices.tolist()}; last good checkpoint "
                        f"{self.checkpointer.last_good() or 'none'}. Lower train.blr or enable train.grad_clip"
                        + (f" (batch indices of rank {self.rank} of {self.world_size})" if self.distributed else "")
                    )
                self._log(
                    step_record(
                        step=self.step,
                        stop_step=self.stop_step,
                        epoch=epoch,
                        loss=loss,
                        lr=self.optimizer.param_groups[0]["lr"],
                        grad_norm=norm,
                        img_per_s_total=img_per_s_total,
                        wait_pct=wait_pct,
                        world_size=self.world_size,
                        device=self.device,
                        flops_per_image=self.flops_per_image,
                        step_time=(time.perf_counter() - run_start) / (self.step - start_step),
                    )
                )
                first_loss = loss if first_loss is None else first_loss
                last_loss = loss
                last_logged_step = self.step
            finished = self.step == self.stop_step
            if self.evaluator is not None and (self.step % tc.eval_every == 0 or finished):
                self.evaluate()  # collective; also draws the held-out images' reconstructions
            elif (tc.visualize_every and self.step % tc.visualize_every == 0 or finished) and self.is_main:
                self.write_reconstructions(images, out, row_labels(self.dataset, batch.indices))
            if self.step % tc.checkpoint_every == 0 or finished:
                self.save()
            if not finished and stop.agreed() is not None:  # collective: every rank stops after the same step
                if self.saved_step != self.step:
                    self.save()
                break
        return first_loss, last_loss

    def _optimizer_step(self, batches, window: LogWindow, log_now: bool):
        """One optimizer step over ``accum_steps`` micro-batches. -> (epoch, the last batch, its images,
        its model output, the gradient norm: None unless clipping or ``log_now``)."""
        tc = self.config.train
        lr = learning_rate(self.step, self.total_steps, self.warmup_steps, self.peak_lr, tc.min_lr)
        set_learning_rate(self.optimizer, lr)
        for micro in range(tc.accum_steps):
            wait_start = time.perf_counter()
            epoch, batch = next(batches)
            window.meter.data_wait += time.perf_counter() - wait_start
            for path, reason in batch.skipped:
                self.skipped.setdefault(path, reason)
            images = batch.to(self.device, torch.float32, channels=self.config.model.in_chans, non_blocking=True).images
            images = to_model_input(images, tc, self.module)  # channels-last when the model runs so
            with gradient_sync(self.model, self.parallel, micro == tc.accum_steps - 1):
                with self.autocast:
                    out = self.model(images)
                (out.loss / tc.accum_steps).backward()
            window.add(out.loss, images.shape[0])
        norm = None
        if tc.grad_clip > 0:
            norm = clip_gradients(self.model, self.parallel, tc.grad_clip)
        elif log_now:
            norm = grad_norm(self.model, self.parallel)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return epoch, batch, images, out, norm

    def _log(self, record: dict, line: str | None = None) -> None:
        """A record into metrics.jsonl, TensorBoard and the log (``line``, by default the progress line):
        rank 0 only."""
        if self.is_main:
            self.metrics.write(record)
            self.tensorboard.write(record)
            log.info(line or format_line(record))

    def evaluate(self):
        """Held-out evaluation (collective): val_loss, val_baseline_loss and val_psnr into the log,
        metrics.jsonl and TensorBoard; rank 0 draws the first validation batch. -> the Evaluation."""
        dc, mc = self.config.data, self.config.model
        result, first = self.evaluator.run(
            self.model, self.device, mc.in_chans, self.autocast, dc.std, mc.norm_pix_loss
        )
        self._log({"step": self.step, **result.record(), "time": time.time()}, result.describe(self.step))
        if self.is_main and first is not None:
            batch, images, out, errors = first
            self.write_reconstructions(images, out, row_labels(self.val_dataset, batch.indices, errors))
        return result

    def write_reconstructions(self, images: torch.Tensor, out, labels: list[str] | None = None) -> Path:
        dc, name = self.config.data, f"step_{self.step:08d}.png"
        path = write_reconstructions(self.run_dir / "reconstructions" / name, images, out, dc.mean, dc.std, labels)
        log.info("wrote reconstructions %s", path)
        return path

    def _finish(self, stopped_by: int | None) -> None:
        """Rank 0: the skipped-files list, TensorBoard closed, and how to continue a stopped run."""
        write_skipped_files(self.run_dir, self.skipped)
        self.tensorboard.close()
        if stopped_by is not None:
            log_how_to_continue(stopped_by, self.step, self.checkpointer.last, self.run_dir)
