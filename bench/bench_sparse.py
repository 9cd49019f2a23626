"""Dense vs sparse (visible-only) encoder: forward+backward time and executed FLOPs, side by side.

    python -m bench.bench_sparse                     # GPU: 224 px base model, bf16 autocast, B = 64, 128, 256
    python -m bench.bench_sparse --quick             # CPU smoke run: demo-size model, B = 4, 8, 16

For each batch size both models are built from the same seed (identical weights) and fed the same
images; their losses are checked equal first (fp32: 1e-4 relative; bf16 autocast: 2e-2), then one
training step's forward+backward (no optimizer) is timed, median of several runs (CUDA events on a GPU).
Executed FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward+backward of
each model (what actually runs: the sparse encoder skips masked tiles; a Triton op is not counted), next
to the analytical counts of ``infmae/model/flops.py``. Results:
``bench/results/bench_sparse_<device>_<date>.{json,csv}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.harness import environment, time_ms, write_results
from infmae.config import preset
from infmae.model.infmae import InfMAE

log = logging.getLogger("bench_sparse")


def _step(model: InfMAE, images: torch.Tensor, autocast):
    def step():
        with autocast:
            loss = model(images).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    return step


def executed_flops(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def run(
    quick: bool,
    batches: list[int],
    reps: int,
    out_dir=None,
    kernels: str = "auto",
    write: bool = True,
    on_row=None,
) -> list[dict]:
    """-> one row per batch size. ``kernels``: the masking/token kernels of both models (``triton`` runs
    them under the interpreter on a CPU); ``write``: result files under ``out_dir``; ``on_row``: sees each
    row as it is made."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    base = preset("demo" if quick else "paper_base").model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    rtol = 2e-2 if device.type == "cuda" else 1e-4
    rows = []
    for batch in batches:
        steps, losses, flops = {}, {}, {}
        generator = torch.Generator(device=device).manual_seed(1)
        images = torch.randn(batch, base.in_chans, *base.img_size, device=device, generator=generator)
        for encoder in ("dense", "sparse"):
            torch.manual_seed(0)
            model = InfMAE(dataclasses.replace(base, encoder=encoder, kernels=kernels)).to(device)
            steps[encoder] = _step(model, images, autocast)
            losses[encoder] = float(steps[encoder]().detach())
            flops[encoder] = executed_flops(steps[encoder])
        if abs(losses["sparse"] - losses["dense"]) > rtol * abs(losses["dense"]):
            raise AssertionError(f"B={batch}: sparse loss {losses['sparse']} != dense {losses['dense']}; not timing")
        times = {name: time_ms(step, device, warmup=2, reps=reps)["median_ms"] for name, step in steps.items()}
        row = {
            "batch": batch,
            "img_size": base.img_size[0],
            "dense_ms": round(times["dense"], 3),
            "sparse_ms": round(times["sparse"], 3),
            "speedup": round(times["dense"] / times["sparse"], 3),
            "dense_gflops": round(flops["dense"] / 1e9, 3),
            "sparse_gflops": round(flops["sparse"] / 1e9, 3),
            "flops_ratio": round(flops["sparse"] / flops["dense"], 4),
            # the analytical counts (infmae/model/flops.py, x3 for forward+backward) next to the counted ones
            "model_gflops_per_image": round(3 * model.flops_per_image() / 1e9, 3),
            "sparse_executed_gflops_per_image": round(3 * model.executed_flops_per_image() / 1e9, 3),
            "loss": losses["dense"],
        }
        rows.append(row)
        if on_row:
            on_row(row)
        log.info(
            "B=%d dense %.1f ms, sparse %.1f ms (%.2fx); executed FLOPs sparse/dense %.3f",
            batch,
            times["dense"],
            times["sparse"],
            row["speedup"],
            row["flops_ratio"],
        )
    if write:
        env = environment(device)
        env.update({"quick": quick, "reps": reps, "model": "demo" if quick else "paper_base", "kernels": kernels})
        kwargs = {} if out_dir is None else {"folder": out_dir}
        paths = write_results("bench_sparse_quick" if quick else "bench_sparse", rows, env, **kwargs)
        log.info("wrote %s", ", ".join(map(str, paths)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo model, small batches (CPU smoke run)")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--kernels", default="auto", choices=["auto", "triton", "reference"])
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    batches = args.batches or ([4, 8, 16] if args.quick else [64, 128, 256])
    run(args.quick, batches, args.reps, args.out, args.kernels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
