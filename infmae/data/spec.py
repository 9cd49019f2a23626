"""What one training sample is: the frozen :class:`SampleSpec` both loaders (reference and DALI) apply.

Legend: H, W = a source image's size; out_h, out_w = the training size; C = channels.

A sample is: the image mapped to [0, 1] by the 16-bit rule (:class:`~infmae.data.mapping.SixteenBitMapping`,
range of the whole image), cropped (``crop="random"``: the released random resized crop drawn from
``sample_seed(seed, epoch, index)``; ``crop="centre"``: the largest centred crop of the training aspect,
for validation), resized to ``img_size`` (bicubic, antialiased), flipped with ``hflip_prob`` and
normalised by ``mean``/``std``. The crop and flip are a pure function of (spec, index, epoch, H, W):
:meth:`SampleSpec.augment_params`, which is how the DALI loader reproduces the reference samples.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .mapping import DEFAULT_MAPPING, SixteenBitMapping, apply_range
from .transforms import (
    DEFAULT_MEAN,
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    DEFAULT_STD,
    AugmentParams,
    apply_augment,
    channel_vector,
    sample_augment,
    sample_seed,
)

CROP_RULES: tuple[str, ...] = ("random", "centre")


@dataclass(frozen=True)
class SampleSpec:
    """How a decoded image becomes a training sample (module docstring).

    Attributes:
        img_size: training size (out_h, out_w).
        in_chans: the model's channels, 1 or 3.
        seed: seed of the per-sample augmentation.
        scale, ratio, hflip_prob: the random resized crop and flip (released: (0.2, 1), (3/4, 4/3), 0.5).
        mean, std: normalisation, a number or one value per channel (released: 0.425, 0.2).
        mapping: the 16-bit to [0, 1] rule.
        crop: ``"random"`` (training) or ``"centre"`` (a fixed view per image: validation, no flip).
    """

    img_size: tuple[int, int]
    in_chans: int
    seed: int
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    hflip_prob: float = 0.5
    mean: float | tuple[float, ...] = DEFAULT_MEAN
    std: float | tuple[float, ...] = DEFAULT_STD
    mapping: SixteenBitMapping = DEFAULT_MAPPING
    crop: str = "random"

    def __post_init__(self) -> None:
        img_size = tuple(self.img_size)
        if len(img_size) != 2 or min(int(s) for s in img_size) <= 0:
            raise ValueError(f"SampleSpec: expected img_size as (H, W) > 0, got {img_size}; e.g. (224, 224)")
        if self.in_chans not in (1, 3):
            raise ValueError(f"SampleSpec: expected in_chans 1 or 3, got {self.in_chans}; the released model uses 3")
        if self.crop not in CROP_RULES:
            raise ValueError(f"SampleSpec: expected crop in {CROP_RULES}, got {self.crop!r}; 'random' for training")
        if not isinstance(self.mapping, SixteenBitMapping):
            raise TypeError(
                f"SampleSpec: expected mapping as a SixteenBitMapping, got {type(self.mapping).__name__}; "
                "e.g. SixteenBitMapping('percentile', 0.5, 99.5)"
            )
        fields = {
            "img_size": (int(img_size[0]), int(img_size[1])),
            "in_chans": int(self.in_chans),
            "seed": int(self.seed),
            "scale": (float(self.scale[0]), float(self.scale[1])),
            "ratio": (float(self.ratio[0]), float(self.ratio[1])),
            "hflip_prob": float(self.hflip_prob),
            "mean": _frozen(self.mean),
            "std": _frozen(self.std),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        self.mean_vector(self.in_chans)  # validates the lengths now, not at the first sample
        self.std_vector(self.in_chans)

    @classmethod
    def from_options(
        cls,
        *,
        sixteen_bit_mode: str | None = None,
        low: float | None = None,
        high: float | None = None,
        **fields,
    ) -> SampleSpec:
        """Built from the dataset's keyword form: the spec's fields, with the mapping as ``sixteen_bit_mode``,
        ``low`` and ``high`` (each left out takes :data:`~infmae.data.mapping.DEFAULT_MAPPING`'s)."""
        given = {"mode": sixteen_bit_mode, "low": low, "high": high}
        mapping = dataclasses.replace(DEFAULT_MAPPING, **{k: v for k, v in given.items() if v is not None})
        return cls(mapping=mapping, **fields)

    @classmethod
    def from_config(cls, data, img_size: Sequence[int], in_chans: int, seed: int) -> SampleSpec:
        """From a :class:`~infmae.config.DataConfig` (``data``) and the model's size and channels."""
        return cls(
            img_size=tuple(img_size),
            in_chans=in_chans,
            seed=seed,
            scale=data.scale,
            ratio=data.ratio,
            hflip_prob=data.hflip_prob,
            mean=data.mean,
            std=data.std,
            mapping=SixteenBitMapping(data.sixteen_bit_mode, data.low_percentile, data.high_percentile),
        )

    def eval_view(self) -> SampleSpec:
        """This spec with the fixed centred view (validation)."""
        return dataclasses.replace(self, crop="centre")

    def mean_vector(self, channels: int) -> torch.Tensor:
        """``[channels, 1, 1]`` float32 normalisation mean."""
        return channel_vector("SampleSpec", "mean", self.mean, channels)

    def std_vector(self, channels: int) -> torch.Tensor:
        """``[channels, 1, 1]`` float32 normalisation std."""
        return channel_vector("SampleSpec", "std", self.std, channels)

    @functools.cached_property
    def _statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per model channel, ``in_chans`` floats each (worked out once: used per sample)."""
        mean = self.mean_vector(self.in_chans).flatten().tolist()
        return tuple(mean), tuple(self.std_vector(self.in_chans).flatten().tolist())

    def normalisation(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of a sample with ``channels`` channels: ``in_chans``, or 1 for a gray sample that stays
        gray (:attr:`gray_expands` False: the statistics are equal on every channel, so the first serves)."""
        mean, std = self._statistics
        return mean[:channels], std[:channels]

    @functools.cached_property
    def gray_expands(self) -> bool:
        """Whether a gray image must be repeated to ``in_chans`` before normalising: per-channel statistics
        that differ (with equal ones, one normalised channel repeated on the device is the same)."""
        mean, std = self._statistics
        return len(set(mean)) > 1 or len(set(std)) > 1

    def transform(self, array: np.ndarray, params: AugmentParams) -> torch.Tensor:
        """Decoded ``[H, W, C]`` uint8/uint16 pixels -> the sample ``[C', out_h, out_w]`` float32 under the crop
        and flip ``params`` (:meth:`augment_params`). The 16-bit range comes from the whole image; only the
        crop is then mapped, resized (bicubic, antialiased), flipped and normalised. ``C'`` is ``in_chans``,
        or 1 for gray pixels when :attr:`gray_expands` is False (the loaders repeat it on the device)."""
        lo, hi = self.mapping.range(array)
        crop = array[params.top : params.top + params.height, params.left : params.left + params.width]
        img01 = apply_range(crop, lo, hi)  # [C, h, w]
        if img01.shape[0] == 3 and self.in_chans == 1:
            img01 = img01.mean(dim=0, keepdim=True)
        elif img01.shape[0] == 1 and self.in_chans > 1 and self.gray_expands:
            img01 = img01.expand(self.in_chans, -1, -1)
        mean, std = self.normalisation(img01.shape[0])
        local = AugmentParams(top=0, left=0, height=params.height, width=params.width, flip=params.flip)
        return apply_augment(img01, local, self.img_size, mean, std)

    def augment_params(self, index: int, height: int, width: int, epoch: int) -> AugmentParams:
        """The crop and flip of sample ``index`` of ``epoch`` on an ``height x width`` image."""
        if self.crop == "centre":  # the largest centred crop of the training aspect, no flip
            target_h, target_w = self.img_size
            crop_w = min(width, max(1, round(height * target_w / target_h)))
            crop_h = min(height, max(1, round(width * target_h / target_w)))
            return AugmentParams(
                top=(height - crop_h) // 2, left=(width - crop_w) // 2, height=crop_h, width=crop_w, flip=False
            )
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return sample_augment(height, width, generator, self.scale, self.ratio, self.hflip_prob)


def _frozen(value: float | Sequence[float]) -> float | tuple[float, ...]:
    """A number stays a number; a sequence becomes a tuple (hashable, immutable)."""
    if isinstance(value, (int, float)):
        return float(value)
    return tuple(float(v) for v in value)
