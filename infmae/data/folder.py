"""The reference dataset: a :class:`~infmae.data.catalogue.Catalogue` of images (a folder tree, a curated
manifest or a pack), decoded and turned into samples by a :class:`~infmae.data.spec.SampleSpec`.

Legend: C = channels of the decoded file (1 or 3); in_chans = the model's channels; H, W = training size.

Which files, their sizes and kinds, what is dropped at scan and the substitution of files that fail to
decode belong to the catalogue; what a sample is (crop, flip, 16-bit mapping, normalisation) to the spec.
This module only decodes (:func:`~infmae.data.io.read_image`, or a pack's shards) and transforms.

Per-sample randomness never touches the global RNG: sample ``i`` in epoch ``e`` draws its crop and flip
from ``torch.Generator().manual_seed(sample_seed(seed, e, i))``, so a sample is the same whatever the
worker count or the order it is read in (exact resume). A file that fails to decode at read time is
logged once, listed in the sample's ``skipped``, and replaced by the next index (``(i + 1) % len``),
deterministically, so batches keep their size. "Once" is per process: a DataLoader worker has its own
copy of the dataset, so :class:`~infmae.data.loader.ReferenceLoader` hands the files it sees in
``Batch.skipped`` back through :meth:`ImageFolderDataset.note_unreadable`, and later epochs' workers
skip them without a new decode attempt or warning (the substitution itself does not change).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalogue import Catalogue
from .io import ImageReadError, read_image
from .packed import PackedReader
from .spec import SampleSpec
from .transforms import AugmentParams

logger = logging.getLogger(__name__)

__all__ = ["ImageFolderDataset"]


class ImageFolderDataset(Dataset):
    """Images from a folder tree, a manifest or a pack, augmented as released.

    ``dataset[i]`` returns ``(image, index, skipped)``:

    - ``image``: ``[C', H, W]`` float32, normalised (:meth:`SampleSpec.transform`), where
      ``C' = in_chans`` for colour files and ``C' = 1`` for gray files (repeated to ``in_chans`` on the
      device by :meth:`Batch.to`; before normalising when the per-channel statistics differ); a colour
      file is averaged to gray when ``in_chans == 1``.
    - ``index``: the dataset position actually read (``i``, or its substitute).
    - ``skipped``: ``(path, reason)`` of each file that failed to decode and was replaced.

    Args:
        root: a folder, a ``.csv`` manifest, a pack folder written by ``infmae pack`` (its shards are read
            on the CPU; the stored ranges are not used, so the mapping is computed as for files), or an
            opened :class:`~infmae.data.catalogue.Catalogue`.
        spec: what a sample is (:class:`~infmae.data.spec.SampleSpec`, e.g. ``SampleSpec.from_config``);
            or leave it out and give its fields as keywords (``img_size``, ``in_chans``, ``seed``,
            ``scale``, ``ratio``, ``hflip_prob``, ``mean``, ``std``, and the mapping as
            ``sixteen_bit_mode``, ``low``, ``high``).
        min_size, base, check_headers, max_substitutions, allow_outside_root: how the catalogue is opened
            (:meth:`Catalogue.open`): files whose width AND height are both under ``min_size`` are dropped
            (Inf30: 20); ``base`` is the folder a manifest's paths are relative to; ``check_headers=False``
            trusts a manifest's sizes; ``max_substitutions`` consecutive unreadable files raise;
            ``allow_outside_root`` accepts manifest rows that lead outside their root.
    """

    def __init__(
        self,
        root: str | os.PathLike | Catalogue,
        spec: SampleSpec | None = None,
        *,
        min_size: int = 20,
        base: str | os.PathLike | None = None,
        check_headers: bool = True,
        max_substitutions: int = 16,
        allow_outside_root: bool = False,
        **sample,
    ):
        super().__init__()
        if spec is None:
            spec = SampleSpec.from_options(**sample)
        elif sample:
            raise TypeError(f"ImageFolderDataset: expected spec or its fields, got both (spec and {sorted(sample)})")
        self.spec = spec
        self.epoch = 0
        if isinstance(root, Catalogue):
            self.catalogue = root
        else:
            self.catalogue = Catalogue.open(
                root,
                min_size=min_size,
                base=base,
                check_headers=check_headers,
                allow_outside_root=allow_outside_root,
                max_substitutions=max_substitutions,
            )

    # ------------------------------------------------------------------------------------------
    # the catalogue's entries, as the trainer, the tests and the loaders read them
    @property
    def paths(self) -> list[str]:
        return self.catalogue.paths

    @property
    def sizes(self) -> list[tuple[int, int] | None]:
        """``(width, height)`` from the header, the manifest or the pack."""
        return self.catalogue.sizes

    @property
    def kinds(self) -> list[tuple[int, int] | None]:
        """``(channels, bits)`` from the header, the manifest or the pack."""
        return self.catalogue.kinds

    @property
    def dropped(self) -> list[tuple[str, str]]:
        """``(source path, reason)`` of the files dropped at scan."""
        return self.catalogue.dropped

    @property
    def root_dir(self) -> Path:
        return self.catalogue.root_dir

    @property
    def packed(self) -> PackedReader | None:
        return self.catalogue.packed

    @property
    def img_size(self) -> tuple[int, int]:
        return self.spec.img_size

    @property
    def in_chans(self) -> int:
        return self.spec.in_chans

    @property
    def eval_view(self) -> bool:
        """True: a fixed view per image (validation): the spec's ``crop == "centre"``."""
        return self.spec.crop == "centre"

    @eval_view.setter
    def eval_view(self, value: bool) -> None:
        self.spec = dataclasses.replace(self.spec, crop="centre" if value else "random")

    def __len__(self) -> int:
        return len(self.catalogue)

    def path(self, index: int) -> Path:
        """The file behind dataset position ``index``."""
        return self.catalogue.path(index)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose per-sample augmentation ``__getitem__`` draws."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(
                f"ImageFolderDataset.set_epoch: expected an int >= 0, got {epoch!r}; pass the epoch number"
            )
        self.epoch = int(epoch)

    def split_off(self, keep: Callable[[str], bool]) -> ImageFolderDataset:
        """Move the images whose relative path satisfies ``keep(path)`` into a new dataset in eval view
        (validation) and return it; this dataset keeps the others. Both share the files and settings."""
        held = ImageFolderDataset(self.catalogue.split(keep), self.spec.eval_view())
        held.epoch = self.epoch
        return held

    @property
    def unreadable(self) -> dict[str, str]:
        """Files that failed to decode in this process (or were reported by a loader): path -> reason."""
        return self.catalogue.unreadable.as_dict()

    def note_unreadable(self, skipped: Sequence[tuple[str, str]]) -> None:
        """Record files found unreadable elsewhere (e.g. in a worker) so they are skipped without a retry
        or a second warning; substitution stays the same, since it only depends on which files fail."""
        self.catalogue.unreadable.note(skipped)

    def augment_params(self, index: int, height: int, width: int, epoch: int | None = None) -> AugmentParams:
        """The crop and flip of sample ``index`` on an ``height x width`` image, as ``__getitem__`` draws them
        (:meth:`SampleSpec.augment_params` at the current epoch unless ``epoch`` is given)."""
        return self.spec.augment_params(index, height, width, self.epoch if epoch is None else epoch)

    # ------------------------------------------------------------------------------------------
    # decode and transform
    def load(self, index: int) -> np.ndarray:
        """Decode file ``index`` to ``[H, W, C]`` uint8/uint16; raises ImageReadError."""
        if self.catalogue.packed is not None:
            return self.catalogue.packed.read(self.catalogue.pack_row(index))
        return read_image(self.path(index))

    def transform(self, array: np.ndarray, index: int) -> torch.Tensor:
        """Augment decoded ``[H, W, C]`` pixels as sample ``index`` of the current epoch.

        The 16-bit range comes from the whole image; only the crop is then mapped, resized (bicubic,
        antialiased), flipped and normalised. Returns ``[C', H_out, W_out]`` float32 (see the class doc).
        """
        return self.spec.transform(array, self.augment_params(index, array.shape[0], array.shape[1]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, list[tuple[str, str]]]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"ImageFolderDataset: expected index in [0, {n}), got {index}; the dataset has {n} images")
        array, position, skipped = self.catalogue.read(index % n, self.load, (ImageReadError,))
        return self.transform(array, position), position, skipped
