"""Batch.to (device, dtype, gray expanded as a view) and collate."""

from __future__ import annotations

import pytest
import torch

from infmae.data.batch import Batch
from infmae.data.loader import collate


def _batch(channels=1, b=4, h=8, w=12):
    generator = torch.Generator().manual_seed(0)
    return Batch(images=torch.randn(b, channels, h, w, generator=generator), indices=torch.arange(b) * 3)


def test_to_expands_gray_as_a_view():
    batch = _batch(channels=1)
    out = batch.to("cpu", channels=3)
    assert out.images.shape == (4, 3, 8, 12)
    assert out.images.stride(1) == 0  # no copy: the same memory read three times
    assert out.images.data_ptr() == batch.images.data_ptr()
    for c in range(3):
        assert torch.equal(out.images[:, c], batch.images[:, 0])
    assert out.indices.dtype == torch.int64 and torch.equal(out.indices, batch.indices)


def test_to_converts_dtype_and_keeps_matching_channels():
    batch = _batch(channels=3)
    out = batch.to("cpu", dtype=torch.bfloat16, channels=3)
    assert out.images.dtype == torch.bfloat16 and out.images.shape == (4, 3, 8, 12)
    assert out.indices.dtype == torch.int64
    torch.testing.assert_close(out.images.float(), batch.images, rtol=1e-2, atol=1e-2)
    gray = _batch(channels=1).to("cpu", dtype=torch.bfloat16, channels=3)
    assert gray.images.dtype == torch.bfloat16 and gray.images.stride(1) == 0
    same = _batch(channels=1).to("cpu", channels=1)
    assert same.images.shape[1] == 1


def test_to_rejects_impossible_channel_counts():
    with pytest.raises(ValueError, match="expected images with 1 or 1 channels, got 3"):
        _batch(channels=3).to("cpu", channels=1)
    with pytest.raises(ValueError, match="expected images with 1 or 4 channels, got 3"):
        _batch(channels=3).to("cpu", channels=4)
    with pytest.raises(ValueError, match="positive int"):
        _batch(channels=1).to("cpu", channels=0)


def test_batch_checks_its_shapes():
    with pytest.raises(ValueError, match=r"expected images \[B,C,H,W\]"):
        Batch(images=torch.zeros(3, 8, 8), indices=torch.arange(3))
    with pytest.raises(ValueError, match=r"expected indices \[B\] with B=3"):
        Batch(images=torch.zeros(3, 1, 8, 8), indices=torch.arange(2))


def test_collate_mixes_gray_and_colour():
    generator = torch.Generator().manual_seed(1)
    gray = torch.randn(1, 6, 5, generator=generator)
    colour = torch.randn(3, 6, 5, generator=generator)
    batch = collate([(gray, 7, []), (colour, 2, [("/d/bad.png", "empty file (0 bytes)")])])
    assert batch.images.shape == (2, 3, 6, 5)
    for c in range(3):
        assert torch.equal(batch.images[0, c], gray[0])
    assert torch.equal(batch.images[1], colour)
    assert batch.indices.tolist() == [7, 2] and batch.indices.dtype == torch.int64
    assert batch.skipped == [("/d/bad.png", "empty file (0 bytes)")]
    only_gray = collate([(gray, 0, []), (gray, 1, [])])
    assert only_gray.images.shape == (2, 1, 6, 5)
    with pytest.raises(ValueError, match="one image size per batch"):
        collate([(gray, 0, []), (torch.zeros(1, 4, 4), 1, [])])
