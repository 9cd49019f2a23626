"""The one batch contract every loader (reference, DALI, synthetic) hands the trainer.

Legend: B = batch size; C = channels; H, W = training height and width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """A training batch.

    Attributes:
        images: ``[B, C, H, W]`` normalised float images, or uint16 codes with ``wire`` set (the engine's
            wire format, :func:`quantize_unit`; :meth:`to` decodes them on the device). A loader may deliver
            ``C = 1`` for gray data; :meth:`to` repeats it to the model's channels on the device as a view.
        indices: ``[B]`` int64, the dataset positions the images came from (for exact resume and for
            reporting a bad batch). A substituted sample carries the substitute's position.
        skipped: ``(path, reason)`` of each file that failed to decode while this batch was built and
            was replaced by the next readable one (the batch size stays constant).
    """

    images: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    wire: WireAffine | None = None
    """``None``: ``images`` are the normalised float values. Otherwise ``images`` are integer codes and the
    float image is ``codes * wire.scale + wire.offset`` per channel, computed by :meth:`to` on the device."""

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(
                f"Batch: expected images [B,C,H,W], got shape {tuple(self.images.shape)}; stack samples with collate()"
            )
        if self.indices.ndim != 1 or self.indices.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"Batch: expected indices [B] with B={self.images.shape[0]}, got shape {tuple(self.indices.shape)}; "
                "give one dataset position per image"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        channels: int | None = None,
        non_blocking: bool = False,
    ) -> Batch:
        """Move to ``device``, convert images to ``dtype``, and repeat gray images to ``channels``.

        Args:
            device: target device.
            dtype: images' dtype (e.g. ``torch.bfloat16``); ``None`` keeps it (a wire batch decodes to
                float32). Indices stay int64.
            channels: the model's ``in_chans``. ``C == channels`` is kept; ``C == 1`` with
                ``channels > 1`` becomes ``images.expand(-1, channels, -1, -1)``, a stride-0 view
                (no copy: one decode, one transfer); anything else is an error.
            non_blocking: passed to ``Tensor.to`` (useful with pinned memory).

        Returns:
            a new :class:`Batch` of float images (``wire`` None); ``skipped`` is shared, not copied.
        """
        current = int(self.images.shape[1])
        if channels is not None:
            if not isinstance(channels, int) or channels <= 0:
                raise ValueError(
                    f"Batch.to: expected channels as a positive int, got {channels!r}; use the model's in_chans"
                )
            if current != channels and current != 1:
                raise ValueError(
                    f"Batch.to: expected images with 1 or {channels} channels, got {current}; "
                    f"set in_chans={current} or load the data with in_chans={channels}"
                )
        images = self.images.to(device=device, non_blocking=non_blocking)
        if self.wire is not None:
            images = self.wire.decode(images, dtype or torch.float32, non_blocking)
        elif dtype is not None:
            images = images.to(dtype)
        if channels is not None and current == 1 and channels > 1:
            images = images.expand(-1, channels, -1, -1)
        indices = self.indices.to(device=device, non_blocking=non_blocking)
        return Batch(images=images, indices=indices, skipped=self.skipped)

    def pin_memory(self) -> Batch:
        """Pinned-memory copy (called by ``DataLoader(pin_memory=True)``)."""
        wire = None if self.wire is None else WireAffine(self.wire.scale.pin_memory(), self.wire.offset.pin_memory())
        return Batch(
            images=self.images.pin_memory(), indices=self.indices.pin_memory(), skipped=self.skipped, wire=wire
        )


UINT16_LEVELS = 65535


@dataclass(frozen=True)
class WireAffine:
    """The per-channel affine that turns integer codes back into normalised images on the device.

    Attributes:
        scale, offset: ``[C]`` float32; ``image = codes * scale + offset`` (one fused elementwise step).
    """

    scale: torch.Tensor
    offset: torch.Tensor

    def decode(self, codes_BCHW: torch.Tensor, dtype: torch.dtype, non_blocking: bool = False) -> torch.Tensor:
        """``[B, C, H, W]`` codes (on any device) -> normalised ``dtype`` images, computed in float32.
        ``non_blocking`` as for the codes: with a pinned affine (:meth:`Batch.pin_memory`) its copy does not
        wait for the device's queued work either."""
        scale = self.scale.to(codes_BCHW.device, non_blocking=non_blocking).view(1, -1, 1, 1)
        offset = self.offset.to(codes_BCHW.device, non_blocking=non_blocking).view(1, -1, 1, 1)
        return torch.addcmul(offset, codes_BCHW.to(torch.float32), scale).to(dtype)


def quantize_unit(batch: Batch, mean: torch.Tensor, std: torch.Tensor) -> Batch:
    """The engine's wire format: a normalised float batch as uint16 codes of its [0, 1] values.

    The loader's samples are ``(y - mean) / std`` with ``y`` in [0, 1] (clamped after the bicubic resize),
    so ``y`` is recovered, rounded to ``round(y * 65535)`` and shipped as uint16 (2 bytes a pixel instead
    of 4) with ``scale = 1 / (65535 * std)``, ``offset = -mean / std``. Decoding is within
    ``0.5 / 65535 / std`` (+ float32 rounding) of the float batch: 3.8e-5 at the default std 0.2. For
    std >= 0.125 that is under bf16's own rounding of any input of magnitude 1/64 or more (half an ulp
    there is at least 2^-14 = 6.1e-5).
    Not exact, hence only for ``train.engine=engine``; the source's own uint8/uint16 pixels cannot be
    shipped instead, because the resize (and, for 16-bit, the clip before it) yields non-integers.

    Args:
        batch: normalised float32 images ``[B, C, H, W]``.
        mean, std: ``[C]`` float32 (or one value), the normalisation the samples went through.
    """
    if not batch.images.is_floating_point() or batch.wire is not None:
        raise ValueError(
            f"quantize_unit: expected a normalised float batch, got dtype {batch.images.dtype}; quantize once"
        )
    channels = int(batch.images.shape[1])
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1).expand(channels).clone()
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1).expand(channels).clone()
    # one float temporary, then in place: y = x * std + mean, clamped, scaled, rounded, cast
    unit = torch.addcmul(mean.view(1, -1, 1, 1), batch.images, std.view(1, -1, 1, 1))
    codes = unit.clamp_(0.0, 1.0).mul_(UINT16_LEVELS).round_().to(torch.uint16)
    wire = WireAffine(scale=1.0 / (UINT16_LEVELS * std.double()).float(), offset=-mean / std)
    return Batch(images=codes, indices=batch.indices, skipped=batch.skipped, wire=wire)
