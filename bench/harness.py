"""One benchmark harness: device description, timing, compile bookkeeping, time limits, peak tables, and
results written as JSON + CSV with device, versions, git SHA and date.

Rules (docs/specification.md, 'Benchmark rules'): check the reference equal before timing it, warm up,
report the median, and state speed only as ratios measured side by side in one run.

Two timers:
- ``time_ms`` for work of milliseconds and more (a training step, a forward+backward of the model): one
  device event pair and one sync per repetition; the sync costs microseconds, nothing at that scale.
- ``time_rotating`` for ops of microseconds (the token ops run for tens of us): a sync per call would
  time Python and the launch, and one input set reused would sit in the 50-60 MB L2 and time the cache,
  not HBM. So the op runs over several input sets that together move more than twice the L2, back to
  back, one sync per batch of calls; on a GPU the same calls are also captured in a CUDA graph and
  replayed, which leaves the launch gaps out. The graph replay is the op's device time (GB/s come from
  it); the back-to-back time is what an eager training step pays for the op, launches included.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from infmae.training.metrics import device_peaks, peak_tflops  # noqa: F401 - peak_tflops: bench's API
from kernels import host_sync_guards_off

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# the device and the software
# ---------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_bandwidth_gbps(device: torch.device) -> float | None:
    """Datasheet HBM bandwidth (``infmae.training.metrics.HARDWARE_PEAKS``); None on the CPU or an unknown
    board."""
    peaks = device_peaks(device)
    return peaks.hbm_gbps if peaks else None


def l2_cache_bytes(device: torch.device) -> int:
    """The device's L2 in bytes (0 on the CPU: there the benchmarks say nothing about caches)."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))


def git_sha() -> str:
    """The commit: ``INFMAE_GIT_SHA`` where set (a copied working tree without .git, e.g. on a lent GPU
    machine), else ``git rev-parse --short HEAD``, else 'unknown'."""
    if os.environ.get("INFMAE_GIT_SHA"):
        return os.environ["INFMAE_GIT_SHA"]
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


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def environment(device: torch.device) -> dict:
    env = {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "git_sha": git_sha(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "host": platform.node(),
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        peaks = device_peaks(device)
        env.update(
            capability=f"sm_{major}{minor}",
            l2_mb=l2_cache_bytes(device) / 2**20,
            peak_board=peaks.board if peaks else None,
            peak_bf16_tflops=peaks.bf16_tflops if peaks else None,
            peak_hbm_gbps=peaks.hbm_gbps if peaks else None,
        )
    return env


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 5, reps: int = 30) -> dict:
    """Median (and quartiles) of ``reps`` timed calls after ``warmup`` calls, in milliseconds, with the
    kernel launchers' host-sync guards off (``kernels.host_sync_guards_off``). One sync per call: for
    work of milliseconds; microsecond ops go through ``time_rotating``."""
    with host_sync_guards_off():  # as in training (the results were checked with them on)
        samples = _samples_ms(fn, device, warmup, reps)
    return _summary(samples, reps)


def _summary(samples: list[float], reps: int) -> dict:
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


def cuda_synchronized_timer() -> float:
    """``time.perf_counter`` after the GPU finished its queued work: a timer for pytest-benchmark (which
    reads a host clock around each round), so a round's time is the device's and not the launch's."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def input_set_count(bytes_per_call: int, device: torch.device, most: int = 64) -> int:
    """How many input sets to rotate over so that one pass moves at least twice the L2 (2 at least, so no
    two consecutive calls share inputs; 1 on the CPU, where caches are not what is measured)."""
    l2 = l2_cache_bytes(device)
    if not l2:
        return 1
    return max(2, min(most, math.ceil(2 * l2 / max(1, bytes_per_call))))


def time_rotating(
    call: Callable[[object], object],
    input_sets: Sequence[object],
    device: torch.device,
    reps: int = 20,
    warmup: int = 2,
    batch_ms: float = 2.0,
    graph: bool = True,
) -> dict:
    """Per-call time of ``call(inputs)`` over ``input_sets`` in rotation, in milliseconds.

    -> ``median_ms`` (the CUDA-graph replay where one could be captured, else the back-to-back launches),
    ``launch_ms`` (back to back, one sync per batch of calls), ``graph_ms`` (or None, with ``graph_error``),
    ``method``, ``input_sets``, ``calls_per_sample``, ``reps``. A batch is whole passes over the sets,
    enough of them to last ``batch_ms``; each sample is one batch's time over its calls."""
    sets = list(input_sets)
    with host_sync_guards_off():
        for _ in range(warmup):
            for inputs in sets:
                call(inputs)
        _sync(device)
        one_pass = _pass_ms(call, sets, device)
        passes = max(1, math.ceil(batch_ms / max(one_pass, 1e-3)))
        calls = passes * len(sets)
        launch = [_pass_ms(call, sets * passes, device) / calls for _ in range(reps)]
        result = {
            "launch_ms": statistics.median(launch),
            "graph_ms": None,
            "input_sets": len(sets),
            "calls_per_sample": calls,
            "reps": reps,
        }
        if graph and device.type == "cuda":
            try:
                result["graph_ms"] = _graph_ms(call, sets, device, passes, reps)
            except Exception as error:  # e.g. an op that syncs with the host: recorded, timed by launches
                result["graph_error"] = f"{type(error).__name__}: {error}"[:300]
    result["method"] = "cuda_graph" if result["graph_ms"] is not None else "launches"
    result["median_ms"] = result["graph_ms"] if result["graph_ms"] is not None else result["launch_ms"]
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass_ms(call: Callable, sets: list, device: torch.device) -> float:
    """Wall time of one call per entry of ``sets``, back to back, from device events on a GPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for inputs in sets:
            call(inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    for inputs in sets:
        call(inputs)
    return (time.perf_counter() - t0) * 1e3


def _graph_ms(call: Callable, sets: list, device: torch.device, passes: int, reps: int) -> float:
    """Capture one call per input set in a CUDA graph (after a warm-up on a side stream, as capture
    requires) and time ``passes`` replays per sample -> median ms per call."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for inputs in sets:
            call(inputs)
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        for inputs in sets:
            call(inputs)
    cuda_graph.replay()  # the first replay uploads the graph
    torch.cuda.synchronize(device)
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(passes):
            cuda_graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / (passes * len(sets)))
    del cuda_graph
    return statistics.median(samples)


def device_ceilings(device: torch.device) -> dict:
    """The two ceilings measured on this card (METHOD: datasheet rates are leads): a device-to-device copy
    of 2 GiB (bytes read + written per second) and a bf16 8192^3 matrix product on random data."""
    if device.type != "cuda":
        return {}
    ceilings = {"copy_GBps": 2 * 2**31 / _copy_ms(device, 2**31) / 1e6}
    ceilings["bf16_matmul_tflops"] = 2 * 8192**3 / _matmul_ms(device, 8192) / 1e9
    torch.cuda.empty_cache()
    return ceilings


def _copy_ms(device: torch.device, size: int) -> float:
    source = torch.empty(size, dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    return time_ms(lambda: target.copy_(source), device, warmup=2, reps=10)["median_ms"]


def _matmul_ms(device: torch.device, n: int) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return time_ms(lambda: a @ b, device, warmup=3, reps=10)["median_ms"]


# ---------------------------------------------------------------------------------------------
# torch.compile bookkeeping: one compile per (variant, batch size), no silent fallback
# ---------------------------------------------------------------------------------------------
class CompileFallback(RuntimeError):
    """A compiled function recompiled or broke its graph where it must not: its time would not be the
    compiled code's."""


# dynamo's errors for what CompileWatch forbids: a recompile while timing (RecompileError, a
# TorchDynamoException) and the recompile limit (FailOnRecompileLimitHit, a plain Exception)
COMPILE_ERRORS: tuple[type[BaseException], ...] = (
    torch._dynamo.exc.TorchDynamoException,
    torch._dynamo.exc.FailOnRecompileLimitHit,
)


class CompileWatch:
    """Dynamo's state for one measured variant: reset on entry (a fresh cache, so earlier shapes and
    variants cannot use up the recompile limit), the recompile limit made an error instead of a silent
    fallback to eager, and ``timing()`` around the timed calls, in which any compile (a recompile or a new
    frame) is an error too. ``stats()`` -> the counts for the result row.

        watch = CompileWatch("engine B=256")
        step()                      # warm-up: the compiles happen here
        with watch.timing():
            ... timed calls ...
    """

    def __init__(self, what: str, allow_graph_breaks: bool = False):
        from torch._dynamo.utils import counters

        self.what, self.allow_graph_breaks, self._counters = what, allow_graph_breaks, counters
        torch._dynamo.reset()
        counters.clear()
        self._saved = torch._dynamo.config.fail_on_recompile_limit_hit
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        self._before_timing: dict | None = None

    def close(self) -> None:
        torch._dynamo.config.fail_on_recompile_limit_hit = self._saved

    def __enter__(self) -> CompileWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _snapshot(self) -> dict:
        return {
            "frames": self._counters["frames"]["total"],
            "graphs": self._counters["stats"]["unique_graphs"],
            "graph_breaks": sum(self._counters["graph_break"].values()),
        }

    def check_graph_breaks(self) -> None:
        breaks = self._counters["graph_break"]
        if breaks and not self.allow_graph_breaks:
            reasons = "; ".join(f"{reason} (x{count})" for reason, count in list(breaks.items())[:3])
            raise CompileFallback(
                f"{self.what}: expected every compiled block in one graph, got {sum(breaks.values())} graph "
                f"break(s): {reasons}; part of the step would run eagerly, so it is not timed"
            )

    @contextmanager
    def timing(self):
        self.check_graph_breaks()
        self._before_timing = self._snapshot()
        saved = torch._dynamo.config.error_on_recompile
        torch._dynamo.config.error_on_recompile = True
        try:
            yield
        except COMPILE_ERRORS as error:
            raise CompileFallback(f"{self.what}: expected no compile while timing, got {error}") from error
        finally:
            torch._dynamo.config.error_on_recompile = saved
        after = self._snapshot()
        if after != self._before_timing:
            raise CompileFallback(
                f"{self.what}: expected no compile while timing, got {after['frames'] - self._before_timing['frames']}"
                f" frame(s) and {after['graphs'] - self._before_timing['graphs']} graph(s) compiled during the timed "
                "calls; the warm-up did not cover every shape, so the time includes compiling"
            )

    def stats(self) -> dict:
        snapshot = self._snapshot()
        before = self._before_timing or snapshot
        return {
            "compiled_frames": snapshot["frames"],
            "compiled_graphs": snapshot["graphs"],
            "graph_breaks": snapshot["graph_breaks"],
            "compiles_while_timing": snapshot["frames"] - before["frames"],
        }


# ---------------------------------------------------------------------------------------------
# time limits: one slow part must not eat the others' time
# ---------------------------------------------------------------------------------------------
class StepTimeout(Exception):
    """Raised in the main thread when a part of a benchmark runs past its limit."""


@contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise ``StepTimeout`` in the main thread once ``seconds`` have passed (SIGALRM; Python code is
    interrupted at its next bytecode, a running CUDA kernel or C++ call first finishes). No limit when
    ``seconds`` is None or off the main thread."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise StepTimeout(f"{what}: expected to finish within its limit of {seconds:.0f} s, got more; stopped")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
def write_results(name: str, rows: list[dict], env: dict, folder: Path = RESULTS) -> tuple[Path, Path]:
    """-> (json path, csv path), named after the benchmark, the device and the date."""
    folder.mkdir(parents=True, exist_ok=True)
    device = "".join(c if c.isalnum() else "-" for c in env["device"]).strip("-")[:40]
    stem = f"{name}_{device}_{env['date'][:10]}"
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    json_path.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    write_csv(csv_path, rows)
    return json_path, csv_path


def write_csv(path: Path, rows: list[dict], first: Sequence[str] = ()) -> None:
    """Rows with the union of their keys as columns (``first`` leading), written to a temporary name and
    renamed, so a reader (or a kill) never sees half a file."""
    columns = [c for c in first if any(c in row for row in rows)]
    columns += sorted({key for row in rows for key in row} - set(columns))
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=2, default=str))
    partial.replace(path)


def log_row(row: dict, stream=sys.stdout) -> None:
    print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), file=stream)
