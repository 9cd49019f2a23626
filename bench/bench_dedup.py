"""Benchmark of near-duplicate detection quality: precision and recall per copy kind and strength, false
pairs among distinct scenes that share a layout, the confirmation's margin, and panning sequences.

    python -m bench.bench_dedup --distinct 10000 --per-level 100 --data /tmp/dedup_bench [--workers 2]

The collection (:mod:`bench.dedup_collection`, generated once under ``--data`` and reused) holds
``--distinct`` scenes over ``--layouts`` shared road-camera layouts and ``--per-level`` planted pairs for
every kind and strength of :data:`~bench.dedup_collection.COPY_LEVELS`. ``infmae curate`` runs on it as
a user would run it (default options), then:

- per kind and strength: recall of the planted pairs (both files in one group), how many the 64-bit index
  proposes (pHash within ``--hamming`` bits), the pair's content similarity (min, 5th percentile), pHash
  distances, and the recall of the former rule (64-bit within 6 bits AND 256-bit within 48 bits)
  applied to THIS scan's hashes (``recall_former_rule``; its own scan rounded the thumbnail to 8 bits,
  which moves more bits: run it and pass its manifest as ``--compare-manifest`` for its true recall);
- precision over every pair the groups imply, and the false pairs among the distinct scenes;
- the same with a wider candidate radius (``--wide-hamming``, a second ``decide`` on the same scan), and
  for the manifest of another version on the same collection (``--compare-manifest``, e.g. the rule
  before this benchmark: ``recall_compared``);
- the margin: the largest similarity of two DISTINCT scenes, over every pair of scenes that share a
  layout (about ``distinct**2 / (2 * layouts)`` pairs, whatever their pHashes) and over every pair of
  the collection within 12 pHash bits (twice the default candidate radius), planted pairs and pairs of
  two low-detail scenes aside;
- low-detail scenes (``--empty`` of them, and the low-detail scenes of planted pairs): how many pairs of
  two of them merge. Two such scenes of one layout differ only in smooth shading (a fixed camera over an
  empty road, hours apart); merging them is policy, not a detection error, so they are counted apart;
- sequences: pans at a few px per frame, curated with and without ``--sequence-aware``: frames kept and
  the largest offset between a dropped frame and the frame kept for it.

Results go to ``bench/results/bench_dedup_<device>_<date>.{json,csv}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dedup_collection import (  # noqa: E402
    BAR_LEVELS,
    COPY_LEVELS,
    pair_jobs,
    write_distinct,
    write_pairs,
    write_pans,
)

logger = logging.getLogger("bench_dedup")

WIDE_HAMMING = 12  # pHash radius of the margin check on index-like candidates
FORMER_HAMMING, FORMER_256_LIMIT = 6, 48  # the rule this benchmark replaced: 256-bit within 8 x 6 bits


def _task(args: tuple) -> dict:
    what, root, seed, layouts, payload, sizes = args
    if what in ("distinct", "empty"):
        return write_distinct(Path(root), payload, seed, layouts, sizes, empty=what == "empty")
    return write_pairs(Path(root), payload, seed, layouts, sizes)


def generate(
    root: Path,
    distinct: int,
    per_level: int,
    layouts: int,
    seed: int,
    workers: int,
    levels: dict[str, tuple] = COPY_LEVELS,
    sizes: tuple = ((512, 640), (480, 640)),
    empty: int = 0,
) -> dict[str, str | None]:
    """Write the collection (skipped when ``root/truth.json`` holds the same parameters) -> truth:
    {path: pair id, or None for a distinct or an empty scene}."""
    params = {"distinct": distinct, "per_level": per_level, "layouts": layouts, "seed": seed, "sizes": sizes}
    params["empty"] = empty
    params["levels"] = {kind: list(strengths) for kind, strengths in levels.items()}
    marker = root / "truth.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved["params"] == json.loads(json.dumps(params)):
            return saved["truth"]
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    tasks = [
        ("distinct", str(root), seed, layouts, range(k, min(distinct, k + 250)), sizes) for k in range(0, distinct, 250)
    ]
    tasks += [("empty", str(root), seed, layouts, range(k, min(empty, k + 250)), sizes) for k in range(0, empty, 250)]
    jobs = pair_jobs(levels, per_level)
    tasks += [("pairs", str(root), seed, layouts, jobs[k : k + 100], sizes) for k in range(0, len(jobs), 100)]
    truth: dict[str, str | None] = {}
    start = time.perf_counter()
    if workers == 1:
        for task in tasks:
            truth.update(_task(task))
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            for part in pool.imap_unordered(_task, tasks):
                truth.update(part)
    logger.info("generated %d images in %.0f s under %s", len(truth), time.perf_counter() - start, root)
    marker.write_text(json.dumps({"params": params, "truth": truth}))
    return truth


def _level_of(pair: str) -> tuple[str, str]:
    kind, strength, _ = pair.split("/")
    return kind, strength


def _look_of(path_or_pair: str) -> str:
    """The scene's look (bench.dedup_collection.LOOKS) from a path ``...-<look>[_a].<ext>`` or a pair id."""
    stem = path_or_pair.rsplit("/", 1)[-1].split(".")[0]
    look = stem.split("-", 1)[1]
    return look[:-2] if look.endswith(("_a", "_b")) else look


def _strength_value(kind: str, name: str):
    for strength in COPY_LEVELS[kind]:
        if str(strength).replace(".", "p") == name:
            return strength
    return name


def _group_pairs(group_of: dict[str, str]) -> set[tuple[str, str]]:
    members = defaultdict(list)
    for path, group in group_of.items():
        if group:
            members[group].append(path)
    return {tuple(sorted(p)) for m in members.values() for p in itertools.combinations(sorted(m), 2)}


def evaluate(rows: dict[str, dict], truth: dict[str, str | None]) -> tuple[list[dict], dict]:
    """Per-level recall and overall precision of a curate manifest (``rows``: path -> manifest row)
    against ``truth``. -> (one row per kind and strength, a summary dict)."""
    found = _group_pairs({p: rows[p]["group"] for p in truth})
    planted = _group_pairs({p: pair for p, pair in truth.items() if pair})
    per_level: dict[tuple[str, str], list[bool]] = defaultdict(list)
    bar_by_look: dict[str, list[bool]] = defaultdict(list)
    for a, b in sorted(planted):
        kind, name = _level_of(truth[a])
        per_level[(kind, name)].append((a, b) in found)
        if (kind, _strength_value(kind, name)) in BAR_LEVELS:
            bar_by_look[_look_of(truth[a])].append((a, b) in found)
    levels = []
    for (kind, name), hits in per_level.items():
        strength = _strength_value(kind, name)
        levels.append(
            {
                "kind": kind,
                "strength": strength,
                "bar": (kind, strength) in BAR_LEVELS,
                "pairs": len(hits),
                "recall": round(sum(hits) / len(hits), 4),
            }
        )
    # two low-detail scenes (empty/ or the scene of a planted pair) of one layout: policy, counted apart
    empty_pairs = {(a, b) for a, b in found - planted if "lowdetail" in a and "lowdetail" in b}
    false = found - planted - empty_pairs
    bar_hits = [
        h for (kind, name), hits in per_level.items() for h in hits if (kind, _strength_value(kind, name)) in BAR_LEVELS
    ]
    summary = {
        "pairs_planted": len(planted),
        "pairs_found": len(found),
        "precision": round(len(found & planted) / max(1, len(found - empty_pairs)), 4),
        "recall_all": round(len(found & planted) / max(1, len(planted)), 4),
        "recall_bar": round(sum(bar_hits) / max(1, len(bar_hits)), 4),
        "pairs_bar": len(bar_hits),
        "recall_bar_by_look": {look: [round(sum(h) / len(h), 4), len(h)] for look, h in sorted(bar_by_look.items())},
        "false_pairs": len(false),
        "false_pairs_between_distinct": sum(1 for a, b in false if truth[a] is None and truth[b] is None),
        "false_pair_examples": sorted(false)[:5],
        "empty_scenes": sum(1 for p in truth if p.startswith("empty/")),
        "low_detail_scenes_grouped": len({p for pair in empty_pairs for p in pair}),
        "low_detail_pairs_merged": len(empty_pairs),
    }
    return levels, summary


def _store_columns(out: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(``[N]`` uint64 pHash, ``[N, 4]`` uint64 256-bit pHash, ``[N, 32, 32]`` uint8 thumbnails) of ``paths``."""
    import sqlite3

    from infmae.curate.hashes import hex_to_words
    from infmae.curate.similarity import thumbs_from_blobs

    connection = sqlite3.connect(out / "scan.sqlite")
    found = {
        path: (ph, ph256, thumb)
        for path, ph, ph256, thumb in connection.execute("SELECT path, phash, phash256, thumb FROM files")
    }
    connection.close()
    phash = np.array([int(found[p][0], 16) for p in paths], dtype=np.uint64)
    phash256 = np.stack([hex_to_words(found[p][1]) for p in paths])
    return phash, phash256, thumbs_from_blobs([found[p][2] for p in paths])


def _similarity_of(details: np.ndarray, a: np.ndarray, b: np.ndarray, block: int = 8192) -> np.ndarray:
    from infmae.curate.similarity import similarity

    return np.concatenate(
        [similarity(details[a[k : k + block]], details[b[k : k + block]]) for k in range(0, len(a), block)]
        or [np.zeros(0, np.float32)]
    )


def _same_layout_pairs(paths: list[str], folder: str) -> np.ndarray:
    """``[P, 2]`` indices into ``paths`` of every pair of scenes under ``folder`` with one layout."""
    members = defaultdict(list)
    for k, path in enumerate(paths):
        if path.startswith(folder):
            members[path.split("/")[1]].append(k)
    pairs = [p for m in members.values() for p in itertools.combinations(m, 2)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def margins(out: Path, truth: dict[str, str | None], levels: list[dict], hamming: int) -> dict:
    """Fill ``levels`` with per-level distances and similarities from the scan store; -> the margin summary
    (distinct scenes: every same-layout pair, every pair within :data:`WIDE_HAMMING` pHash bits)."""
    from infmae.curate.hashes import popcount64
    from infmae.curate.similarity import SIMILARITY_THRESHOLD, detail_maps

    paths = sorted(truth)
    index = {p: k for k, p in enumerate(paths)}
    phash, phash256, thumbs = _store_columns(out, paths)
    details = detail_maps(thumbs)
    by_pair = defaultdict(list)
    for path, pair in truth.items():
        if pair:
            by_pair[pair].append(index[path])
    by_level = defaultdict(list)
    for pair, (a, b) in by_pair.items():
        by_level[_level_of(pair)].append((a, b))
    for row in levels:
        ab = np.array(by_level[(row["kind"], str(row["strength"]).replace(".", "p"))])
        a, b = ab[:, 0], ab[:, 1]
        sim = _similarity_of(details, a, b)
        d64 = popcount64(phash[a] ^ phash[b])
        d256 = popcount64(phash256[a] ^ phash256[b]).sum(axis=1)
        row.update(
            candidates=round(float((d64 <= hamming).mean()), 4),
            similarity_min=round(float(sim.min()), 4),
            similarity_p05=round(float(np.quantile(sim, 0.05)), 4),
            phash64_median=int(np.median(d64)),
            phash64_max=int(d64.max()),
            phash256_max=int(d256.max()),
            recall_former_rule=round(float(((d64 <= FORMER_HAMMING) & (d256 <= FORMER_256_LIMIT)).mean()), 4),
        )
    # every pair of distinct scenes (no planted pair between them) that share a layout
    same = _same_layout_pairs(paths, "distinct/")
    same_sim = _similarity_of(details, same[:, 0], same[:, 1])
    same_d64 = popcount64(phash[same[:, 0]] ^ phash[same[:, 1]])
    low = np.array(["lowcontrast" in p for p in paths])
    same_low = low[same[:, 0]] | low[same[:, 1]]
    over = same_sim >= SIMILARITY_THRESHOLD
    empty = _same_layout_pairs(paths, "empty/")
    empty_sim = _similarity_of(details, empty[:, 0], empty[:, 1])
    empty_d64 = popcount64(phash[empty[:, 0]] ^ phash[empty[:, 1]])
    # every pair within WIDE_HAMMING pHash bits (brute force over the collection), less the planted pairs
    planted = {tuple(sorted(ab)) for ab in by_pair.values()}
    is_empty = ["lowdetail" in p for p in paths]
    close = []
    for start in range(0, len(paths), 1024):
        block = popcount64(phash[start : start + 1024, None] ^ phash[None, :])
        rows_, cols = np.nonzero(block <= WIDE_HAMMING)
        rows_ = rows_ + start
        keep = rows_ < cols
        close += [
            (i, j)
            for i, j in zip(rows_[keep].tolist(), cols[keep].tolist())
            if (i, j) not in planted and not (is_empty[i] and is_empty[j])  # low-detail twins: reported apart
        ]
    close_arr = np.array(close, dtype=np.int64).reshape(-1, 2)
    close_sim = _similarity_of(details, close_arr[:, 0], close_arr[:, 1])
    close_d64 = popcount64(phash[close_arr[:, 0]] ^ phash[close_arr[:, 1]])
    close_d256 = popcount64(phash256[close_arr[:, 0]] ^ phash256[close_arr[:, 1]]).sum(axis=1)
    within = close_d64 <= hamming
    bar_min = min(r["similarity_min"] for r in levels if r["bar"])
    return {
        "threshold": SIMILARITY_THRESHOLD,
        "bar_levels_similarity_min": bar_min,
        "same_layout_pairs": len(same),
        "same_layout_similarity_max": round(float(same_sim.max()), 4),
        "same_layout_similarity_p999": round(float(np.quantile(same_sim, 0.999)), 4),
        "same_layout_over_threshold": int((same_sim >= SIMILARITY_THRESHOLD).sum()),
        "same_layout_phash64_within_hamming": int((same_d64 <= hamming).sum()),
        "same_layout_full_contrast_similarity_max": round(float(same_sim[~same_low].max()), 4),
        "same_layout_low_contrast_similarity_max": round(float(same_sim[same_low].max()), 4) if low.any() else None,
        "same_layout_over_threshold_phash64_min": int(same_d64[over].min()) if over.any() else None,
        "empty_same_layout_pairs": len(empty),
        "empty_same_layout_similarity_max": round(float(empty_sim.max()), 4) if len(empty) else None,
        "empty_same_layout_over_threshold": int((empty_sim >= SIMILARITY_THRESHOLD).sum()),
        "empty_same_layout_phash64_within_hamming": int((empty_d64 <= hamming).sum()),
        "wide_pairs": len(close_arr),
        "wide_similarity_max": round(float(close_sim.max()), 4) if len(close_arr) else None,
        "wide_over_threshold": int((close_sim >= SIMILARITY_THRESHOLD).sum()),
        "candidate_pairs_distinct": int(within.sum()),
        "candidate_similarity_max": round(float(close_sim[within].max()), 4) if within.any() else None,
        "candidate_former_rule_false_pairs": int((within & (close_d256 <= FORMER_256_LIMIT)).sum()),
        "candidate_phash256_min": int(close_d256[within].min()) if within.any() else None,
    }


def bench_sequences(root: Path, out: Path, speeds: tuple[int, ...], pans: int, frames: int, workers: int) -> list[dict]:
    """Pans curated plain and ``--sequence-aware``: frames kept per pan, largest offset (px) of a dropped
    frame from the frame kept for it."""
    from infmae.curate import curate, read_manifest_rows

    truth = write_pans(root, speeds, pans, frames, seed=5)
    results = []
    for aware in (False, True):
        target = out / ("aware" if aware else "plain")
        if target.exists():
            shutil.rmtree(target)
        curate(root, target, workers=workers, sequence_aware=aware, report=False)
        rows = {r["path"]: r for r in read_manifest_rows(target / "manifest.csv")}
        for speed in speeds:
            mine = [p for p in truth if p.startswith(f"pans/speed{speed}_")]
            kept = sum(rows[p]["status"] == "keep" for p in mine)
            offsets = [abs(truth[p][1] - truth[rows[p]["anchor"]][1]) for p in mine if rows[p]["anchor"]]
            cross = sum(1 for p in mine if rows[p]["anchor"] and truth[rows[p]["anchor"]][0] != truth[p][0])
            results.append(
                {
                    "stage": "sequence",
                    "sequence_aware": aware,
                    "speed_px_per_frame": speed,
                    "pans": pans,
                    "frames": len(mine),
                    "kept": kept,
                    "frames_per_kept": round(len(mine) / max(1, kept), 2),
                    "max_offset_to_anchor_px": max(offsets, default=0),
                    "merged_across_pans": cross,
                }
            )
            logger.info("%s", results[-1])
    return results


def main() -> None:
    import torch

    from bench.harness import environment, write_results
    from infmae.curate import curate, read_manifest_rows
    from infmae.curate.manifest import decide
    from infmae.curate.scan import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", type=int, default=10000)
    parser.add_argument("--per-level", type=int, default=100)
    parser.add_argument("--layouts", type=int, default=50)
    parser.add_argument("--empty", type=int, default=500, help="low-detail scenes, reported apart")
    parser.add_argument("--data", type=Path, default=Path("/tmp/dedup_bench"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--hamming", type=int, default=6)
    parser.add_argument("--wide-hamming", type=int, default=10, help="a second decide on the same scan")
    parser.add_argument(
        "--compare-manifest", type=Path, default=None, help="manifest.csv of another version on the same collection"
    )
    parser.add_argument("--pan-speeds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--pans", type=int, default=4)
    parser.add_argument("--pan-frames", type=int, default=60)
    parser.add_argument("--generate-only", action="store_true")
    opts = parser.parse_args()
    load_start = os.getloadavg()
    root, out = opts.data / "collection", opts.data / "out"
    truth = generate(root, opts.distinct, opts.per_level, opts.layouts, seed=0, workers=opts.workers, empty=opts.empty)
    if opts.generate_only:
        return
    if out.exists():
        shutil.rmtree(out)
    result = curate(root, out, workers=opts.workers, hamming=opts.hamming)
    connection = open_store(out, check=False)
    decide_times = []
    for _ in range(3):
        start = time.perf_counter()
        decisions = decide(connection, hamming=opts.hamming)
        decide_times.append(time.perf_counter() - start)
    # the same store with a wider candidate radius: what the index costs in recall, and whether the
    # content check still holds when it is handed more (and more distant) candidates
    wide = decide(connection, hamming=opts.wide_hamming)
    connection.close()
    wide_levels, wide_summary = evaluate({p: {"group": g} for p, g in zip(wide.paths, wide.group)}, truth)
    rows = {r["path"]: r for r in read_manifest_rows(out / "manifest.csv")}
    levels, summary = evaluate(rows, truth)
    if opts.compare_manifest is not None:  # another version's manifest of the same collection
        other = {r["path"]: r for r in read_manifest_rows(opts.compare_manifest)}
        other_levels, other_summary = evaluate(other, truth)
        recall_other = {(r["kind"], str(r["strength"])): r["recall"] for r in other_levels}
        for row in levels:
            row["recall_compared"] = recall_other[(row["kind"], str(row["strength"]))]
        keys = ("precision", "recall_all", "recall_bar", "recall_bar_by_look", "false_pairs", "low_detail_pairs_merged")
        summary["compared"] = {k: other_summary[k] for k in keys} | {"manifest": str(opts.compare_manifest)}
    recall_wide = {(r["kind"], str(r["strength"])): r["recall"] for r in wide_levels}
    for row in levels:
        row[f"recall_hamming{opts.wide_hamming}"] = recall_wide[(row["kind"], str(row["strength"]))]
    summary[f"hamming{opts.wide_hamming}"] = {
        k: wide_summary[k] for k in ("precision", "recall_all", "recall_bar", "false_pairs", "low_detail_pairs_merged")
    } | {"candidate_pairs": wide.pairs_checked, "confirmed": wide.pairs_confirmed}
    summary.update(margins(out, truth, levels, opts.hamming))
    summary.update(
        images=len(truth),
        scan_seconds=round(result.scan.seconds, 1),
        decide_seconds_median=round(sorted(decide_times)[1], 3),
        index_candidate_pairs=decisions.pairs_checked,
        index_pairs_confirmed=decisions.pairs_confirmed,
    )
    logger.info("summary %s", summary)
    for row in levels:
        logger.info("%s", row)
    sequences = bench_sequences(
        opts.data / "pans", opts.data / "pans_out", tuple(opts.pan_speeds), opts.pans, opts.pan_frames, opts.workers
    )
    env = environment(torch.device("cpu"))
    env["cpu_count"] = os.cpu_count()
    env["loadavg_1m_start_end"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    env["collection"] = {
        "distinct": opts.distinct,
        "empty": opts.empty,
        "per_level": opts.per_level,
        "layouts": opts.layouts,
        "sizes": "640x512 / 640x480, 8-bit and 16-bit PNG (JPEG copies .jpg)",
        "hamming": opts.hamming,
    }
    env["summary"] = summary
    results = [{"stage": "level", **row} for row in levels] + [{"stage": "summary", **summary}] + sequences
    for row in results:
        row.pop("false_pair_examples", None)
    json_path, csv_path = write_results("bench_dedup", results, env)
    logger.info("wrote %s and %s", json_path, csv_path)


if __name__ == "__main__":
    main()
