"""The reference dataset: any folder tree of images, or a curated manifest, with the released augmentation.

Legend: C = channels of the decoded file (1 or 3); in_chans = the model's channels; H, W = training size.

Sources:

- a folder: scanned recursively; relative paths sorted, ``/``-separated; extensions matched without
  case (:data:`infmae.data.io.IMAGE_EXTENSIONS`); hidden files and folders (``.name``) ignored;
  links to folders are not followed.
- a manifest (``root`` ends in ``.csv``, as written by ``infmae curate``): the ``path`` and ``status``
  columns are read and rows with ``status == "keep"`` are used. Paths are relative to ``base`` when it
  is given (the folder that was curated, i.e. curate's ``SRC`` / a ``--data-root``), else to the
  ``source`` recorded in ``curate.json`` beside the CSV (written by ``infmae curate``), else to the
  CSV's own folder. A kept row whose path leads outside that folder (``..`` components, an absolute
  path) is an error naming the row, unless ``allow_outside_root`` (``data.allow_outside_root``).

Every file's header is checked at construction (cheap: no pixel decode). Unreadable headers (empty
files, non-images) and tiny images (both sides under ``min_size``) are dropped, logged as warnings and
listed in :attr:`ImageFolderDataset.dropped`.

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

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import IMAGE_EXTENSIONS, ImageReadError, read_image, read_image_info
from .manifest import manifest_base, read_kept_rows
from .mapping import SIXTEEN_BIT_MODES, apply_range, image_range
from .packed import PackedReader, is_pack, too_small_reason
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

logger = logging.getLogger(__name__)


def scan_folder(root: Path) -> list[str]:
    """Relative ``/``-separated paths of the image files under ``root``, sorted; hidden entries skipped."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        rel_dir = Path(directory).relative_to(root)
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found.append((rel_dir / name).as_posix())
    found.sort()
    return found


def _what_is(path: Path) -> str:
    if not path.exists():
        return "no such file or folder"
    return "a single image" if path.suffix.lower() in IMAGE_EXTENSIONS else "a file that is neither"


def _data_path_hint(path: Path) -> str:
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return f"point --data at the folder that holds it: --data {path.parent}"
    return "check the data path"


class ImageFolderDataset(Dataset):
    """Images from a folder tree or a manifest, augmented as released.

    ``dataset[i]`` returns ``(image, index, skipped)``:

    - ``image``: ``[C', H, W]`` float32, normalised, where ``C' = in_chans`` for colour files and
      ``C' = 1`` for gray files (repeated to ``in_chans`` on the device by :meth:`Batch.to`);
      a colour file is averaged to gray when ``in_chans == 1``.
    - ``index``: the dataset position actually read (``i``, or its substitute).
    - ``skipped``: ``(path, reason)`` of each file that failed to decode and was replaced.

    Args:
        root: a folder, a ``.csv`` manifest, or a pack folder written by ``infmae pack`` (its shards are
            read on the CPU; the stored ranges are not used, so the mapping is computed as for files).
        img_size: training size (H, W); smaller images are fine (the crop is resized up).
        in_chans: the model's channels, 1 or 3.
        seed: seed of the per-sample augmentation.
        scale, ratio, hflip_prob: the random resized crop and flip (released: (0.2, 1), (3/4, 4/3), 0.5).
        mean, std: normalisation, a number or one value per channel (released: 0.425, 0.2).
        sixteen_bit_mode, low, high: the 16-bit to [0, 1] rule (see :mod:`infmae.data.mapping`).
        min_size: files whose width AND height are both under it are dropped (Inf30: 20).
        base: for a manifest, the folder its paths are relative to (default: curate.json's source, else the
            CSV's folder).
        check_headers: read every file's header at construction (default True); with False a
            manifest's ``width``/``height`` columns are trusted and a folder is not filtered.
        max_substitutions: how many consecutive unreadable files to skip before raising.
        allow_outside_root: accept manifest rows whose path leads outside the manifest's root (``..``,
            absolute paths); by default the first such row raises ValueError (``data.allow_outside_root``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        img_size: Sequence[int],
        in_chans: int,
        seed: int,
        scale: Sequence[float] = DEFAULT_SCALE,
        ratio: Sequence[float] = DEFAULT_RATIO,
        hflip_prob: float = 0.5,
        mean: float | Sequence[float] = DEFAULT_MEAN,
        std: float | Sequence[float] = DEFAULT_STD,
        sixteen_bit_mode: str = "percentile",
        low: float = 0.5,
        high: float = 99.5,
        min_size: int = 20,
        base: str | os.PathLike | None = None,
        check_headers: bool = True,
        max_substitutions: int = 16,
        allow_outside_root: bool = False,
    ):
        super().__init__()
        if len(img_size) != 2 or min(int(s) for s in img_size) <= 0:
            raise ValueError(f"ImageFolderDataset: expected img_size as (H, W) > 0, got {img_size}; e.g. (224, 224)")
        if in_chans not in (1, 3):
            raise ValueError(f"ImageFolderDataset: expected in_chans 1 or 3, got {in_chans}; the released model uses 3")
        if sixteen_bit_mode not in SIXTEEN_BIT_MODES:
            raise ValueError(
                f"ImageFolderDataset: expected sixteen_bit_mode in {SIXTEEN_BIT_MODES}, got {sixteen_bit_mode!r}; "
                "the default is 'percentile'"
            )
        if max_substitutions < 1:
            raise ValueError(f"ImageFolderDataset: expected max_substitutions >= 1, got {max_substitutions}; e.g. 16")
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.in_chans = int(in_chans)
        self.seed = int(seed)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip_prob = float(hflip_prob)
        self.mean = mean
        self.std = std
        self.sixteen_bit_mode = sixteen_bit_mode
        self.low = float(low)
        self.high = float(high)
        self.min_size = int(min_size)
        self.max_substitutions = int(max_substitutions)
        self.epoch = 0
        self.eval_view = False  # True: a fixed view per image (validation), see augment_params
        mean_c = channel_vector("ImageFolderDataset", "mean", mean, self.in_chans)
        std_c = channel_vector("ImageFolderDataset", "std", std, self.in_chans)
        # With per-channel statistics that differ, a gray file must be repeated before normalising.
        self._gray_needs_expand = bool((mean_c != mean_c[0]).any() or (std_c != std_c[0]).any())
        image_range(np.zeros((1, 1, 1), np.uint16), sixteen_bit_mode, self.low, self.high)  # validates low/high

        root = Path(root)
        self.packed: PackedReader | None = None
        pack_ids: list[int] = []
        listed_kinds: list[tuple[int, int] | None] = []
        if root.is_file() and root.suffix.lower() == ".csv":
            self.root_dir = Path(base) if base is not None else manifest_base(root)
            kept = read_kept_rows(root, root=self.root_dir, allow_outside_root=allow_outside_root)
            candidates, listed_sizes, listed_kinds = kept.paths, kept.sizes, kept.kinds
            source = f"manifest {root} (paths relative to {self.root_dir})"
        elif root.is_dir() and is_pack(root):
            if base is not None:
                raise ValueError(
                    f"ImageFolderDataset: expected base only with a .csv manifest, got base={base} for "
                    f"pack {root}; drop base"
                )
            self.root_dir = root
            self.packed = PackedReader(root)
            entries = self.packed.entries
            candidates = [e.path for e in entries]
            listed_sizes = [(e.width, e.height) for e in entries]
            listed_kinds = [(e.channels, e.bits) for e in entries]
            # the source file's size decides "too small", as for files (a max_side cap only shrinks the copy)
            source_sizes = [
                (e.source_width, e.source_height) if e.source_width and e.source_height else (e.width, e.height)
                for e in entries
            ]
            check_headers = False  # the shards hold decoded pixels; their index is the header
            source = f"pack {root}"
        elif root.is_dir():
            if base is not None:
                raise ValueError(
                    f"ImageFolderDataset: expected base only with a .csv manifest, got base={base} for folder {root}; "
                    "drop base"
                )
            self.root_dir = root
            candidates = scan_folder(root)
            listed_sizes = [None] * len(candidates)
            listed_kinds = [None] * len(candidates)
            source = f"folder {root}"
        else:
            raise ValueError(
                f"data: expected an image folder, a manifest .csv or a pack folder, got {root} "
                f"({_what_is(root)}); {_data_path_hint(root)}"
            )

        self.paths: list[str] = []
        self.sizes: list[tuple[int, int] | None] = []  # (width, height) from the header or the manifest
        self.kinds: list[tuple[int, int] | None] = []  # (channels, bits) from the header, manifest or pack
        self.dropped: list[tuple[str, str]] = []  # (source path, reason)
        if self.packed is None:
            source_sizes = listed_sizes
        else:
            self._note_pack_skipped()
        for count, (rel, size, kind, source_size) in enumerate(
            zip(candidates, listed_sizes, listed_kinds, source_sizes)
        ):
            if check_headers:
                try:
                    info = read_image_info(self.root_dir / rel)
                except ImageReadError as exc:
                    self._drop(rel, f"unreadable: {exc.reason}")
                    continue
                size, kind = (info.width, info.height), (info.channels, info.bits)
                source_size = size
            if source_size is not None and source_size[0] < self.min_size and source_size[1] < self.min_size:
                self._drop(rel, too_small_reason(source_size[0], source_size[1], self.min_size))
                continue
            self.paths.append(rel)
            self.sizes.append(size)
            self.kinds.append(kind)
            if self.packed is not None:
                pack_ids.append(count)
            if (count + 1) % 10000 == 0:
                logger.info("scanned %d / %d files of %s", count + 1, len(candidates), source)
        if not self.paths:
            raise ValueError(
                f"data: expected at least one readable image ({', '.join(IMAGE_EXTENSIONS)}, any case) "
                f"in {source}, got {len(candidates)} candidate files and {len(self.dropped)} dropped; "
                "check the path and the files' extensions"
            )
        logger.info("%s: %d images, %d dropped at scan", source, len(self.paths), len(self.dropped))
        self._unreadable: dict[str, str] = {}  # path -> reason, for files that failed to decode
        self.pack_ids = pack_ids  # dataset position -> pack row (packs only)

    def _drop(self, rel: str, reason: str) -> None:
        path = str(self.root_dir / rel if self.packed is None else self.packed.source_path(rel))
        logger.warning("dropping %s: %s", path, reason)
        self.dropped.append((path, reason))

    def _note_pack_skipped(self) -> None:
        """Put the files ``infmae pack`` left out into :attr:`dropped`, under their source paths."""
        assert self.packed is not None
        left_out = self.packed.skipped
        self.dropped.extend(left_out)
        if left_out:
            logger.warning(
                "pack %s: %d source files were left out when it was written (unreadable or too small), "
                "reported with the skipped files",
                self.packed.root,
                len(left_out),
            )
        if self.packed.min_size > self.min_size:
            logger.warning(
                "pack %s was written with --min-size %d, above min_size=%d: images with a side between the two "
                "are not in it; re-pack with --min-size %d to train on them",
                self.packed.root,
                self.packed.min_size,
                self.min_size,
                self.min_size,
            )

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        """The file behind dataset position ``index``."""
        return self.root_dir / self.paths[index]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose per-sample augmentation ``__getitem__`` draws."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(
                f"ImageFolderDataset.set_epoch: expected an int >= 0, got {epoch!r}; pass the epoch number"
            )
        self.epoch = int(epoch)

    def split_off(self, keep) -> ImageFolderDataset:
        """Move the images whose relative path satisfies ``keep(path)`` into a new dataset in eval view
        (validation) and return it; this dataset keeps the others. Both share the files and settings."""
        chosen = [i for i, rel in enumerate(self.paths) if keep(rel)]
        if not chosen or len(chosen) == len(self.paths):
            raise ValueError(
                f"data: expected a validation split that leaves images on both sides, got {len(chosen)} of "
                f"{len(self.paths)} images; change data.val_fraction or pass --val-data"
            )
        held = copy.copy(self)
        taken = set(chosen)
        count = len(self.paths)  # before the loop shortens self.paths
        for name in ("paths", "sizes", "kinds", "pack_ids"):
            values = getattr(self, name)
            if len(values) == count:
                setattr(held, name, [values[i] for i in chosen])
                setattr(self, name, [v for i, v in enumerate(values) if i not in taken])
        held._unreadable = self._unreadable  # one registry: a file found unreadable is skipped on both sides
        held.dropped = []
        held.eval_view = True
        return held

    @property
    def unreadable(self) -> dict[str, str]:
        """Files that failed to decode in this process (or were reported by a loader): path -> reason."""
        return dict(self._unreadable)

    def note_unreadable(self, skipped: Sequence[tuple[str, str]]) -> None:
        """Record files found unreadable elsewhere (e.g. in a worker) so they are skipped without a retry
        or a second warning; substitution stays the same, since it only depends on which files fail."""
        for path, reason in skipped:
            self._unreadable.setdefault(path, reason)

    def augment_params(self, index: int, height: int, width: int, epoch: int | None = None) -> AugmentParams:
        """The crop and flip of sample ``index`` on an ``height x width`` image, as ``__getitem__`` draws them
        (for another loader that must reproduce the reference samples)."""
        if self.eval_view:  # the largest centred crop of the training aspect, no flip
            target_h, target_w = self.img_size
            crop_w = min(width, max(1, round(height * target_w / target_h)))
            crop_h = min(height, max(1, round(width * target_h / target_w)))
            return AugmentParams(
                top=(height - crop_h) // 2, left=(width - crop_w) // 2, height=crop_h, width=crop_w, flip=False
            )
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return sample_augment(height, width, generator, self.scale, self.ratio, self.hflip_prob)

    def load(self, index: int) -> np.ndarray:
        """Decode file ``index`` to ``[H, W, C]`` uint8/uint16; raises ImageReadError."""
        if self.packed is not None:
            return self.packed.read(self.pack_ids[index])
        return read_image(self.path(index))

    def transform(self, array: np.ndarray, index: int) -> torch.Tensor:
        """Augment decoded ``[H, W, C]`` pixels as sample ``index`` of the current epoch.

        The 16-bit range comes from the whole image; only the crop is then mapped, resized (bicubic,
        antialiased), flipped and normalised. Returns ``[C', H_out, W_out]`` float32 (see the class doc).
        """
        height, width, channels = array.shape
        params = self.augment_params(index, height, width)
        lo, hi = image_range(array, self.sixteen_bit_mode, self.low, self.high)
        crop = array[params.top : params.top + params.height, params.left : params.left + params.width]
        img01 = apply_range(crop, lo, hi)  # [C, h, w]
        if channels == 3 and self.in_chans == 1:
            img01 = img01.mean(dim=0, keepdim=True)
        elif channels == 1 and self.in_chans > 1 and self._gray_needs_expand:
            img01 = img01.expand(self.in_chans, -1, -1)
        local = AugmentParams(top=0, left=0, height=params.height, width=params.width, flip=params.flip)
        return apply_augment(img01, local, self.img_size, self.mean, self.std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, list[tuple[str, str]]]:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"ImageFolderDataset: expected index in [0, {n}), got {index}; the dataset has {n} images")
        index %= n
        skipped: list[tuple[str, str]] = []
        for attempt in range(min(self.max_substitutions, n)):
            position = (index + attempt) % n
            path = str(self.path(position))
            reason = self._unreadable.get(path)
            if reason is None:
                try:
                    array = self.load(position)
                except ImageReadError as exc:
                    reason = exc.reason
                    self._unreadable[path] = reason
                    logger.warning("skipping unreadable %s: %s (substituting the next image)", path, reason)
                else:
                    return self.transform(array, position), position, skipped
            skipped.append((path, reason))
        names = "; ".join(f"{p} ({r})" for p, r in skipped)
        raise RuntimeError(
            f"ImageFolderDataset: {len(skipped)} consecutive files from position {index} are unreadable: {names}; "
            "run `infmae curate` on the data and train on its manifest"
        )
