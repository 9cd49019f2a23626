"""Input pipeline benchmark: images/s of the reference loader and of DALI on files and on a pack.

    python -m bench.bench_data [--count 256] [--wide 4] [--batch 32] [--threads N] [--data /tmp/bench_data]
    python -m bench.bench_data --smoke        # tiny, for the test suite

On the same images (the synthetic generator at realistic sizes: ``--count`` frames of 640x512 in the
generator's mix of 8/16-bit PNG, 16-bit TIFF raw/LZW/deflate, gray/colour JPEG and BMP, plus ``--wide``
frames of 6912x1024), side by side in one run:

- ``reference/files``: the PyTorch DataLoader with ``--threads`` worker processes (Pillow decode);
- ``reference/packed``: the same loader reading the pack's shards (LZ4 in the workers);
- ``dali/files``: DALI decoding the files (``mixed`` on a GPU, CPU mode otherwise) with ``--threads``;
- ``dali/packed``: DALI inflating the pack (on the GPU; CPU mode: lz4 in Python).

Before timing, one batch of every loader is checked against the reference loader's (same positions,
differences within the test suite's parity bounds); then each loader is warmed up for one batch and
timed over ``--batches`` batches (wall clock; on a GPU the last batch is synchronised). Every loader
delivers ``[B, C, 224, 224]`` normalised float32 on its device. The pack is written once per data
folder (its packing rate is reported). Results go to ``bench/results/bench_data_<device>_<date>.{json,csv}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, environment, write_results  # noqa: E402
from infmae.data import ImageFolderDataset, ReferenceLoader, generate_dataset, scan_folder  # noqa: E402
from infmae.data.packed import is_pack, pack_dataset  # noqa: E402

logger = logging.getLogger("bench_data")

#: parity bounds (normalised units) for IR scenes: the values of tests/tolerances.py's dali_parity_* rows
PARITY_MAX, PARITY_MEAN = 0.2, 2e-3


def make_data(root: Path, count: int, wide: int) -> tuple[Path, Path, float | None]:
    """Generate (once) the images and their pack; returns (folder, pack, packing files/s or None if reused)."""
    images, pack = root / "images", root / "pack"
    done = root / f".complete_{count}_{wide}"
    if not done.exists():
        if root.exists():
            shutil.rmtree(root)
        generate_dataset(images / "frames", count, seed=0, sizes=[(512, 640)], include_bad=False)
        if wide:
            generate_dataset(images / "wide", wide, seed=1, sizes=[(1024, 6912)], include_bad=False)
        done.touch()
    rate = None
    if not is_pack(pack):
        files = scan_folder(images)
        start = time.perf_counter()
        pack_dataset(files, images, pack, source=str(images))
        rate = len(files) / (time.perf_counter() - start)
    return images, pack, rate


def build(kind: str, data: Path, batch: int, threads: int, img: int, device: torch.device):
    dataset = ImageFolderDataset(data, img_size=(img, img), in_chans=3, seed=0)
    if kind == "reference":
        return ReferenceLoader(dataset, batch_size=batch, seed=0, num_workers=threads, pin_memory=device.type == "cuda")
    from infmae.data.dali import DaliLoader

    return DaliLoader(
        dataset,
        batch_size=batch,
        seed=0,
        num_threads=threads,
        device_id=(device.index or 0) if device.type == "cuda" else None,
    )


def first_batch(loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's first batch of epoch 0: (``[B, 3, H, W]`` float32 images on the CPU, positions)."""
    batch = next(iter(loader.iter_epoch(0)))
    return batch.to(device, channels=3).images.float().cpu(), batch.indices


def rate(loader, batches: int, device: torch.device) -> float:
    """Images/s over ``batches`` batches after one warm-up batch, cycling epochs as needed."""
    epoch = 0
    stream = loader.iter_epoch(epoch)
    next(stream)  # warm-up: workers started, pipeline built, first files cached
    start = time.perf_counter()
    seen = 0
    while seen < batches:
        try:
            batch = next(stream)
        except StopIteration:
            epoch += 1
            stream = loader.iter_epoch(epoch)
            continue
        batch.to(device, channels=3)
        seen += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batches * loader.batch_size / (time.perf_counter() - start)


def run(
    count: int,
    wide: int,
    batch: int,
    batches: int,
    threads: int,
    img: int,
    data_root: Path,
    out_dir: Path = RESULTS,
    smoke: bool = False,
) -> list[dict]:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    images, pack, pack_rate = make_data(data_root, count, wide)
    try:
        from infmae.data.dali import dali_available

        have_dali = dali_available()
    except ImportError:
        have_dali = False
    kinds = [("reference", "files", images), ("reference", "packed", pack)]
    if have_dali:
        kinds += [("dali", "files", images), ("dali", "packed", pack)]
    else:
        logger.warning("DALI is not installed here: timing the reference loader only (pip install -e '.[dali]')")
    loaders = {(k, s): build(k, d, batch, threads, img, device) for k, s, d in kinds}
    ref_images, ref_indices = first_batch(loaders[("reference", "files")], device)
    rows = []
    for (kind, source), loader in loaders.items():
        got, indices = first_batch(loader, device)
        if source == "packed":
            # the pack lists the same files in the same order, so the positions coincide
            assert indices.tolist() == ref_indices.tolist(), (kind, source)
        diff = (got - ref_images).abs()
        if diff.max() > PARITY_MAX or diff.mean() > PARITY_MEAN:
            raise AssertionError(
                f"{kind}/{source}: first batch differs from the reference loader's "
                f"(max {diff.max():.3g}, mean {diff.mean():.3g}); not timing it"
            )
        images_per_s = rate(loader, batches, device)
        rows.append(
            {
                "loader": kind,
                "source": source,
                "images_per_s": round(images_per_s, 1),
                "batch": batch,
                "batches": batches,
                "threads": threads,
                "img_size": img,
                "frames_640x512": count,
                "frames_6912x1024": wide,
                "parity_max": round(float(diff.max()), 5),
                "parity_mean": round(float(diff.mean()), 6),
            }
        )
        logger.info(
            "%-9s %-6s %8.1f images/s (parity max %.3g mean %.3g)", kind, source, images_per_s, diff.max(), diff.mean()
        )
    env = environment(device)
    env.update(
        {
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "smoke": smoke,
            "pack_files_per_s": pack_rate,
            "dali": _dali_version(),
        }
    )
    paths = write_results("bench_data_smoke" if smoke else "bench_data", rows, env, out_dir)
    logger.info("wrote %s", ", ".join(map(str, paths)))
    return rows


def _dali_version() -> str | None:
    try:
        import nvidia.dali as dali

        return dali.__version__
    except ImportError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=256, help="640x512 frames (256)")
    parser.add_argument("--wide", type=int, default=4, help="6912x1024 frames (4)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per loader (16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="workers / DALI threads (all cores)")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--data", type=Path, default=Path("/tmp/infmae_bench_data"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.smoke:
        args.count, args.wide, args.batch, args.batches, args.img = 12, 1, 4, 2, 64
    run(args.count, args.wide, args.batch, args.batches, args.threads, args.img, args.data, args.out, args.smoke)


if __name__ == "__main__":
    main()
