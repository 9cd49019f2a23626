"""The progress line and ``metrics.jsonl`` (one JSON record per logged step, for plotting)."""

from __future__ import annotations

import json
import logging
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def peak_memory_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set on the CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_line(record: dict) -> str:
    """One progress line. ``img/s`` is per device; with several ranks the total follows it. ``mfu``
    is ``n/a`` on a device without a known peak (see HARDWARE_PEAKS)."""
    rate = f"img/s {record['img_per_s']:.1f}"
    if record.get("world_size", 1) > 1:
        per = "gpu" if record.get("device", "cuda") == "cuda" else "rank"
        rate += f"/{per} {record['img_per_s_total']:.1f} total"
    mfu = record.get("mfu")
    return (
        f"step {record['step']}/{record['total_steps']} epoch {record['epoch']} "
        f"loss {record['loss']:.4f} lr {record['lr']:.3e} grad_norm {record['grad_norm']:.3f} "
        f"{rate} data_wait {record['data_wait_pct']:.1f}% "
        f"mem {record['mem_gib']:.2f}GiB eta {format_eta(record['eta_s'])} "
        f"mfu {'n/a' if mfu is None else f'{mfu:.1%}'}"
    )


class MetricsWriter:
    """Appends records to RUN/metrics.jsonl; on resume, drops records past the resumed step so the
    file reads as one uninterrupted run."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))

    def first(self, key: str) -> tuple[int, float] | None:
        """(step, value) of the run's first record holding ``key`` (the run's, not this session's)."""
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                record = json.loads(line) if line.strip() else {}
                if record.get(key) is not None:
                    return record["step"], record[key]
        return None

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class Throughput:
    """Wall time and data-wait time between log steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.data_wait = 0.0
        self.images = 0

    def summary(self) -> tuple[float, float, float]:
        """-> (elapsed seconds, images per second, data-wait percent)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return elapsed, self.images / elapsed, 100.0 * self.data_wait / elapsed


class LogWindow:
    """The micro-batches between two progress lines: their loss sum stays on the device (read once, at the
    log step: the only host sync of a step), with the images seen and the time spent waiting for data."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.losses = 0
        self.meter = Throughput()

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss.detach()
        self.losses += 1
        self.meter.images += images

    def close(self, world_size: int) -> tuple[float, float, float]:
        """-> (mean loss over every rank, images/s of all ranks, data-wait percent of this rank) and starts
        the next window. Under a process group: one all-reduce (loss sum and images/s together)."""
        _, img_per_s, wait_pct = self.meter.summary()
        if dist.is_available() and dist.is_initialized():
            packed = torch.stack([self.loss_sum.detach().float(), torch.tensor(img_per_s, device=self.device)])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            loss, img_per_s = packed[0].item() / (self.losses * world_size), packed[1].item()
        else:
            loss = self.loss_sum.item() / self.losses
        self.loss_sum.zero_()
        self.losses = 0
        self.meter.reset()
        return loss, img_per_s, wait_pct


def step_record(
    *,
    step: int,
    stop_step: int,
    epoch: int,
    loss: float,
    lr: float,
    grad_norm: float,
    img_per_s_total: float,
    wait_pct: float,
    world_size: int,
    device: torch.device,
    flops_per_image: float,
    step_time: float,
) -> dict:
    """One logged step's record (a line of metrics.jsonl, a TensorBoard point, a progress line): rates per
    device, achieved TFLOP/s (forward + backward = 3x forward) and MFU against the hardware table."""
    per_device = img_per_s_total / world_size
    achieved = 3 * flops_per_image * per_device / 1e12
    peak = peak_tflops(device)
    return {
        "step": step,
        "total_steps": stop_step,
        "epoch": epoch,
        "loss": loss,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "img_per_s": per_device,
        "img_per_s_total": img_per_s_total,
        "world_size": world_size,
        "device": device.type,
        "tflops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
        "data_wait_pct": wait_pct,
        "mem_gib": peak_memory_gib(device),
        "eta_s": step_time * (stop_step - step),
        "time": time.time(),
    }


class TensorBoard:
    """TensorBoard events in RUN/tensorboard when the ``tensorboard`` package is installed (it is not a
    dependency: ``pip install tensorboard`` to get events); otherwise a no-op, said once."""

    KEYS = (
        "loss",
        "lr",
        "grad_norm",
        "img_per_s",
        "img_per_s_total",
        "tflops_per_s",
        "mfu",
        "data_wait_pct",
        "mem_gib",
        "val_loss",
        "val_baseline_loss",
        "val_psnr",
    )

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard events off: `tensorboard` is not installed (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        for key in self.KEYS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", record[key], record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------
# hardware peaks (MFU and % of memory bandwidth)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DevicePeaks:
    """One board's datasheet peaks: dense bf16 matrix rate (no 2:4 sparsity) and HBM bandwidth."""

    board: str
    bf16_tflops: float
    hbm_gbps: float


# Matched against torch.cuda.get_device_name() (e.g. "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"),
# most specific first, whole words, so a GH200 or an H800 is not taken for an H200 or an H100: an unknown
# board reports n/a rather than a guess. The PCIe and NVL boards run at lower clocks than the SXM ones.
HARDWARE_PEAKS: list[tuple[str, DevicePeaks]] = [
    (r"\bA100\b.*\b80GB\b.*\bPCIe\b", DevicePeaks("A100 80GB PCIe", 312.0, 1935.0)),
    (r"\bA100\b.*\b80GB\b", DevicePeaks("A100 80GB SXM", 312.0, 2039.0)),
    (r"\bA100\b", DevicePeaks("A100 40GB", 312.0, 1555.0)),  # SXM4 and PCIe 40GB alike
    (r"\bH100\b.*\bNVL\b", DevicePeaks("H100 NVL", 835.0, 3900.0)),
    (r"\bH100\b.*\bPCIe\b", DevicePeaks("H100 PCIe", 756.0, 2000.0)),
    (r"\bH100\b", DevicePeaks("H100 SXM", 989.0, 3350.0)),
    (r"\bH200\b.*\bNVL\b", DevicePeaks("H200 NVL", 835.0, 4800.0)),
    (r"\bH200\b", DevicePeaks("H200", 989.0, 4800.0)),
]


def peaks_for_name(name: str) -> DevicePeaks | None:
    """The table entry for a CUDA device name, None for a board not in the table."""
    return next((peaks for pattern, peaks in HARDWARE_PEAKS if re.search(pattern, name, re.IGNORECASE)), None)


def device_peaks(device: torch.device) -> DevicePeaks | None:
    """The table entry for ``device``; None on the CPU and on boards not in the table."""
    if device.type != "cuda":
        return None
    return peaks_for_name(torch.cuda.get_device_name(device))


def peak_tflops(device: torch.device) -> float | None:
    """The bf16 dense peak of ``device`` for MFU; None: MFU n/a (the CPU, a board not in the table)."""
    peaks = device_peaks(device)
    return peaks.bf16_tflops if peaks else None
