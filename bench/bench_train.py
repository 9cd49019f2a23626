"""Training throughput: images/s and MFU of (a) the eager reference model in plain PyTorch (bf16 autocast
on GPU, reference kernels, dense encoder, foreach AdamW) and (b) the engine (Triton kernels where they
run, the sparse encoder where there is one, per-block torch.compile, fused AdamW), side by side in one
run, at several batch sizes, on two inputs:

- ``synthetic``: one fixed on-device batch (compute only: no data loading);
- ``dali``: real images through the DALI loader (``--data``: a folder, pack or curate manifest; by
  default the data benchmark's generated 640x512 frames, packed), each step taking the next batch, so
  the images/s show whether the input keeps up with the step (compare with the ``synthetic`` row).

    python -m bench.bench_train                      # GPU: 224 px base model, B = 64, 128, 256
    python -m bench.bench_train --input synthetic    # compute only
    python -m bench.bench_train --quick              # CPU smoke run: demo-size model, tiny batches

MFU counts the model's dense-equivalent FLOPs (3x forward per image) against the bf16 dense peak table
of the trainer (A100 312, H100 989 TFLOP/s; n/a elsewhere). Results: bench/results/bench_train_*.{json,csv}.
The loader alone (no model) is measured by ``bench/bench_data.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.harness import environment, time_ms, write_results
from infmae.config import ModelConfig, TrainConfig, preset
from infmae.model.infmae import InfMAE
from infmae.training.optim import build_optimizer
from infmae.training.parallel import parallelize
from infmae.training.trainer import peak_tflops

log = logging.getLogger("bench_train")


def _model_config(base: ModelConfig, engine: bool) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    changes = {"kernels": "auto" if engine else "reference"}
    if "encoder" in fields:  # the sparse encoder, where this tree has it
        changes["encoder"] = "sparse" if engine else "dense"
    return dataclasses.replace(base, **changes)


def dali_images(data: Path, model_config: ModelConfig, batch: int, device: torch.device, threads: int):
    """-> a function returning the next ``[B, C, H, W]`` float32 batch of the DALI loader on ``device``,
    cycling over epochs."""
    from infmae.data import ImageFolderDataset
    from infmae.data.dali import DaliLoader

    dataset = ImageFolderDataset(data, img_size=model_config.img_size, in_chans=model_config.in_chans, seed=0)
    loader = DaliLoader(
        dataset,
        batch_size=batch,
        seed=0,
        num_threads=threads,
        device_id=(device.index or 0) if device.type == "cuda" else None,
    )
    if loader.steps_per_epoch < 1:
        raise ValueError(
            f"bench_train: expected at least {batch} images in {data}, got {len(dataset)}; "
            "pass a larger --data or smaller --batch-sizes"
        )

    def batches():
        epoch = 0
        while True:
            for item in loader.iter_epoch(epoch):
                yield item.to(device, channels=model_config.in_chans, non_blocking=True).images
            epoch += 1

    stream = batches()
    return lambda: next(stream)


def build_step(model_config: ModelConfig, engine: bool, device: torch.device, batch: int, next_images=None):
    """-> (model, step): one training step on a fixed synthetic batch, or on ``next_images()`` per step."""
    torch.manual_seed(0)
    model = InfMAE(model_config).to(device)
    train = TrainConfig(compile=engine and device.type == "cuda")
    model = parallelize(model, train, None, device)
    if device.type == "cuda" and not engine:  # the reference: plain foreach AdamW
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    else:
        optimizer = build_optimizer(model, train, 1e-4, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    generator = torch.Generator(device=device).manual_seed(1)
    images = torch.randn(batch, model_config.in_chans, *model_config.img_size, device=device, generator=generator)

    def step():
        with autocast:
            loss = model(images if next_images is None else next_images()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return model, step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 64,128,256; --quick 4,8)")
    parser.add_argument("--quick", action="store_true", help="the demo model at small batches (CPU smoke run)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only, write no result files")
    parser.add_argument("--input", default="synthetic,dali", help="comma-separated: synthetic, dali")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="images for --input dali (folder, pack or manifest; default: generated and packed)",
    )
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="DALI CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = preset("demo").model if args.quick else ModelConfig()
    sizes = [int(b) for b in (args.batch_sizes or ("4,8" if args.quick else "64,128,256")).split(",")]
    reps = args.reps or (5 if args.quick or device.type == "cpu" else 20)
    peak = peak_tflops(device)
    env = environment(device)
    inputs = [name.strip() for name in args.input.split(",") if name.strip()]
    unknown = set(inputs) - {"synthetic", "dali"}
    if unknown:
        parser.error(f"--input: expected synthetic and/or dali, got {sorted(unknown)}")
    if "dali" in inputs:
        from infmae.data.dali import dali_available

        if not dali_available():
            log.warning(
                "--input dali: DALI is not installed here (pip install nvidia-dali-cuda130); "
                "measuring the synthetic input only"
            )
            inputs.remove("dali")
        elif args.data is None:
            from bench.bench_data import make_data

            _, args.data, _ = make_data(Path("/tmp/bench_train_data"), count=max(4 * max(sizes), 64), wide=0)
    env["inputs"] = inputs
    env["data"] = str(args.data) if "dali" in inputs else None
    rows = []
    for source, batch in itertools.product(inputs, sizes):
        row_pair = {}
        for variant in ("reference", "engine"):
            config = _model_config(base, engine=variant == "engine")
            try:
                next_images = (
                    None if source == "synthetic" else dali_images(args.data, config, batch, device, args.threads)
                )
                model, step = build_step(config, variant == "engine", device, batch, next_images)
                flops = 3 * model.flops_per_image() if hasattr(model, "flops_per_image") else None
                timing = time_ms(step, device, warmup=1 if args.quick else 10, reps=reps)
            except torch.OutOfMemoryError:
                log.warning("%s B=%d: out of memory", variant, batch)
                model = step = next_images = None  # free this variant's memory before the next one
                torch.cuda.empty_cache()
                continue
            img_per_s = batch / (timing["median_ms"] / 1e3)
            tflops = flops * img_per_s / 1e12 if flops else None
            row = {
                "variant": variant,
                "input": source,
                "batch": batch,
                "img_size": "x".join(map(str, config.img_size)),
                "kernels": config.kernels,
                "encoder": getattr(config, "encoder", "dense"),
                "img_per_s": img_per_s,
                "tflops_per_s": tflops,
                "mfu": tflops / peak if peak and tflops else None,
                **timing,
            }
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            rows.append(row)
            row_pair[variant] = row
            del model, step, next_images
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if len(row_pair) == 2:
            ratio = row_pair["engine"]["img_per_s"] / row_pair["reference"]["img_per_s"]
            row_pair["engine"]["speedup_vs_reference"] = ratio
        for row in row_pair.values():
            mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
            log.info(
                "%-9s B=%4d %-9s %8.1f img/s  %s TFLOP/s  MFU %s%s",
                source,
                batch,
                row["variant"],
                row["img_per_s"],
                f"{row['tflops_per_s']:.1f}" if row["tflops_per_s"] else "n/a",
                mfu,
                f"  engine/reference {row['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in row else "",
            )
    if not args.no_write:
        paths = write_results("bench_train", rows, env)
        log.info("wrote %s", ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
