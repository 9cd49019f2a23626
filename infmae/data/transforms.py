"""The released augmentation (random resized crop, horizontal flip, normalisation) without torchvision.

Legend: C = channels; H, W = source image height and width; h, w = crop height and width;
size_hw = the training size (out_h, out_w).

The crop is sampled with exactly torchvision's ``RandomResizedCrop.get_params`` rule, but every draw
comes from an explicit ``torch.Generator`` instead of the global RNG. Sampling is split from applying:
:func:`sample_augment` returns plain :class:`AugmentParams`, so another loader (DALI) can be fed the same
parameters and reproduce the sample, and :func:`sample_seed` is the one per-sample seed rule.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_SCALE: tuple[float, float] = (0.2, 1.0)
DEFAULT_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_MEAN: float = 0.425
DEFAULT_STD: float = 0.2


@dataclass(frozen=True)
class AugmentParams:
    """One sample's augmentation, in source-image pixels.

    Attributes:
        top, left: the crop's upper-left corner (row, column).
        height, width: the crop's size (h, w), before resizing to the training size.
        flip: whether the resized crop is flipped horizontally.
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation generator: a 63-bit int mixed from (seed, epoch, index).

    Derived with numpy's ``SeedSequence`` (a proper hash), so neighbouring indices or epochs give
    unrelated streams, and the value does not depend on worker count or iteration order.
    """
    if min(seed, epoch, index) < 0:
        raise ValueError(
            f"sample_seed: expected non-negative seed, epoch and index, got {seed}, {epoch}, {index}; "
            "use the dataset position and the epoch number"
        )
    words = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def _check_range(op: str, name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(f"{op}: expected {name} as (min, max) with min <= max, got {value}; e.g. {name}=(0.2, 1.0)")
    return float(value[0]), float(value[1])


@functools.lru_cache(maxsize=16)
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's float32 ``torch.log(torch.tensor(ratio))`` as Python floats, once per ratio (the crop
    draw is on every sample's path in the DALI loader's host thread)."""
    log_ratio = torch.log(torch.tensor(ratio))
    return log_ratio[0].item(), log_ratio[1].item()


def sample_crop(
    height: int,
    width: int,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    *,
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """Sample a random resized crop, torchvision's ``RandomResizedCrop.get_params`` rule exactly.

    Up to 10 attempts: target area = H*W*U(scale), aspect = exp(U(log ratio)), w = round(sqrt(area*r)),
    h = round(sqrt(area/r)); accepted when 0 < w <= W and 0 < h <= H, then top = randint(0, H-h+1) and
    left = randint(0, W-w+1). Otherwise the central crop of the whole image, clamped to the ratio range
    (e.g. a 24x6912 strip gives a centred 24x32 crop).

    Args:
        height, width: source image size H, W.
        scale: (min, max) fraction of the area.
        ratio: (min, max) aspect ratio w/h.
        generator: the only source of randomness (draw order identical to torchvision's).

    Returns:
        ``(top, left, h, w)`` in pixels.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"sample_crop: expected a positive image size, got {height}x{width}; check the decoded image")
    scale = _check_range("sample_crop", "scale", scale)
    ratio = _check_range("sample_crop", "ratio", ratio)
    area = height * width
    log_lo, log_hi = _log_ratio(ratio)
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    return _central_crop(height, width, ratio)


def _central_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's fallback after 10 rejected draws: the whole image, its aspect clamped into ``ratio``
    (a side kept whole, the other rounded), centred. Returns ``(top, left, h, w)``."""
    narrowest, widest = min(ratio), max(ratio)
    crop_h, crop_w = height, width
    aspect = float(width) / float(height)
    if aspect < narrowest:  # too tall for the range: keep the width
        crop_h = int(round(width / narrowest))
    elif aspect > widest:  # too wide: keep the height
        crop_w = int(round(height * widest))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def sample_augment(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    hflip_prob: float = 0.5,
) -> AugmentParams:
    """Sample one sample's crop and flip, in the released order (crop draws first, then the flip).

    The flip is ``torch.rand(1) < hflip_prob``, as torchvision's ``RandomHorizontalFlip``.
    """
    if not 0.0 <= hflip_prob <= 1.0:
        raise ValueError(f"sample_augment: expected hflip_prob in [0, 1], got {hflip_prob}; the released value is 0.5")
    top, left, h, w = sample_crop(height, width, scale, ratio, generator=generator)
    flip = bool(torch.rand(1, generator=generator).item() < hflip_prob)
    return AugmentParams(top=top, left=left, height=h, width=w, flip=flip)


def resized_crop(img: torch.Tensor, top: int, left: int, h: int, w: int, size_hw: Sequence[int]) -> torch.Tensor:
    """Crop ``img[:, top:top+h, left:left+w]`` and resize it bicubically (antialiased) to ``size_hw``.

    Args:
        img: ``[C, H, W]`` float in [0, 1].
        top, left, h, w: the crop (must lie inside the image).
        size_hw: (out_h, out_w).

    Returns:
        ``[C, out_h, out_w]`` float32, clamped to [0, 1] (bicubic overshoots at edges).
    """
    if img.ndim != 3 or not img.is_floating_point():
        raise ValueError(
            f"resized_crop: expected a float [C,H,W] tensor, got shape {tuple(img.shape)} dtype {img.dtype}; "
            "map pixels with to_unit_float() first"
        )
    _, height, width = img.shape
    if not (0 <= top and 0 <= left and h > 0 and w > 0 and top + h <= height and left + w <= width):
        raise ValueError(
            f"resized_crop: expected a crop inside the {height}x{width} image, got top={top} left={left} "
            f"h={h} w={w}; sample it with sample_crop() on this image's size"
        )
    out_h, out_w = int(size_hw[0]), int(size_hw[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"resized_crop: expected a positive size_hw, got {tuple(size_hw)}; e.g. (224, 224)")
    crop = img[None, :, top : top + h, left : left + w].to(torch.float32)
    out = F.interpolate(crop, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp_(0.0, 1.0)


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Flip ``[..., H, W]`` horizontally (reverse the last axis)."""
    return img.flip(-1)


def channel_vector(op: str, name: str, value: float | Sequence[float], channels: int) -> torch.Tensor:
    """``value`` (a number, or one or ``channels`` numbers) as a ``[channels, 1, 1]`` float32 tensor;
    ``op`` and ``name`` only word the error."""
    if isinstance(value, (int, float)):
        return torch.full((channels, 1, 1), float(value), dtype=torch.float32)
    values = [float(v) for v in value]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"{op}: expected {name} as a number or {channels} values (one per channel), got {len(values)}; "
            f"e.g. {name}=0.425"
        )
    return torch.tensor(values, dtype=torch.float32).view(channels, 1, 1)


def normalize(
    x: torch.Tensor, mean: float | Sequence[float] = DEFAULT_MEAN, std: float | Sequence[float] = DEFAULT_STD
) -> torch.Tensor:
    """``(x - mean) / std`` per channel on ``[C, H, W]``; mean/std a number or one value per channel."""
    if x.ndim != 3:
        raise ValueError(f"normalize: expected a [C,H,W] tensor, got shape {tuple(x.shape)}; pass one image")
    channels = x.shape[0]
    mean_c = channel_vector("normalize", "mean", mean, channels)
    std_c = channel_vector("normalize", "std", std, channels)
    if bool((std_c <= 0).any()):
        raise ValueError(f"normalize: expected std > 0, got {std}; the released value is 0.2")
    return (x - mean_c) / std_c


def apply_augment(
    img01: torch.Tensor,
    params: AugmentParams,
    size_hw: Sequence[int],
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
) -> torch.Tensor:
    """Apply sampled parameters: resized crop, optional flip, normalisation.

    Args:
        img01: ``[C, H, W]`` float in [0, 1].
        params: from :func:`sample_augment` on this image's (H, W).
        size_hw: (out_h, out_w).
        mean, std: normalisation (released: 0.425, 0.2 on every channel).

    Returns:
        ``[C, out_h, out_w]`` float32, normalised.
    """
    out = resized_crop(img01, params.top, params.left, params.height, params.width, size_hw)
    if params.flip:
        out = hflip(out)
    return normalize(out, mean, std)
