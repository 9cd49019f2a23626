"""One benchmark harness: device description, timing (median of many runs, CUDA events on GPU),
peak tables, and results written as JSON + CSV under bench/results/ with device, versions, SHA, date.

Rules (shared/README.md section 6): check the reference equal before timing it, warm up, report the
median, and state speed only as ratios measured side by side in one run.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kernels import host_sync_guards_off

RESULTS = Path(__file__).resolve().parent / "results"

# peak DRAM bandwidth in GB/s, by a substring of torch.cuda.get_device_name(); most specific first
PEAK_BANDWIDTH_GBPS = [
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_bandwidth_gbps(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BANDWIDTH_GBPS if key in name), None)


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "git_sha": git_sha(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "host": platform.node(),
    }


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 5, reps: int = 30) -> dict:
    """Median (and quartiles) of ``reps`` timed calls after ``warmup`` calls, in milliseconds, with the
    kernel launchers' host-sync guards off (``kernels.host_sync_guards_off``)."""
    with host_sync_guards_off():  # as in training (the results were checked with them on)
        samples = _samples_ms(fn, device, warmup, reps)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "p25_ms": quartiles[0], "p75_ms": quartiles[2], "reps": reps}


def _samples_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def write_results(name: str, rows: list[dict], env: dict, folder: Path = RESULTS) -> tuple[Path, Path]:
    """-> (json path, csv path), named after the benchmark, the device and the date."""
    folder.mkdir(parents=True, exist_ok=True)
    device = "".join(c if c.isalnum() else "-" for c in env["device"]).strip("-")[:40]
    stem = f"{name}_{device}_{env['date'][:10]}"
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    json_path.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    columns = sorted({key for row in rows for key in row})
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path
