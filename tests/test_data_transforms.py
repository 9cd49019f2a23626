"""The crop sampler against torchvision's rule, the resize, flip, normalisation and per-sample seeds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infmae.data.transforms import (
    AugmentParams,
    apply_augment,
    hflip,
    normalize,
    resized_crop,
    sample_augment,
    sample_crop,
    sample_seed,
)

SCALE = (0.2, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def torchvision_get_params(height, width, scale, ratio):
    """torchvision.transforms.RandomResizedCrop.get_params (v0.2x, BSD-3), verbatim but for the
    image-size argument: the specification, drawing from the global RNG."""
    area = height * width

    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()

        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))

        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w

    # Fallback to central crop
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:  # whole image
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return i, j, h, w


@pytest.mark.parametrize("height, width", [(224, 224), (512, 640), (120, 160), (160, 96), (1024, 6912), (30, 400)])
def test_sample_crop_equals_torchvision_rule(height, width):
    state = torch.get_rng_state()
    try:
        for seed in range(200):
            torch.manual_seed(seed)
            expected = torchvision_get_params(height, width, SCALE, RATIO)
            got = sample_crop(height, width, SCALE, RATIO, generator=torch.Generator().manual_seed(seed))
            assert got == expected, (seed, got, expected)
    finally:
        torch.set_rng_state(state)


def test_sample_crop_stays_in_bounds_and_in_range():
    generator = torch.Generator().manual_seed(0)
    height, width = 480, 640
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = sample_crop(height, width, SCALE, RATIO, generator=generator)
        assert 0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width
        areas.append(h * w / (height * width))
        ratios.append(w / h)
    # rounding to whole pixels moves area and ratio by a little more than nothing
    assert min(areas) > SCALE[0] * 0.97 and max(areas) <= 1.0
    assert min(ratios) > RATIO[0] * 0.98 and max(ratios) < RATIO[1] * 1.02
    assert max(areas) > 0.9 and min(areas) < 0.25  # the whole scale range is visited
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_sample_crop_fallback_on_extreme_strips():
    # 6912 wide x 24 high: no attempt fits, so the centred crop clamped to ratio 4/3 (24 x 32)
    generator = torch.Generator().manual_seed(3)
    assert sample_crop(24, 6912, SCALE, RATIO, generator=generator) == (0, (6912 - 32) // 2, 24, 32)
    # 6912 high x 24 wide: clamped to ratio 3/4 (32 x 24)
    assert sample_crop(6912, 24, SCALE, RATIO, generator=generator) == ((6912 - 32) // 2, 0, 32, 24)
    # a 1x1 image: the whole image
    assert sample_crop(1, 1, SCALE, RATIO, generator=generator) == (0, 0, 1, 1)


def test_sample_crop_uses_only_its_generator():
    torch.manual_seed(11)
    before = torch.get_rng_state()
    a = [sample_crop(300, 400, generator=torch.Generator().manual_seed(5)) for _ in range(3)]
    assert torch.equal(before, torch.get_rng_state())
    assert a[0] == a[1] == a[2]


def test_resized_crop_shape_range_and_resampling():
    generator = torch.Generator().manual_seed(0)
    img = torch.rand(3, 96, 160, generator=generator)
    img[:, 40:50, 60:90] = 1.0  # a hard edge: bicubic overshoots there
    out = resized_crop(img, 10, 20, 70, 130, (112, 208))
    assert out.shape == (3, 112, 208) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    raw = F.interpolate(
        img[None, :, 10:80, 20:150], size=(112, 208), mode="bicubic", align_corners=False, antialias=True
    )[0]
    assert raw.max() > 1.0 or raw.min() < 0.0  # the clamp has work to do
    torch.testing.assert_close(out, raw.clamp(0, 1), rtol=0, atol=0)
    # upsampling a small crop works too (images smaller than the training size)
    assert resized_crop(img[:1], 0, 0, 20, 30, (224, 224)).shape == (1, 224, 224)
    with pytest.raises(ValueError, match="expected a crop inside"):
        resized_crop(img, 90, 0, 10, 10, (8, 8))


def test_flip_normalize_and_apply_augment():
    generator = torch.Generator().manual_seed(1)
    img = torch.rand(1, 40, 60, generator=generator)
    torch.testing.assert_close(hflip(img)[..., 0], img[..., -1])
    torch.testing.assert_close(normalize(img), (img - 0.425) / 0.2)
    rgb = torch.rand(3, 4, 4, generator=generator)
    per_channel = normalize(rgb, (0.1, 0.2, 0.3), (0.5, 0.25, 1.0))
    torch.testing.assert_close(per_channel[1], (rgb[1] - 0.2) / 0.25)
    with pytest.raises(ValueError, match="expected std as a number or 3 values"):
        normalize(rgb, 0.4, (0.2, 0.2))

    params = AugmentParams(top=5, left=7, height=30, width=40, flip=True)
    out = apply_augment(img, params, (32, 48))
    expected = normalize(hflip(resized_crop(img, 5, 7, 30, 40, (32, 48))))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    no_flip = apply_augment(img, AugmentParams(5, 7, 30, 40, False), (32, 48))
    torch.testing.assert_close(no_flip.flip(-1), out, rtol=0, atol=0)


def test_sample_augment_draws_crop_then_flip():
    flips = []
    for seed in range(200):
        params = sample_augment(300, 400, torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)
        crop = sample_crop(300, 400, generator=generator)
        assert (params.top, params.left, params.height, params.width) == crop
        assert params.flip == bool(torch.rand(1, generator=generator).item() < 0.5)
        flips.append(params.flip)
    assert 60 < sum(flips) < 140
    assert not any(sample_augment(300, 400, torch.Generator().manual_seed(s), hflip_prob=0.0).flip for s in range(20))


def test_sample_seed_is_a_stable_63_bit_hash():
    seeds = {sample_seed(0, epoch, index) for epoch in range(4) for index in range(500)}
    assert len(seeds) == 2000
    assert all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(3, 1, 2) == sample_seed(3, 1, 2)
    assert len({sample_seed(3, 1, 2), sample_seed(3, 2, 1), sample_seed(1, 3, 2), sample_seed(4, 1, 2)}) == 4
    with pytest.raises(ValueError, match="non-negative"):
        sample_seed(0, -1, 0)
