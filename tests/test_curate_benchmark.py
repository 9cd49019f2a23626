"""The near-duplicate benchmark (bench/bench_dedup.py) at test size: a few hundred generated images, planted
copies at the issue's strengths among distinct scenes that share a layout, and a pan. Checks the bar
(every planted pair found, no false pair), the confirmation's margin on every same-layout pair, the
sequence-aware mode on a pan, and what report.md shows a person (file names, the closest pairs not merged)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_dedup import bench_sequences, evaluate, generate, margins
from bench.dedup_collection import BAR_LEVELS, COPY_LEVELS, export8, make_copy
from infmae.curate import curate, read_manifest_rows
from infmae.curate.similarity import SIMILARITY_THRESHOLD

SIZES = ((256, 320), (240, 320))
BAR_ONLY = {kind: tuple(s for s in strengths if (kind, s) in BAR_LEVELS) for kind, strengths in COPY_LEVELS.items()}


@pytest.fixture(scope="module")
def dedup_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup_bench")
    truth = generate(root / "collection", 160, 3, 4, seed=1, workers=1, levels=BAR_ONLY, sizes=SIZES, empty=40)
    result = curate(root / "collection", root / "out", workers=2)
    rows = {r["path"]: r for r in read_manifest_rows(root / "out" / "manifest.csv")}
    return root, truth, result, rows


def test_bar_strengths_all_found_no_false_pair(dedup_run):
    root, truth, result, rows = dedup_run
    levels, summary = evaluate(rows, truth)
    assert summary["pairs_bar"] == summary["pairs_planted"] == 3 * len(BAR_LEVELS)
    assert summary["recall_bar"] == 1.0, [row for row in levels if row["recall"] < 1]
    assert summary["precision"] == 1.0 and summary["false_pairs"] == 0, summary["false_pair_examples"]
    assert sum(1 for p in truth if p.startswith("distinct/")) == 160
    # empty scenes (one layout, no objects, other shading) are reported apart: merging them is policy
    assert summary["empty_scenes"] == 40 and summary["low_detail_pairs_merged"] >= 0


def test_margin_on_every_same_layout_pair(dedup_run):
    """Each distinct scene against every other of its layout (4 x 780 pairs), whatever their pHashes: all
    well under the threshold; every planted copy over it."""
    root, truth, result, rows = dedup_run
    levels, _ = evaluate(rows, truth)
    margin = margins(root / "out", truth, levels, hamming=6)
    assert margin["same_layout_pairs"] == 4 * 40 * 39 // 2
    assert margin["same_layout_similarity_max"] < SIMILARITY_THRESHOLD - 0.1, margin
    # 320 px frames here: a 3 px shift is twice the share of the frame it is at 640 px (0.91 vs 0.96)
    assert margin["bar_levels_similarity_min"] > SIMILARITY_THRESHOLD + 0.02, margin
    assert margin["wide_over_threshold"] == 0 and margin["same_layout_over_threshold"] == 0
    assert all(row["candidates"] == 1.0 for row in levels)  # the 64-bit index proposes every planted pair


def test_report_names_members_and_closest_pairs_not_merged(dedup_run):
    root, truth, result, rows = dedup_run
    report = (root / "out" / "report.md").read_text()
    assert "Closest pairs NOT merged" in report
    some_pair = next(p for p, r in rows.items() if r["reason"] == "near_duplicate")
    group = rows[some_pair]["group"]
    # the sheet's groups are listed with full paths, so a merge can be checked from the report
    if f"| {group} |" in report:
        assert f"`{some_pair}`" in report and f"`{rows[some_pair]['anchor']}`" in report


def test_sequence_aware_pan_keeps_a_frame_every_few_steps(tmp_path):
    results = bench_sequences(tmp_path / "pans", tmp_path / "out", speeds=(2,), pans=1, frames=30, workers=1)
    plain = next(r for r in results if not r["sequence_aware"])
    aware = next(r for r in results if r["sequence_aware"])
    assert aware["merged_across_pans"] == 0 and aware["frames"] == 30
    assert 3 <= aware["kept"] < 30 and aware["kept"] >= plain["kept"], results
    # a dropped frame lies within a few percent of the frame width (320 px here) of the frame kept for it
    assert aware["max_offset_to_anchor_px"] <= 0.1 * 320, aware


def test_copy_kinds_are_what_they_say():
    rng = np.random.default_rng(0)
    full = rng.integers(7000, 9000, (64 + 32, 80 + 32)).astype(np.uint16)
    base, shifted = make_copy(full, "shift", 3, rng)
    assert base.shape == shifted.shape == (64, 80) and not np.array_equal(base, shifted)
    _, export = make_copy(full, "to8", "minmax", rng)
    assert export.dtype == np.uint8 and export.min() == 0 and export.max() == 255
    equalised = export8(base, "histeq").ravel()[np.argsort(base.ravel(), kind="stable")]
    assert (np.diff(equalised.astype(np.int64)) >= 0).all() and equalised[-1] == 255  # increasing, full range
    _, jpeg = make_copy(full, "jpeg", 75, rng)
    assert isinstance(jpeg, bytes) and jpeg[:2] == b"\xff\xd8"
    _, small = make_copy(full, "resize", 0.5, rng)
    assert small.shape == (32, 40) and small.dtype == np.uint16
    with pytest.raises(ValueError, match="expected a kind of"):
        make_copy(full, "blur", 1, rng)
