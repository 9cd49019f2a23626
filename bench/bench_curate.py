"""Benchmark of ``infmae curate``: files/s of the scan and of the near-duplicate stage, by collection size.

    python -m bench.bench_curate --sizes 10000 50000 --data /tmp/curate_bench [--workers 2]

For each size N it generates (once, reused on later runs) N synthetic infrared images at the
realistic size mix of :func:`infmae.data.synthetic.generate_dataset` (64x64 up to 640x512 and
1024x256; 8/16-bit PNG, TIFF, JPEG, BMP), then times:

- ``scan``: a cold scan (decode, 8-bit view, entropy, SHA-256, pHash) with all workers, files/s of wall
  time and files per CPU-second (this process and its workers; on a shared machine the wall rate
  depends on the other load, ``files_per_cpu_s * cores`` is the idle-machine rate);
- ``near_dup``: the near-duplicate index (multi-index hashing) and union-find on the scanned hashes,
  median of several runs, microseconds per image;
- ``near_dup_stage_synthetic_store``: the whole stage (``decide``: read the scan store, exact
  duplicates, index, content check of the candidate pairs, union-find, anchors) on a scan store of N synthetic rows with
  planted exact and near-duplicates, at sizes up to 1M, without decoding N images first;
- ``near_dup_index_synthetic_hashes``: the index alone (``near_duplicate_labels``) on random 64-bit
  hashes with planted near-duplicates, to show how time per image grows with the collection
  (no all-pairs comparison).

Results go to ``bench/results/bench_curate_<device>_<date>.{json,csv}``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("bench_curate")


def _generate_shard(args: tuple[str, int, int]) -> int:
    from infmae.data.synthetic import generate_dataset

    root, count, seed = args
    generate_dataset(root, count, seed=seed, include_bad=False)
    return count


def generate(root: Path, count: int, shards: int) -> float:
    """Write ``count`` synthetic images under ``root`` (skipped when ``root/.done`` exists); -> seconds."""
    done = root / ".done"
    if done.is_file() and int(done.read_text()) == count:
        return 0.0
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    per = [count // shards + (1 if k < count % shards else 0) for k in range(shards)]
    jobs = [(str(root / f"shard{k}"), per[k], 1000 + k) for k in range(shards)]
    with mp.get_context("fork").Pool(shards) as pool:
        pool.map(_generate_shard, jobs)
    done.write_text(str(count))
    return time.perf_counter() - start


def _median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rate_row(stage: str, n: int, workers: int, seconds: float, fast: bool = False, **more) -> dict:
    """A result row: ``seconds`` for ``n`` images as a rate and per image (``fast``: a stage of milliseconds,
    written with one more digit)."""
    return {
        "stage": stage,
        "images": n,
        "workers": workers,
        "seconds": round(seconds, 4 if fast else 3),
        "files_per_s": round(n / seconds, 1),
        "us_per_image": round(1e6 * seconds / n, 2 if fast else 1),
        **more,
    }


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children: insensitive to other load on a
    shared machine, so ``files_per_cpu_s * cores`` is the rate on an idle one."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_collection(root: Path, out: Path, n: int, workers: int, hamming: int) -> list[dict]:
    from infmae.curate.manifest import decide
    from infmae.curate.pipeline import curate
    from infmae.curate.scan import open_store

    if out.exists():
        shutil.rmtree(out)
    cpu_before = _cpu_seconds()
    result = curate(root, out, workers=workers, hamming=hamming, report=False)  # cold scan
    scan_cpu = _cpu_seconds() - cpu_before  # parent + pool workers (reaped when the pool closes)
    assert result.scan.processed == n and result.counts["unreadable"] == 0, result.counts
    rescan = curate(root, out, workers=workers, hamming=hamming, report=False)  # nothing new: reuse
    assert rescan.scan.processed == 0
    connection = open_store(out)
    decide(connection, hamming=hamming)  # warm-up
    near_dup = _median_seconds(lambda: decide(connection, hamming=hamming), reps=5)
    connection.close()
    cpu = {"cpu_seconds": round(scan_cpu, 2), "files_per_cpu_s": round(n / scan_cpu, 1)}
    rows = [
        _rate_row("scan", n, workers, result.scan.seconds, **cpu),
        _rate_row("rescan_unchanged", n, workers, rescan.scan.seconds),
        _rate_row("near_dup", n, 1, near_dup, fast=True),
    ]
    for row in rows:
        logger.info("%s", row)
    return rows


def _hex64(values: np.ndarray) -> list[str]:
    return [f"{int(v):016x}" for v in values.tolist()]


def _flip_bits(rng: np.random.Generator, rows: int, words: int, max_bits: int) -> np.ndarray:
    """``[rows, words]`` uint64 masks with 1..max_bits random bits set in total per row."""
    masks = np.zeros((rows, words), np.uint64)
    for k in range(rows):
        for b in rng.choice(64 * words, 1 + k % max_bits, replace=False):
            masks[k, b // 64] |= np.uint64(1) << np.uint64(int(b % 64))
    return masks


def bench_decide_store(n: int, hamming: int, work: Path, seed: int = 0) -> dict:
    """The whole near-duplicate stage (:func:`decide`) on a scan store of ``n`` synthetic rows.

    Rows: random 64- and 256-bit pHashes and SHA-256, thumbnails from a pool of random ones; the last 5%
    are near-copies of the first 5% (64-bit hash within ``hamming`` bits, the thumbnail with noise of
    +-3 levels: each such pair is compared by content) and 1% more are exact copies (same SHA-256,
    hashes and thumbnail). Checked first: every planted pair ends in one group.
    """
    from infmae.curate.manifest import decide
    from infmae.curate.scan import COLUMNS, open_store
    from infmae.curate.similarity import THUMB_BYTES

    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    phash256 = rng.integers(0, 2**64 - 1, (n, 4), dtype=np.uint64, endpoint=True)
    sha = [f"{v:064x}" for v in rng.integers(0, 2**63 - 1, n, dtype=np.int64).tolist()]
    near, exact = n // 20, n // 100
    phash[n - near :] = phash[:near] ^ _flip_bits(rng, near, 1, hamming)[:, 0]
    phash256[n - near :] = phash256[:near] ^ _flip_bits(rng, near, 4, 8 * hamming)  # informative only now
    copies = slice(n - near - exact, n - near)
    phash[copies], phash256[copies] = phash[near : near + exact], phash256[near : near + exact]
    sha[copies] = sha[near : near + exact]
    hex256 = ["".join(f"{int(w):016x}" for w in row) for row in phash256.tolist()]
    # a pool, not n thumbnails (1 GB at 1M rows); random 64-bit hashes almost never collide, so the pool's
    # repeats are not compared, and the planted near-copies carry a noisy version of their original's
    pool_size = 4096
    pool = rng.integers(0, 256, (pool_size, THUMB_BYTES), dtype=np.uint8)
    noisy = np.clip(pool.astype(np.int16) + rng.integers(-3, 4, pool.shape), 0, 255).astype(np.uint8)
    pool_bytes, noisy_bytes = [t.tobytes() for t in pool], [t.tobytes() for t in noisy]

    def thumb(i: int) -> bytes:
        if i >= n - near:
            return noisy_bytes[(i - (n - near)) % pool_size]
        if copies.start <= i < copies.stop:
            return pool_bytes[(near + i - copies.start) % pool_size]
        return pool_bytes[i % pool_size]

    if work.exists():
        shutil.rmtree(work)
    connection = open_store(work)
    base = {
        "size": 100_000,
        "mtime_ns": 1,
        "format": "PNG",
        "width": 640,
        "height": 512,
        "bits": 16,
        "channels": 1,
        "entropy": 6.4,
        "error": None,
    }
    rows = (
        tuple(
            {
                **base,
                "path": f"seq{i // 1000:04d}/frame{i:07d}.png",
                "sha256": sha[i],
                "phash": ph,
                "phash256": hex256[i],
                "thumb": thumb(i),
            }[c]
            for c in COLUMNS
        )
        for i, ph in enumerate(_hex64(phash))
    )
    connection.executemany(f"INSERT INTO files ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    connection.commit()
    decisions = decide(connection, hamming=hamming)
    group = decisions.group
    planted = [(i, n - near + i) for i in range(near)] + [(near + k, n - near - exact + k) for k in range(exact)]
    missed = sum(1 for a, b in planted if not group[a] or group[a] != group[b])
    assert missed == 0, f"decide missed {missed} of {len(planted)} planted pairs"
    seconds = _median_seconds(lambda: decide(connection, hamming=hamming), reps=3 if n <= 300_000 else 1)
    connection.close()
    shutil.rmtree(work)
    row = _rate_row("near_dup_stage_synthetic_store", n, 1, seconds, fast=True)
    logger.info("%s", row)
    return row


def bench_index(n: int, hamming: int, seed: int = 0) -> dict:
    """The near-duplicate index alone on ``n`` random hashes, 5% of them planted near-copies."""
    from infmae.curate.index import chunk_layout, near_duplicate_labels

    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    planted = n // 20
    flips = np.zeros(planted, np.uint64)
    for bit_count in range(1, hamming + 1):
        for k in range(planted):
            if k % hamming == bit_count - 1:
                for b in rng.choice(64, bit_count, replace=False):
                    flips[k] |= np.uint64(1) << np.uint64(int(b))
    hashes[n - planted :] = hashes[:planted] ^ flips
    labels = near_duplicate_labels(hashes, hamming)
    found = int((labels[n - planted :] == labels[:planted]).sum())
    assert found == planted, f"index missed {planted - found} planted pairs"
    seconds = _median_seconds(lambda: near_duplicate_labels(hashes, hamming), reps=3 if n <= 300_000 else 1)
    row = _rate_row("near_dup_index_synthetic_hashes", n, 1, seconds, fast=True, chunks=len(chunk_layout(n, hamming)))
    logger.info("%s", row)
    return row


def main() -> None:
    import torch

    from bench.harness import environment, write_results

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--index-sizes", type=int, nargs="+", default=[10000, 50000, 300000, 1000000])
    parser.add_argument("--store-sizes", type=int, nargs="+", default=[10000, 50000, 300000, 1000000])
    parser.add_argument("--data", type=Path, default=Path("/tmp/curate_bench"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--hamming", type=int, default=6)
    parser.add_argument("--generate-only", action="store_true")
    opts = parser.parse_args()
    rows: list[dict] = []
    load_start = os.getloadavg()
    for n in opts.sizes:
        seconds = generate(opts.data / f"n{n}", n, opts.workers)
        logger.info("generated %d images in %.1f s (0 = reused)", n, seconds)
    if opts.generate_only:
        return
    for n in opts.sizes:
        rows += bench_collection(opts.data / f"n{n}", opts.data / f"out{n}", n, opts.workers, opts.hamming)
    for n in opts.store_sizes:
        rows.append(bench_decide_store(n, opts.hamming, opts.data / f"store{n}"))
    for n in opts.index_sizes:
        rows.append(bench_index(n, opts.hamming))
    env = environment(torch.device("cpu"))
    env["cpu_count"] = os.cpu_count()
    # the machine is shared: a load above 0 at the start means other processes competed for the cores
    env["loadavg_1m_start_end"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    env["data"] = "generate_dataset default size mix (64x64 .. 640x512, 1024x256), files in page cache"
    json_path, csv_path = write_results("bench_curate", rows, env)
    logger.info("wrote %s and %s", json_path, csv_path)


if __name__ == "__main__":
    main()
