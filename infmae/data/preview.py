"""Deterministic model input for looking at images (``infmae visualize``): the largest centred crop of the
training aspect ratio, resized bicubically to the training size, normalised; no random augmentation."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from infmae.config import Config
from infmae.data.io import ImageReadError, read_image
from infmae.data.mapping import SixteenBitMapping
from infmae.data.transforms import normalize, resized_crop

log = logging.getLogger(__name__)


def center_crop_box(height: int, width: int, target_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred window with the aspect ratio of ``target_hw``."""
    target_ratio = target_hw[1] / target_hw[0]
    h, w = height, round(height * target_ratio)
    if w > width:
        h, w = round(width / target_ratio), width
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def preview_tensor(path: str | Path, config: Config) -> torch.Tensor:
    """One image file -> [C,H,W] normalised model input (raises ImageReadError)."""
    dc, mc = config.data, config.model
    img01 = SixteenBitMapping(dc.sixteen_bit_mode, dc.low_percentile, dc.high_percentile).to_unit_float(
        read_image(path)
    )
    if mc.in_chans == 1 and img01.shape[0] == 3:
        img01 = img01.mean(dim=0, keepdim=True)
    top, left, h, w = center_crop_box(img01.shape[1], img01.shape[2], mc.img_size)
    x = normalize(resized_crop(img01, top, left, h, w, mc.img_size), dc.mean, dc.std)
    return x.expand(mc.in_chans, -1, -1) if x.shape[0] == 1 else x


def load_preview_batch(paths: list[str], config: Config) -> tuple[torch.Tensor, list[str]]:
    """-> ([N,C,H,W], the N paths used); unreadable files are reported and left out."""
    images, used = [], []
    for path in paths:
        try:
            images.append(preview_tensor(path, config))
            used.append(str(path))
        except ImageReadError as error:
            log.warning("visualize: skipping %s: %s", path, error.reason)
    if not images:
        return torch.empty(0), []
    return torch.stack(images), used
