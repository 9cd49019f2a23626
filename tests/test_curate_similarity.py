"""The content confirmation of infmae curate (infmae.curate.similarity): percentile detail maps, the
shift-searched correlation checked against a plain per-pair loop, its invariances, the thumbnail column in
the scan store (an older store without it is upgraded and its readable files read again)."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest

from infmae.curate import curate, eight_bit_view
from infmae.curate.hashes import dct_hashes, fingerprints, percentile_thumbnail, thumbnail
from infmae.curate.scan import COLUMNS
from infmae.curate.similarity import (
    MAX_SHIFT,
    SIMILARITY_THRESHOLD,
    THUMB_SIDE,
    detail_maps,
    similarity,
    thumbs_from_blobs,
)
from infmae.data.synthetic import generate_dataset, make_layout_scene, make_scene, random_layout, to_counts16

# float32 maps of 1024 values: sums of products agree with a float64 loop to ~1e-6 relative
SIMILARITY_ATOL = 1e-5


def _reference_similarity(a: np.ndarray, b: np.ndarray, max_shift: int) -> float:
    """Independent: one pair, float64, every shift's overlap cut out and correlated directly."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    side, best = a.shape[0], -1.0
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            block_a = a[max(0, dy) : side + min(0, dy), max(0, dx) : side + min(0, dx)]
            block_b = b[max(0, -dy) : side + min(0, -dy), max(0, -dx) : side + min(0, -dx)]
            norm = np.sqrt((block_a**2).sum() * (block_b**2).sum())
            best = max(best, float((block_a * block_b).sum() / norm) if norm > 1e-12 else 0.0)
    return best


def _thumbs(rng: np.random.Generator, count: int) -> np.ndarray:
    views = [np.round(make_scene(96, 128, rng) * 255).astype(np.uint8) for _ in range(count)]
    return np.stack([percentile_thumbnail(thumbnail(view)) for view in views])


@pytest.mark.parametrize("max_shift", [0, 1, 2])
def test_similarity_equals_a_plain_loop(max_shift):
    rng = np.random.default_rng(max_shift)
    maps = detail_maps(_thumbs(rng, 24))
    a, b = maps[:12], np.concatenate([maps[12:20], maps[8:12]])  # the last 4: a map with itself
    got = similarity(a, b, max_shift=max_shift)
    expected = [_reference_similarity(x, y, max_shift) for x, y in zip(a, b)]
    np.testing.assert_allclose(got, expected, atol=SIMILARITY_ATOL, rtol=0)
    np.testing.assert_allclose(got[8:], 1.0, atol=SIMILARITY_ATOL)
    np.testing.assert_allclose(similarity(b, a, max_shift=max_shift), got, atol=SIMILARITY_ATOL)  # symmetric
    assert similarity(a[:0], b[:0]).shape == (0,)


def test_detail_maps_ignore_increasing_intensity_maps():
    """Gain, offset, gamma and any other strictly increasing mapping keep every pixel's percentile: the
    detail map is the same, not merely close; a flat thumbnail has no detail and correlates with nothing."""
    rng = np.random.default_rng(5)
    thumb = rng.permutation(np.arange(1024) % 64).reshape(32, 32)  # 64 levels, 16 pixels each
    levels = np.arange(64, dtype=np.float64)
    curves = {
        "gain_offset": levels * 3 + 20,
        "gamma": 255 * (levels / 63) ** 0.6,
        "agc": np.sort(rng.choice(256, 64, replace=False)),  # an arbitrary increasing look-up table
    }
    for name, curve in curves.items():
        lut = np.round(curve).astype(np.int64)
        assert (np.diff(lut) > 0).all() and lut.max() <= 255, name
        mapped = detail_maps(lut[thumb].astype(np.uint8)[None])
        np.testing.assert_allclose(mapped, detail_maps(thumb.astype(np.uint8)[None]), atol=1e-6, err_msg=name)
    flat = detail_maps(np.full((1, 32, 32), 77, np.uint8))
    assert np.abs(flat).max() < 1e-6
    assert similarity(flat, detail_maps(thumb.astype(np.uint8)[None]))[0] == 0.0


def test_input_checks():
    with pytest.raises(ValueError, match="expected \\[K,S,S\\] uint8"):
        detail_maps(np.zeros((2, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expected two \\[P,S,S\\] arrays of one shape"):
        similarity(np.zeros((2, 32, 32), np.float32), np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expected 1024-byte thumbnails.*--rescan"):
        thumbs_from_blobs([bytes(1024), bytes(100)])


def test_fingerprints_agree_with_dct_hashes():
    rng = np.random.default_rng(2)
    view = eight_bit_view(to_counts16(make_scene(120, 160, rng), rng)[..., None])
    phash, phash256, thumb = fingerprints(view)
    assert (phash, phash256) == dct_hashes(view)
    assert thumb == percentile_thumbnail(thumbnail(view)).tobytes() and len(thumb) == THUMB_SIDE**2
    # the stored thumbnail orders the pixels as the float thumbnail does, over the whole 0..255 range
    floats, stored = thumbnail(view).ravel(), np.frombuffer(thumb, np.uint8)
    assert stored.min() == 0 and stored.max() == 255
    assert (np.diff(stored[np.argsort(floats, kind="stable")].astype(np.int64)) >= 0).all()
    assert (percentile_thumbnail(np.full((32, 32), 3.5, np.float32)) == 128).all()  # flat: one shared rank


def test_thumbnail_keeps_what_8_bit_rounding_loses():
    """A low-contrast 8-bit frame (30 gray levels): the float thumbnail resolves structure below one gray
    level that a rounded thumbnail flattens into a few steps."""
    rng = np.random.default_rng(6)
    scene = make_scene(256, 320, rng)
    view = np.round(100 + 30 * scene + rng.normal(0, 0.5, scene.shape)).clip(0, 255).astype(np.uint8)
    floats = thumbnail(view)
    assert floats.dtype == np.float32 and len(np.unique(floats)) > 900
    assert len(np.unique(np.round(floats))) < 40


def test_copies_and_layout_twins_on_either_side_of_the_threshold():
    """At 640x512: a noisy re-capture, a 3 px camera shift and an 8-bit export of a 16-bit frame stay above
    the threshold; a different scene of the same layout (same sky, horizon, road) stays well below, though
    their raw thumbnails correlate as much as the copies' do."""
    rng = np.random.default_rng(8)
    layout = random_layout(rng)
    wide = to_counts16(make_layout_scene(520, 650, layout, rng), rng)
    base = wide[4:516, 4:644]
    noisy = np.clip(base + rng.normal(0, 0.02 * (float(base.max()) - float(base.min())), base.shape), 0, 65535)
    shifted = wide[6:518, 7:647]  # 2 px down, 3 px right
    lo, hi = float(base.min()), float(base.max())
    export = np.round((base.astype(np.float64) - lo) / (hi - lo) * 255).astype(np.uint8)
    twin = to_counts16(make_layout_scene(512, 640, layout, rng), rng)
    frames = [base, noisy.astype(np.uint16), shifted, export, twin]
    thumbs = np.stack([thumbnail(eight_bit_view(f[..., None])) for f in frames])
    maps = detail_maps(np.stack([percentile_thumbnail(t) for t in thumbs]))
    scores = similarity(np.repeat(maps[:1], 4, axis=0), maps[1:])
    assert (scores[:3] >= 0.95).all() and scores[3] < SIMILARITY_THRESHOLD - 0.15, scores
    raw = np.corrcoef(thumbs.reshape(5, -1).astype(np.float64))[0]
    assert raw[4] > 0.8  # the layout alone makes the raw thumbnails alike
    assert MAX_SHIFT >= 1


def test_store_without_thumbnails_is_upgraded_and_read_again(tmp_path, caplog):
    """A scan store written before the thumbnail column: opened without being set aside as damaged, the
    column added, every readable file read again (rows of unreadable files kept), the manifest equal to a
    fresh run's."""
    src = tmp_path / "src"
    generate_dataset(src, 12, seed=4, sizes=[(64, 80)], include_bad=True)
    fresh = curate(src, tmp_path / "fresh", workers=1, report=False)
    out = tmp_path / "old"
    curate(src, out, workers=1, report=False)
    store = out / "scan.sqlite"
    connection = sqlite3.connect(store)  # rebuild it as the older schema wrote it: no thumb column
    old_columns = ", ".join(COLUMNS[:-1])
    connection.execute(
        "CREATE TABLE files_old (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, format TEXT, "
        "width INTEGER, height INTEGER, bits INTEGER, channels INTEGER, entropy REAL, sha256 TEXT, phash TEXT, "
        "phash256 TEXT, error TEXT)"
    )
    connection.execute(f"INSERT INTO files_old SELECT {old_columns} FROM files")
    connection.execute("DROP TABLE files")
    connection.execute("ALTER TABLE files_old RENAME TO files")
    connection.commit()
    readable = connection.execute("SELECT COUNT(*) FROM files WHERE error IS NULL").fetchone()[0]
    connection.close()
    with caplog.at_level(logging.INFO, logger="infmae.curate.scan"):
        again = curate(src, out, workers=1, report=False)
    assert not list(out.glob("scan.sqlite.damaged-*")) and "predates thumbnails" in caplog.text
    assert again.scan.processed == readable and again.scan.reused == fresh.scan.total - readable
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "fresh/manifest.csv").read_bytes()
    assert curate(src, out, workers=1, report=False).scan.processed == 0
