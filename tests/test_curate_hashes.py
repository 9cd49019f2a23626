"""Fingerprints of infmae.curate: the 8-bit view, entropy (of the 8-bit view's 256-bin histogram), pHash, and the
multi-index-hashing near-duplicate search checked against brute force."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from infmae.curate.hashes import eight_bit_view, entropy_bits, phash64, pixel_sha256, popcount64
from infmae.curate.index import MAX_KEY_BITS, Chunk, chunk_layout, chunk_radii, near_duplicate_labels, near_pairs
from infmae.data.mapping import to_unit_float
from infmae.data.synthetic import make_scene, to_counts16


def _python_entropy(values) -> float:
    """Independent: a Counter over the values, no numpy."""
    counts = Counter(int(v) for v in values)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def test_entropy_known_images():
    rng = np.random.default_rng(0)
    assert entropy_bits(np.full((40, 50), 137, np.uint8)) == 0.0
    assert entropy_bits(eight_bit_view(np.full((40, 50, 1), 8123, np.uint16))) == 0.0  # flat 16-bit: zeros
    halves = np.zeros((10, 10), np.uint8)
    halves[5:] = 200
    assert entropy_bits(halves) == pytest.approx(1.0, abs=1e-12)
    quarters = np.arange(4, dtype=np.uint8).repeat(25).reshape(10, 10) * 60
    assert entropy_bits(quarters) == pytest.approx(2.0, abs=1e-12)
    every_level = np.arange(256, dtype=np.uint8).repeat(4).reshape(32, 32)
    assert entropy_bits(every_level) == pytest.approx(8.0, abs=1e-12)
    noise = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    assert 7.99 < entropy_bits(noise) <= 8.0


@pytest.mark.parametrize("kind", ["gray8", "counts16", "rgb8"])
def test_entropy_matches_independent_computations(kind):
    rng = np.random.default_rng(hash(kind) % 2**32)
    scene = make_scene(96, 128, rng)
    if kind == "gray8":
        array = np.round(scene * 255).astype(np.uint8)[..., None]
    elif kind == "counts16":
        array = to_counts16(scene, rng)[..., None]
    else:
        array = np.stack([np.round(scene * 255), np.round(scene**2 * 255), rng.integers(0, 256, scene.shape)], -1)
        array = array.astype(np.uint8)
    view = eight_bit_view(array)
    # the view follows the project's mapping: to_unit_float (torch) * 255, rounded, colour averaged
    unit = to_unit_float(array).numpy()  # [C, H, W]
    expected = np.round(np.round(unit * 255).mean(axis=0)).astype(np.uint8)
    assert np.array_equal(view, expected)
    entropy = entropy_bits(view)
    assert entropy == pytest.approx(_python_entropy(view.ravel()), abs=1e-9)
    assert entropy == pytest.approx(Image.fromarray(view).entropy(), abs=1e-6)  # Pillow's own computation
    assert 3.0 < entropy < 8.0


def test_eight_bit_view_uses_the_percentile_range_not_saturation():
    rng = np.random.default_rng(4)
    counts = to_counts16(make_scene(64, 80, rng), rng)[..., None]
    view = eight_bit_view(counts)
    assert view.min() == 0 and view.max() == 255  # stretched over the robust range
    assert len(np.unique(view)) > 100
    with pytest.raises(ValueError, match="expected \\[H,W,C\\] uint8/uint16"):
        eight_bit_view(counts[..., 0])


def test_phash_properties():
    rng = np.random.default_rng(9)
    scene = np.round(make_scene(128, 160, rng) * 255).astype(np.uint8)
    value = phash64(scene)
    assert 0 <= value < 2**64 and 20 <= bin(value).count("1") <= 44  # median split: about half set
    assert phash64(scene) == value  # deterministic
    brighter = np.clip(scene.astype(np.int64) + 10, 0, 255).astype(np.uint8)
    assert (phash64(brighter) ^ value).bit_count() <= 4
    other = np.round(make_scene(128, 160, rng) * 255).astype(np.uint8)
    assert (phash64(other) ^ value).bit_count() > 12
    assert pixel_sha256(scene[..., None]) != pixel_sha256(scene[None])  # layout is part of the hash
    assert pixel_sha256(scene.copy()) == pixel_sha256(scene)


@pytest.mark.parametrize("hardware", [True, False], ids=["bitwise_count", "swar"])
def test_popcount_matches_python(hardware, monkeypatch):
    if not hardware and hasattr(np, "bitwise_count"):
        monkeypatch.delattr(np, "bitwise_count")  # the numpy 1.x path
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64, endpoint=True)
    assert popcount64(values).tolist() == [int(v).bit_count() for v in values.tolist()]


def _planted_hashes(seed: int, n: int = 1500) -> np.ndarray:
    """``n`` random hashes, 300 of them planted neighbours at every distance 0..12 (distinct values)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for k in range(300):
        flips = rng.choice(64, k % 13, replace=False)
        hashes[n - 1 - k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flips))
    return np.unique(hashes)


def _brute_force_pairs(distinct: np.ndarray, threshold: int) -> set:
    distance = popcount64(distinct[:, None] ^ distinct[None, :])
    rows, cols = np.nonzero(np.triu(distance <= threshold, 1))
    return set(zip(rows.tolist(), cols.tolist()))


@pytest.mark.parametrize("threshold", [0, 1, 3, 6, 10])
def test_near_pairs_equal_brute_force(threshold):
    distinct = _planted_hashes(threshold)
    got = near_pairs(distinct, threshold)
    assert got.tolist() == sorted(map(list, _brute_force_pairs(distinct, threshold)))  # once each, sorted
    assert threshold == 0 or len(got) > 0


def _even_layout(chunks: int, threshold: int, key_bits: int | None = None) -> list[Chunk]:
    widths = [64 // chunks + (1 if k < 64 % chunks else 0) for k in range(chunks)]
    radii = chunk_radii(chunks, threshold)
    return [Chunk(sum(widths[:k]), w, r, min(w, key_bits or w)) for k, (w, r) in enumerate(zip(widths, radii))]


@pytest.mark.parametrize("chunks,key_bits", [(3, None), (3, 9), (4, None), (4, 5), (7, None), (2, 12)])
def test_near_pairs_any_layout_equals_brute_force(chunks, key_bits):
    """Every layout finds exactly the brute-force pairs: radius-2 and -3 chunks, keys shorter than their
    chunk (fewer look-ups, more candidates), wide 21-bit keys with nearly empty buckets."""
    threshold = 6
    distinct = _planted_hashes(7 + chunks)
    layout = _even_layout(chunks, threshold, key_bits)
    assert max(c.radius for c in layout) == {2: 3, 3: 2, 4: 1, 7: 0}[chunks]
    assert near_pairs(distinct, threshold, layout).tolist() == sorted(
        map(list, _brute_force_pairs(distinct, threshold))
    )
    if chunks <= threshold:  # radius 0 everywhere: sum(radius + 1) <= threshold could miss pairs, refused
        with pytest.raises(ValueError, match="sum\\(radius \\+ 1\\)"):
            near_pairs(distinct, threshold, [c._replace(radius=0) for c in layout])


def test_labels_are_connected_components():
    hashes = np.array([0b0, 0b1, 0b11, 0b111 << 20, 0b0, (1 << 63) | 0b1111111], dtype=np.uint64)
    labels = near_duplicate_labels(hashes, 1)
    # 0 ~ 1 ~ 3 chain into one group (with the repeated 0); the others alone
    assert labels[0] == labels[1] == labels[2] == labels[4]
    assert len({labels[0], labels[3], labels[5]}) == 3
    assert near_duplicate_labels(np.zeros(0, np.uint64), 6).shape == (0,)
    with pytest.raises(ValueError, match="expected --hamming in"):
        near_pairs(hashes, 99)


def test_chunk_layout_covers_64_bits():
    for n, t in itertools.product([10, 10_000, 300_000, 10_000_000], [0, 2, 6, 12]):
        layout = chunk_layout(n, t)
        assert sum(c.width for c in layout) == 64 and layout[0].shift == 0
        assert all(b.shift == a.shift + a.width for a, b in zip(layout, layout[1:]))
        assert 1 <= len(layout) <= t + 1
        assert sum(c.radius + 1 for c in layout) > t  # the pigeonhole condition: no pair can be missed
        assert all(1 <= c.key_bits <= min(c.width, MAX_KEY_BITS) for c in layout)
    # more hashes -> longer keys (fuller buckets would make candidates dominate)
    assert max(c.key_bits for c in chunk_layout(1_000_000, 6)) > max(c.key_bits for c in chunk_layout(10_000, 6))


def test_index_pairs_are_confirmed_by_content(tmp_path):
    """Three files whose 64-bit pHashes collide (distance 1-2) are grouped only when their stored thumbnails
    show the same content: a noisy copy joins, a different scene of the same coarse layout (one sky, one
    horizon: equal raw thumbnails but for the objects) does not, nor does a row with no thumbnail."""
    from infmae.curate.manifest import decide
    from infmae.curate.scan import COLUMNS, open_store
    from infmae.curate.similarity import SIMILARITY_THRESHOLD

    rng = np.random.default_rng(0)
    sky = np.linspace(40, 200, 32)[:, None].repeat(32, axis=1)  # the shared layout
    scene = sky + rng.normal(0, 12, (32, 32))  # objects and texture of scene A
    other = sky + rng.normal(0, 12, (32, 32))  # of scene B
    noisy = scene + rng.normal(0, 2, (32, 32))  # a re-capture of A
    thumb = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8).tobytes()  # noqa: E731
    assert np.corrcoef(scene.ravel(), other.ravel())[0, 1] > 0.9  # raw thumbnails alike: layout dominates
    connection = open_store(tmp_path)
    base = dict(size=1, mtime_ns=1, format="PNG", width=64, height=64, bits=8, channels=1, entropy=5.0, error=None)
    rows = [
        dict(base, path="a.png", sha256="aa", phash="00000000000000f0", thumb=thumb(scene)),
        dict(base, path="b.png", sha256="bb", phash="00000000000000f3", thumb=thumb(noisy)),
        dict(base, path="c.png", sha256="cc", phash="00000000000000f1", thumb=thumb(other)),
        dict(base, path="d.png", sha256="dd", phash="00000000000000f2", thumb=None),
    ]
    connection.executemany(
        f"INSERT INTO files VALUES ({', '.join('?' * len(COLUMNS))})",
        [tuple(r.get(c, "0" * 64) for c in COLUMNS) for r in rows],  # phash256: not used by decide
    )
    connection.commit()
    decisions = decide(connection, hamming=6)
    assert decisions.group[0] == decisions.group[1] != "" and decisions.group[2] == decisions.group[3] == ""
    assert decisions.reason == ["", "near_duplicate", "", ""]
    assert decisions.pairs_checked == 6 and decisions.pairs_confirmed == 1
    # the closest rejected pairs, most similar first, name c (the look-alike) and never d (no thumbnail)
    closest = decisions.closest_rejected
    assert {(i, j) for i, j, _, _ in closest[:2]} == {(0, 2), (1, 2)} and closest[0][3] >= closest[1][3]
    assert all(score < SIMILARITY_THRESHOLD for _, _, _, score in closest)
    assert len(closest) == 2  # d, without a thumbnail, was not compared: it is in no pair
    assert 0.0 < SIMILARITY_THRESHOLD < 1.0
    connection.close()
