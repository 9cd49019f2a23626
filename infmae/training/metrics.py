"""The progress line and ``metrics.jsonl`` (one JSON record per logged step, for plotting)."""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch


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
    return (f"step {record['step']}/{record['total_steps']} epoch {record['epoch']} "
            f"loss {record['loss']:.4f} lr {record['lr']:.3e} grad_norm {record['grad_norm']:.3f} "
            f"img/s {record['img_per_s']:.1f} data_wait {record['data_wait_pct']:.1f}% "
            f"mem {record['mem_gib']:.2f}GiB eta {format_eta(record['eta_s'])}")


class MetricsWriter:
    """Appends records to RUN/metrics.jsonl; on resume, drops records past the resumed step so the
    file reads as one uninterrupted run."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

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
