"""The 16-bit to [0, 1] rule: structure kept, whole-image range, fallbacks, 8-bit division."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infmae.data.mapping import SIXTEEN_BIT_MODES, apply_range, image_range, to_unit_float
from infmae.data.synthetic import make_scene


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _thermal16(rng, h=96, w=128):
    """A scene in the raw-count band 7000-9000, the case that `convert('RGB')` turns white."""
    return np.round(7000 + make_scene(h, w, rng) * 2000).astype(np.uint16)[..., None]


def test_sixteen_bit_band_keeps_its_structure(rng):
    counts = _thermal16(rng)
    assert counts.min() >= 7000 and counts.max() <= 9000
    out = to_unit_float(counts)
    assert out.shape == (1, 96, 128) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # not flat, not saturated: the body of the histogram lies strictly inside (0, 1)
    assert out.std() > 0.1
    inside = ((out > 0) & (out < 1)).float().mean()
    assert inside > 0.95
    # structure intact: monotone in the counts, so the mapped image correlates perfectly with them
    flat_counts = torch.from_numpy(counts[..., 0].astype(np.float32)).flatten()
    corr = torch.corrcoef(torch.stack([flat_counts, out.flatten()]))[0, 1]
    assert corr > 0.99
    # the naive 8-bit views are useless for this image
    assert (np.clip(counts, 0, 255) == 255).all()
    assert np.ptp((counts >> 8).astype(np.uint8)) <= 8


def test_percentile_range_matches_numpy_over_the_whole_image(rng):
    image = rng.integers(0, 65536, (40, 30, 3), dtype=np.uint16)
    image[..., 2] += 1000  # channels differ: the range pools all of them
    lo, hi = image_range(image, "percentile", 0.5, 99.5)
    np.testing.assert_equal((lo, hi), np.percentile(image, (0.5, 99.5)))
    lo2, hi2 = image_range(image, "percentile", 2.0, 98.0)
    assert lo2 > lo and hi2 < hi


def test_range_belongs_to_the_image_not_the_crop(rng):
    counts = _thermal16(rng)
    lo, hi = image_range(counts)
    full = to_unit_float(counts)
    crops = [(slice(0, 40), slice(0, 50)), (slice(50, 96), slice(60, 128)), (slice(10, 20), slice(5, 9))]
    for rows, cols in crops:
        crop = counts[rows, cols]
        mapped = to_unit_float(crop, value_range=(lo, hi))
        torch.testing.assert_close(mapped, full[:, rows, cols], rtol=0, atol=0)
        # the crop's own range is different, so mapping it alone would stretch it differently
        assert image_range(crop) != (lo, hi)
        assert not torch.equal(to_unit_float(crop), mapped)


def test_outliers_do_not_flatten_the_percentile_mapping(rng):
    counts = _thermal16(rng)
    hot = counts.copy()
    hot.reshape(-1)[rng.choice(hot.size, 10, replace=False)] = 65535  # dead/hot pixels
    robust = to_unit_float(hot, "percentile")
    minmax = to_unit_float(hot, "minmax")
    assert robust.std() > 3 * minmax.std()


def test_modes_and_flat_fallbacks(rng):
    counts = _thermal16(rng)
    assert image_range(counts, "minmax") == (float(counts.min()), float(counts.max()))
    assert image_range(counts, "full") == (0.0, 65535.0)
    torch.testing.assert_close(
        to_unit_float(counts, "full"), torch.from_numpy(counts.astype(np.float32) / 65535).permute(2, 0, 1)
    )
    # flat apart from a few outliers: percentiles coincide, the rule falls back to min/max
    nearly_flat = np.full((50, 50, 1), 8000, np.uint16)
    nearly_flat[0, :3] = 9000
    assert image_range(nearly_flat) == (8000.0, 9000.0)
    out = to_unit_float(nearly_flat)
    assert out[0, 0, :3].eq(1).all() and out[0, 1:].eq(0).all()
    # completely flat: zeros, documented
    flat = np.full((5, 6, 1), 8123, np.uint16)
    assert torch.equal(to_unit_float(flat), torch.zeros(1, 5, 6))
    assert torch.equal(to_unit_float(flat, "minmax"), torch.zeros(1, 5, 6))


def test_eight_bit_is_divided_by_255_whatever_the_mode(rng):
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    expected = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) / 255
    for mode in ("percentile", "minmax", "full"):
        assert image_range(image, mode) == (0.0, 255.0)
        torch.testing.assert_close(to_unit_float(image, mode), expected, rtol=0, atol=0)
    out = apply_range(image[1:4, 2:7], 0.0, 255.0)
    assert out.shape == (3, 3, 5) and out.is_contiguous()


def test_bad_inputs_name_the_problem(rng):
    with pytest.raises(ValueError, match=r"to_unit_float|image_range: expected an array of shape \[H,W,C\]"):
        to_unit_float(np.zeros((4, 4), np.uint16))
    with pytest.raises(TypeError, match="expected dtype uint8 or uint16, got float32"):
        image_range(np.zeros((4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="expected mode in"):
        image_range(np.zeros((4, 4, 1), np.uint16), "gamma")
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        image_range(np.zeros((4, 4, 1), np.uint16), "percentile", 60, 40)


@pytest.mark.parametrize("histogram", ["bincount", "scatter_add"])  # the CPU's and the GPU's (no host sync)
def test_image_ranges_torch_equals_the_numpy_rule(histogram, monkeypatch):
    """The batched torch range (used on DALI's decoded uint16 images) is bit-identical to image_range:
    random bands, flat images, single hot pixels, tiny images, every mode and several percentiles."""
    from infmae.data import mapping
    from infmae.data.mapping import image_range_torch, image_ranges_torch

    histogram_uint16 = mapping.histogram_uint16
    monkeypatch.setattr(
        mapping, "histogram_uint16", lambda flat, scatter: histogram_uint16(flat, scatter=histogram == "scatter_add")
    )

    rng = np.random.default_rng(0)
    arrays = []
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        a = rng.integers(7000, 7000 + int(rng.integers(1, 3000)), (h, w, 1)).astype(np.uint16)
        if t % 7 == 0:
            a[:] = 5  # flat
        if t % 5 == 0:
            a[0, 0, 0] = 65535  # a hot pixel
        arrays.append(a)
    for mode in SIXTEEN_BIT_MODES:
        for low, high in [(0.5, 99.5), (2.0, 98.0), (0.0, 100.0)]:
            expected = [image_range(a, mode, low, high) for a in arrays]
            assert image_ranges_torch([torch.from_numpy(a) for a in arrays], mode, low, high) == expected
            assert image_range_torch(torch.from_numpy(arrays[3]), mode, low, high) == expected[3]
    with pytest.raises(TypeError, match="uint16"):
        image_ranges_torch([torch.zeros(2, 2, 1, dtype=torch.uint8)])
