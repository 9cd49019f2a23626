"""Training throughput: images/s, MFU and executed-FLOP utilisation of the training step, side by side in
one run, at several batch sizes, for these variants:

- ``reference``: the eager reference model in plain PyTorch (bf16 autocast on GPU, reference kernels,
  dense encoder, foreach AdamW);
- ``engine_default``: what ``infmae pretrain`` runs with ``train.engine=engine`` on this device (on CUDA
  the default of every preset): ``infmae.config.resolve_for_device``'s fields applied by the trainer's own
  ``infmae.training.engine`` (per-block compile with its modes and static shapes, channels-last, bf16
  residual, Triton kernels, the default encoder ``DEFAULT_ENCODER``), fused AdamW;
- ``engine``: the same with the sparse encoder (what ``DEFAULT_ENCODER = "sparse"`` would run);
- ``engine_nocompile``: ``engine`` without ``torch.compile`` (what the compile adds);
- ``engine_cuda_graphs``: ``engine_default`` with ``train.cuda_graphs`` (compile mode ``reduce-overhead``);

(the loader's uint16 wire format is not part of a compute-only step)
on two inputs:

- ``synthetic``: one fixed on-device batch (compute only: no data loading);
- ``dali``: real images through the DALI loader (``--data``: a folder, pack or curate manifest; by
  default the data benchmark's generated 640x512 frames, packed), each step taking the next batch, so
  the images/s show whether the input keeps up with the step (compare with the ``synthetic`` row).

    python -m bench.bench_train                      # GPU: 224 px base model, B = 64, 128, 256
    python -m bench.bench_train --input synthetic --variants reference,engine_default,engine,engine_nocompile
    python -m bench.bench_train --quick              # CPU smoke run: demo-size model, tiny batches

Compiles: dynamo is reset for every (variant, batch size), so earlier shapes cannot use up the recompile
limit; hitting the limit, a graph break in a compiled block, or any compile while the step is timed
stops that variant with an error (``bench.harness.CompileWatch``) instead of timing a step that runs
partly eagerly. The row records the compiled graphs and the first (compiling) step's time.

Two utilisations against the bf16 dense peak (``infmae.training.metrics.HARDWARE_PEAKS``; n/a on a
CPU or an unknown board): ``mfu`` counts the model's dense-equivalent FLOPs (3x the forward per image,
the same for every variant: the number to compare across engines), ``executed_flop_utilization`` the
FLOPs this variant executes (the sparse encoder skips the masked tiles: 43.6 of 79.7 GFLOP per image at
224 px), which says how busy the device is. Results: bench/results/bench_train_*.{json,csv} (or ``--out``).
The loader alone (no model) is measured by ``bench/bench_data.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.harness import (
    COMPILE_ERRORS,
    CompileFallback,
    CompileWatch,
    environment,
    peak_tflops,
    time_ms,
    write_results,
)
from infmae.config import Config, ModelConfig, TrainConfig, preset, resolve_for_device
from infmae.model.infmae import InfMAE
from infmae.training.engine import compile_options, prepare_model, to_model_input
from infmae.training.hardware import autocast_for
from infmae.training.optim import build_optimizer
from infmae.training.parallel import apply_compile, parallelize
from kernels import host_sync_guards_off

log = logging.getLogger("bench_train")

VARIANTS = ("reference", "engine_default", "engine", "engine_nocompile", "engine_cuda_graphs")


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()


def engine_model_config(base: ModelConfig, engine: bool) -> ModelConfig:
    """The reference: twin kernels, dense encoder. The engine: the Triton kernels (``auto``: where CUDA is;
    ``triton`` under the CPU interpreter, so a dry run runs them too) and the sparse encoder."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    changes = {"kernels": ("triton" if _interpreted() else "auto") if engine else "reference"}
    if "encoder" in fields:  # the sparse encoder, where this tree has it
        changes["encoder"] = "sparse" if engine else "dense"
    return dataclasses.replace(base, **changes)


def variant_configs(variant: str, base: ModelConfig, device: torch.device) -> tuple[ModelConfig, TrainConfig | None]:
    """The model fields and the resolved train fields (None: the reference, set up by hand) of ``variant``.
    The engine variants are a run with ``train.engine=engine`` on ``device`` (the Triton kernels under the
    CPU interpreter too, so a dry run runs them); ``engine`` and ``engine_nocompile`` with the sparse encoder."""
    if variant == "reference":
        return engine_model_config(base, engine=False), None
    resolved = resolve_for_device(Config(model=base, train=TrainConfig(engine="engine")), device.type)
    model, train = resolved.model, resolved.train
    if _interpreted():
        model = dataclasses.replace(model, kernels="triton")
    if variant in ("engine", "engine_nocompile"):
        model = dataclasses.replace(model, encoder="sparse")
    if variant == "engine_nocompile":
        train = dataclasses.replace(train, compile=False)
    if variant == "engine_cuda_graphs":
        train = dataclasses.replace(train, cuda_graphs=True)
    return model, train


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


def build_step(
    model_config: ModelConfig,
    engine: bool,
    device: torch.device,
    batch: int,
    next_images=None,
    compile_backend: str | None = None,
    train: TrainConfig | None = None,
):
    """-> (model, step): one training step on a fixed synthetic batch, or on ``next_images()`` per step.
    ``compile_backend``: compile each block with it (the trainer's ``train.compile`` uses inductor).
    ``train``: a resolved engine configuration (``engine_default``), applied as the trainer applies it."""
    torch.manual_seed(0)
    model = InfMAE(model_config).to(device)
    options = {}
    if train is None:  # bf16 autocast on a GPU, fp32 on the CPU, the model as built
        train = TrainConfig(precision="bf16")
    else:  # as the trainer applies a resolved configuration
        model = prepare_model(model, train, device)
        options = compile_options(train, device.type)
        if compile_backend != "inductor":
            options.pop("mode")  # a mode is inductor's (the dry run compiles with aot_eager)
    model = parallelize(model, dataclasses.replace(train, compile=False), None, device)
    if compile_backend:
        apply_compile(model, backend=compile_backend, **options)  # what parallelize does for train.compile=true
    if device.type == "cuda" and not engine:  # the reference: plain foreach AdamW
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    else:
        optimizer = build_optimizer(model, train, 1e-4, device)
    autocast = autocast_for(device, train.precision)
    generator = torch.Generator(device=device).manual_seed(1)
    images = torch.randn(batch, model_config.in_chans, *model_config.img_size, device=device, generator=generator)

    def step():
        with autocast:
            loss = model(to_model_input(images if next_images is None else next_images(), train, model)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return model, step


def measure(
    variant: str,
    base: ModelConfig,
    device: torch.device,
    batch: int,
    reps: int,
    warmup: int,
    compile_backend: str | None,
    source: str = "synthetic",
    make_next_images: Callable[[ModelConfig], Callable] | None = None,
) -> dict:
    """One (variant, input, batch size): a fresh dynamo cache, the first step (compiles), ``warmup`` steps,
    then ``reps`` timed steps in which nothing may compile -> the result row. Raises ``CompileFallback``
    when the compiled step would not be the compiled code's."""
    engine = variant != "reference"
    config, train = variant_configs(variant, base, device)
    backend = compile_backend if train is not None and train.compile else None
    cudnn_benchmark = torch.backends.cudnn.benchmark  # the engine turns it on; the next variant starts as set
    with CompileWatch(f"bench_train {variant} B={batch}") as watch, host_sync_guards_off():
        next_images = make_next_images(config) if make_next_images else None
        model, step = build_step(config, engine, device, batch, next_images, backend, train)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first_step_s = time.perf_counter() - start
        for _ in range(warmup):
            step()
        with watch.timing():  # an error if anything compiles, recompiles or hits the recompile limit here
            timing = time_ms(step, device, warmup=0, reps=reps)
        compile_stats = watch.stats()
        model_flops = 3 * model.flops_per_image()
        executed_flops = 3 * model.executed_flops_per_image()
    torch.backends.cudnn.benchmark = cudnn_benchmark
    img_per_s = batch / (timing["median_ms"] / 1e3)
    peak = peak_tflops(device)
    row = {
        "variant": variant,
        "input": source,
        "batch": batch,
        "img_size": "x".join(map(str, config.img_size)),
        "kernels": config.kernels,
        "encoder": getattr(config, "encoder", "dense"),
        "compiled": backend or "no",
        "img_per_s": img_per_s,
        "ms_per_step": timing["median_ms"],
        "model_gflops_per_image": model_flops / 1e9,
        "executed_gflops_per_image": executed_flops / 1e9,
        "tflops_per_s": model_flops * img_per_s / 1e12,
        "executed_tflops_per_s": executed_flops * img_per_s / 1e12,
        "mfu": model_flops * img_per_s / 1e12 / peak if peak else None,
        "executed_flop_utilization": executed_flops * img_per_s / 1e12 / peak if peak else None,
        "first_step_s": first_step_s,
        **compile_stats,
        **timing,
    }
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return row


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _log_row(row: dict) -> None:
    if "error" in row:
        log.error("%-9s B=%4d %-9s FAILED: %s", row["input"], row["batch"], row["variant"], row["error"])
        return

    def pct(value):
        return "n/a" if value is None else f"{value:.1%}"

    log.info(
        "%-9s B=%4d %-9s %8.1f img/s  %.1f TFLOP/s  MFU %s  executed-FLOP util %s%s",
        row["input"],
        row["batch"],
        row["variant"],
        row["img_per_s"],
        row["tflops_per_s"],
        pct(row["mfu"]),
        pct(row["executed_flop_utilization"]),
        f"  {row['variant']}/reference {row['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in row else "",
    )


def run(
    base: ModelConfig,
    batches: list[int],
    variants: list[str],
    inputs: list[str],
    device: torch.device,
    reps: int,
    warmup: int,
    compile_backend: str | None,
    data: Path | None = None,
    threads: int = 1,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every (input, batch size, variant) -> rows; a variant that fails (out of memory, a compile fallback)
    gets a row with ``error`` and the others go on. ``on_row`` sees each row as it is made. Put
    ``reference`` first in ``variants``: the others' ``speedup_vs_reference`` needs it."""
    rows = []
    for source, batch in itertools.product(inputs, batches):
        reference = None

        def next_images_for(config, batch=batch, source=source):
            return None if source == "synthetic" else dali_images(data, config, batch, device, threads)

        for variant in variants:  # each row is handed on as soon as it is measured (a time limit keeps it)
            try:
                row = measure(variant, base, device, batch, reps, warmup, compile_backend, source, next_images_for)
            except (torch.OutOfMemoryError, CompileFallback, *COMPILE_ERRORS) as error:
                kind = "out of memory" if isinstance(error, torch.OutOfMemoryError) else "compile fallback"
                row = {"variant": variant, "input": source, "batch": batch, "error": f"{kind}: {error}"[:800]}
            finally:
                _release(device)
            if variant == "reference" and "error" not in row:
                reference = row
            elif reference is not None and "error" not in row:
                row["speedup_vs_reference"] = row["img_per_s"] / reference["img_per_s"]
            _log_row(row)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 64,128,256; --quick 4,8)")
    parser.add_argument("--quick", action="store_true", help="the demo model at small batches (CPU smoke run)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--variants", default="reference,engine_default,engine", help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="torch.compile backend of the engine (default: inductor on a GPU; on a CPU no compile unless given, "
        "e.g. aot_eager)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write no result files")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
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
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(variants) - set(VARIANTS):
        parser.error(f"--variants: expected some of {', '.join(VARIANTS)}, got {sorted(set(variants) - set(VARIANTS))}")
    backend = args.backend or ("inductor" if device.type == "cuda" else None)
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
    env.update(inputs=inputs, data=str(args.data) if "dali" in inputs else None, compile_backend=backend)
    warmup = 1 if args.quick else 10
    rows = run(base, sizes, variants, inputs, device, reps, warmup, backend, args.data, args.threads)
    if not args.no_write:
        paths = write_results("bench_train", rows, env, args.out or Path(__file__).parent / "results")
        log.info("wrote %s", ", ".join(map(str, paths)))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
