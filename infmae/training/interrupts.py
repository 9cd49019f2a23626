"""Stopping a run on purpose, and noticing a rank that stopped on its own.

``GracefulStop``: SIGINT (Ctrl-C), SIGTERM (what SLURM and most schedulers send on preemption or at
the time limit) and SIGUSR1 (SLURM's ``--signal``) ask the run to finish its current step, save a
checkpoint and exit; a second Ctrl-C aborts at once. Under a process group the request is agreed on by
every rank once per step (one all-reduce of a single int on a gloo group of its own, no GPU sync), so
all ranks save the same step even when only one of them received the signal.

``Heartbeat``: every rank records the step it reached in the process group's store. When a collective
times out (``train.collective_timeout_s``), ``Heartbeat.explain`` names the ranks that fell behind:
the one that hangs or was stopped.
"""

from __future__ import annotations

import datetime
import logging
import signal
import threading

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def stop_group(distributed: bool, timeout_s: float):
    """The group stop requests are agreed on, once per step: a gloo (CPU) group of every rank apart from
    the training's, so agreeing needs no GPU sync. None for one process."""
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)) if distributed else None


class GracefulStop:
    """Context manager: installs the handlers (main thread only) and restores the previous ones."""

    def __init__(self, group=None):
        self.group = group  # a gloo group of every rank, or None for one process
        self.received: int | None = None  # the first signal this process received
        self.stopped_by: int | None = None  # the signal every rank agreed to stop on
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait for the save
                raise KeyboardInterrupt
            return  # e.g. torchrun's SIGTERM after the terminal's SIGINT: already stopping
        self.received = signum
        log.warning(
            "received %s: finishing this step, then saving a checkpoint (press Ctrl-C again to abort at once)",
            signal.Signals(signum).name,
        )

    def agreed(self) -> int | None:
        """The signal that stops the run, agreed by every rank (collective under a group), or None."""
        if self.group is None:
            self.stopped_by = self.received
        else:
            flag = torch.tensor([self.received or 0], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            self.stopped_by = int(flag.item()) or None
        return self.stopped_by


class Heartbeat:
    """The step each rank reached, kept in the default process group's store (a few bytes per step)."""

    KEY = "infmae/heartbeat/{}"

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        try:
            self.store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - no store (a caller's own group setup): no names in the message
            self.store = None
        self.beat(0)

    def beat(self, step: int) -> None:
        if self.store is not None:
            self.store.set(self.KEY.format(self.rank), str(step))

    def steps(self) -> dict[int, int | None]:
        """Each rank's last recorded step (None where the store does not answer for it)."""
        seen: dict[int, int | None] = {}
        if self.store is None:
            return seen
        try:
            self.store.set_timeout(datetime.timedelta(seconds=5))
        except Exception:  # noqa: BLE001 - keep the store's own timeout
            pass
        for rank in range(self.world_size):
            try:
                seen[rank] = int(self.store.get(self.KEY.format(rank)))
            except Exception:  # noqa: BLE001 - the store itself may be gone with the hung rank
                seen[rank] = None
        return seen

    def explain(self, step: int, timeout_s: float) -> str:
        """One line for a timed-out collective: which ranks are behind this one."""
        seen = self.steps()
        behind = [f"rank {r} (last at step {s})" for r, s in sorted(seen.items()) if s is not None and s < step]
        silent = [f"rank {r}" for r, s in sorted(seen.items()) if s is None]
        if behind or silent:
            who = ", ".join(behind + [f"{r} (no answer)" for r in silent])
            cause = f"{who} did not reach step {step}: that rank hangs or was stopped"
        else:
            cause = "every rank reached this step, so a rank hangs inside it (or the network does)"
        return (
            f"pretrain: expected every rank to join a collective within train.collective_timeout_s={timeout_s:g} s, "
            f"got a timeout on rank {self.rank} at step {step}: {cause}. Check that rank's process and node"
        )


def log_how_to_continue(stopped_by: int, step: int, checkpoint, run_dir) -> None:
    """The warning at the end of a run a signal stopped: where it stopped and the command that continues it."""
    log.warning(
        "stopped at step %d by %s (checkpoint %s); continue with: infmae pretrain --output %s --resume",
        step,
        signal.Signals(stopped_by).name,
        checkpoint.name if checkpoint else "none",
        run_dir,
    )
