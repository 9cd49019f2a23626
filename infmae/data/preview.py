"""Deterministic model input for looking at images (``infmae visualize``): the validation view of the
training sample spec (the largest centred crop of the training aspect ratio, resized bicubically to the
training size, normalised; no random augmentation), so a picture shows what evaluation sees."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from infmae.config import Config
from infmae.data.io import ImageReadError, read_image
from infmae.data.spec import SampleSpec

log = logging.getLogger(__name__)


def preview_tensor(path: str | Path, config: Config) -> torch.Tensor:
    """One image file -> [C,H,W] normalised model input (raises ImageReadError)."""
    mc = config.model
    spec = SampleSpec.from_config(config.data, mc.img_size, mc.in_chans, seed=0).eval_view()
    array = read_image(path)
    x = spec.transform(array, spec.augment_params(0, array.shape[0], array.shape[1], epoch=0))
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
