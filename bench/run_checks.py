"""The benchmarks of ``bench/gpu_checks.sh``, in one Python process (one torch import, one CUDA context,
one compile cache), each part under its own time limit, results written into one folder as they come.

    python -m bench.run_checks --out DIR --quick            # GPU: the training shape only (a short lease)
    python -m bench.run_checks --out DIR                    # GPU: every shape and batch size
    python -m bench.run_checks --out DIR --quick --dry-run  # CPU: the same code at tiny shapes

Parts, in this order (``--parts`` picks some):
- ``ceilings``: the card's own copy bandwidth and bf16 matrix rate (GPU only), next to the datasheet's;
- ``train``: the training step of the reference, the sparse engine without and with compile, and the
  default engine (``train.engine=engine`` as a run sets it up: ``bench.bench_train``; synthetic input),
  img/s, MFU and executed-FLOP utilisation;
- ``sparse``: the dense vs the sparse encoder, forward+backward (``bench.bench_sparse``);
- ``kernels``: every registered op vs its eager twin vs ``torch.compile`` of the twin
  (``bench.bench_kernels``).

Quick (GPU): 224 px base model, B=256, bf16 autocast; kernels at B=256, 224 px, C=3, D=768. Full: also
B=64 and 128, and the C=1 and 1024 px kernel shapes. A dry run (CPU, ``TRITON_INTERPRET=1``): the demo
model at B=2, the tiny kernel shape, ``torch.compile`` with the ``aot_eager`` backend (dynamo and AOT
autograd, no inductor code generation: the compile bookkeeping runs, in seconds); its numbers say only
that the code runs.

A part that runs past its limit is stopped (``bench.harness.time_limit``) and the next one starts; what it
measured before is kept. A part that finishes early passes its unused seconds on to the next. Into
``--out``: ``results.json`` (environment with device, versions, git SHA and date; the measured ceilings;
each part's status, time and error; every row) and ``results.csv`` (every row, its part first), both
rewritten after every row. Exit status 0 when every part passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

if "--dry-run" in sys.argv:  # before any Triton kernel is defined
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from bench import bench_kernels, bench_sparse, bench_train  # noqa: E402
from bench.harness import StepTimeout, device_ceilings, environment, time_limit, write_csv, write_json  # noqa: E402
from infmae.config import preset  # noqa: E402

PARTS = ("ceilings", "train", "sparse", "kernels")
# seconds per part; quick: 220 s in all, inside the 230 s gpu_checks.sh gives this process (bench/README.md).
# A part that finishes early passes its unused seconds on to the next (the engine's compile is the least
# predictable cost, so the train part comes first and the kernels, whose rows are kept one by one, last).
LIMITS = {
    "quick": {"ceilings": 10, "train": 120, "sparse": 30, "kernels": 60},
    "full": {"ceilings": 20, "train": 900, "sparse": 300, "kernels": 900},
    "dry": {"ceilings": 20, "train": 90, "sparse": 30, "kernels": 60},
}


def plan(quick: bool, dry_run: bool) -> dict:
    """What each part measures in this mode."""
    if dry_run:
        return {
            "model": "demo",
            "train_batches": [2] if quick else [2, 4],
            "train_reps": 1,
            "train_warmup": 0,
            "sparse_batches": [2],
            "sparse_reps": 1,
            "kernel_shapes": "tiny",
            "kernel_reps": 1,
            "backend": "aot_eager",
        }
    return {
        "model": "paper_base",
        "train_batches": [256] if quick else [64, 128, 256],
        "train_reps": 10 if quick else 20,
        "train_warmup": 3 if quick else 10,
        "sparse_batches": [256] if quick else [64, 128, 256],
        "sparse_reps": 5 if quick else 10,
        "kernel_shapes": "train" if quick else "full",
        "kernel_reps": 10 if quick else 20,
        "backend": "inductor",
    }


class Results:
    """results.json and results.csv in ``folder``, rewritten on every change."""

    def __init__(self, folder: Path, environment: dict):
        self.folder = folder
        self.data = {"environment": environment, "ceilings": {}, "parts": {}, "results": []}
        self.save()

    def add(self, part: str, row: dict) -> None:
        self.data["results"].append({"part": part, **row})
        self.save()

    def save(self) -> None:
        write_json(self.folder / "results.json", self.data)
        write_csv(self.folder / "results.csv", self.data["results"], first=("part", "variant", "op", "case", "pass"))


def _train(results: Results, device: torch.device, settings: dict) -> None:
    base = preset(settings["model"]).model
    rows = bench_train.run(
        base,
        settings["train_batches"],
        # the default engine last: its compile (autotuned on a GPU) is the least predictable cost
        ["reference", "engine_nocompile", "engine", "engine_default"],
        ["synthetic"],
        device,
        settings["train_reps"],
        settings["train_warmup"],
        settings["backend"],
        on_row=lambda row: results.add("train", row),
    )
    failed = [f"{row['variant']} B={row['batch']}: {row['error']}" for row in rows if "error" in row]
    if failed:
        raise RuntimeError("; ".join(failed))


def _sparse(results: Results, device: torch.device, settings: dict) -> None:
    kernels = "triton" if os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu" else "auto"
    bench_sparse.run(
        settings["model"] == "demo",
        settings["sparse_batches"],
        settings["sparse_reps"],
        kernels=kernels,
        write=False,
        on_row=lambda row: results.add("sparse", row),
    )


def _kernels(results: Results, device: torch.device, settings: dict) -> None:
    rows = bench_kernels.run_cases(
        bench_kernels.build_cases(shapes=settings["kernel_shapes"]),
        device,
        compile_twin=True,
        reps=settings["kernel_reps"],
        backend=settings["backend"],
        on_row=lambda row: results.add("kernels", row),
    )
    failed = bench_kernels.failed_checks(rows)
    if failed:
        raise RuntimeError(f"expected every implementation to equal its twin, got differences in {failed}")


def _ceilings(results: Results, device: torch.device, settings: dict) -> None:
    results.data["ceilings"] = device_ceilings(device)
    results.save()


RUNNERS = {"ceilings": _ceilings, "train": _train, "sparse": _sparse, "kernels": _kernels}


def run_part(name: str, limit: float, results: Results, device: torch.device, settings: dict) -> str:
    """One part under its time limit -> 'passed', 'failed' or 'timeout' (recorded in results.json)."""
    print(f"--- {name} (limit {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    status, error = "passed", None
    try:
        with time_limit(limit, f"bench part {name!r}"):
            RUNNERS[name](results, device, settings)
    except StepTimeout as stop:
        status, error = "timeout", str(stop)
    except Exception as failure:  # recorded; the other parts still run
        # a limit that fired inside torch.compile can come back wrapped in dynamo's own exception
        over = time.perf_counter() - start >= limit
        status, error = ("timeout" if over else "failed"), f"{type(failure).__name__}: {failure}"
        traceback.print_exc()
    finally:
        import gc

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    seconds = time.perf_counter() - start
    results.data["parts"][name] = {"status": status, "seconds": round(seconds, 1), "limit_s": limit, "error": error}
    results.save()
    print(f"--- {name}: {status} in {seconds:.0f} s" + (f": {error[:300]}" if error else ""), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (created)")
    parser.add_argument("--quick", action="store_true", help="the training shape only")
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny shapes")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--limits", default="", help="seconds per part, e.g. train=120,kernels=90")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        parser.error(f"--parts: expected some of {', '.join(PARTS)}, got {sorted(set(parts) - set(PARTS))}")
    limits = dict(LIMITS["dry" if args.dry_run else "quick" if args.quick else "full"])
    for item in filter(None, args.limits.split(",")):
        name, _, seconds = item.partition("=")
        if name not in PARTS or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--limits: expected PART=SECONDS with PART in {', '.join(PARTS)}, got {item!r}")
        limits[name] = float(seconds)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type == "cpu" and not args.dry_run:
        parser.error("no CUDA device: run with --dry-run on a CPU (interpreter, tiny shapes)")
    if args.dry_run:  # one thread: on a busy 2-core machine OpenMP's spinning threads make CPU steps 100x slower
        torch.set_num_threads(1)
    settings = plan(args.quick, args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    env.update(mode="quick" if args.quick else "full", dry_run=args.dry_run, plan=settings, limits=limits)
    print(" | ".join(f"{key} {env[key]}" for key in ("device", "torch", "triton", "numpy", "python", "git_sha")))
    results = Results(args.out, env)
    statuses, banked = {}, 0.0
    for name in parts:
        if name == "ceilings" and device.type != "cuda":
            continue
        start = time.perf_counter()
        statuses[name] = run_part(name, limits[name] + banked, results, device, settings)
        banked = max(0.0, limits[name] + banked - (time.perf_counter() - start))
    return 0 if all(status == "passed" for status in statuses.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
