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
        images: ``[B, C, H, W]`` normalised images. A loader may deliver ``C = 1`` for gray data;
            :meth:`to` repeats it to the model's channels on the device as a view.
        indices: ``[B]`` int64, the dataset positions the images came from (for exact resume and for
            reporting a bad batch). A substituted sample carries the substitute's position.
        skipped: ``(path, reason)`` of each file that failed to decode while this batch was built and
            was replaced by the next readable one (the batch size stays constant).
    """

    images: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)

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
            dtype: images' dtype (e.g. ``torch.bfloat16``); ``None`` keeps it. Indices stay int64.
            channels: the model's ``in_chans``. ``C == channels`` is kept; ``C == 1`` with
                ``channels > 1`` becomes ``images.expand(-1, channels, -1, -1)``, a stride-0 view
                (no copy: one decode, one transfer); anything else is an error.
            non_blocking: passed to ``Tensor.to`` (useful with pinned memory).

        Returns:
            a new :class:`Batch`; ``skipped`` is shared, not copied.
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
        images = self.images.to(device=device, dtype=dtype, non_blocking=non_blocking)
        if channels is not None and current == 1 and channels > 1:
            images = images.expand(-1, channels, -1, -1)
        indices = self.indices.to(device=device, non_blocking=non_blocking)
        return Batch(images=images, indices=indices, skipped=self.skipped)

    def pin_memory(self) -> Batch:
        """Pinned-memory copy (called by ``DataLoader(pin_memory=True)``)."""
        return Batch(images=self.images.pin_memory(), indices=self.indices.pin_memory(), skipped=self.skipped)
