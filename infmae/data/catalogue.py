"""The catalogue of images a dataset is made of, shared by both loaders (reference and DALI) and by curate.

Legend: N = images in the catalogue.

Sources (:meth:`Catalogue.open`):

- a folder: scanned recursively (:func:`scan_folder`); relative paths sorted, ``/``-separated; extensions
  matched without case (:data:`infmae.data.io.IMAGE_EXTENSIONS`); hidden files and folders (``.name``)
  ignored; links to folders are not followed. ``infmae curate`` lists a folder with the same function.
- a manifest (``root`` ends in ``.csv``, :mod:`infmae.data.manifest`): the rows with ``status == "keep"``.
  Paths are relative to ``base`` when it is given (the folder that was curated, i.e. curate's ``SRC`` /
  a ``--data-root``), else to the ``source`` recorded in ``curate.json`` beside the CSV, else to the
  CSV's own folder. A kept row whose path leads outside that folder (``..`` components, an absolute
  path) is an error naming the row, unless ``allow_outside_root`` (``data.allow_outside_root``).
- a pack folder written by ``infmae pack`` (:mod:`infmae.data.packed`): its index; the files the pack
  left out are reported under their source paths.

Every file's header is checked when the catalogue is opened (cheap: no pixel decode), unless
``check_headers=False`` (then a manifest's ``width``/``height`` columns are trusted and a folder is not
filtered). Unreadable headers (empty files, non-images) and tiny images (both sides under ``min_size``)
are dropped, logged as warnings and listed in :attr:`Catalogue.dropped`.

Each entry has a relative path, a size ``(width, height)`` and a kind ``(channels, bits)`` (None when not
known without a header read). Files that fail to decode later are recorded in the unreadable registry
(:class:`UnreadableFiles`), and :meth:`Catalogue.resolve` applies the one substitution rule: position
``i`` is read from the first position of ``i, i + 1, ...`` (modulo N) not known unreadable, at most
``max_substitutions`` of them, deterministically, so batches keep their size and both loaders agree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .io import IMAGE_EXTENSIONS, ImageReadError, read_image_info
from .manifest import manifest_base, read_kept_rows
from .packed import PackedReader, is_pack, too_small_reason

logger = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)
Kind = tuple[int, int]  # (channels, bits)
T = TypeVar("T")


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


class UnreadableFiles:
    """Files found unreadable at decode time: path -> reason. One registry per catalogue, shared with the
    catalogues split off it; "once" is per process (a DataLoader worker has its own copy, and the loader
    hands what its workers found back through :meth:`note`)."""

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}

    def get(self, path: str) -> str | None:
        """The reason ``path`` is known unreadable, or None."""
        return self._reasons.get(path)

    def mark(self, path: str, reason: str) -> None:
        """Record a file that just failed to decode here, with the one warning it gets."""
        if path not in self._reasons:
            logger.warning("skipping unreadable %s: %s (substituting the next image)", path, reason)
            self._reasons[path] = reason

    def note(self, skipped: Sequence[tuple[str, str]]) -> None:
        """Record files found unreadable elsewhere (e.g. in a worker): no retry, no second warning."""
        for path, reason in skipped:
            self._reasons.setdefault(path, reason)

    def as_dict(self) -> dict[str, str]:
        return dict(self._reasons)


class Catalogue:
    """The entries of a folder, a manifest or a pack (module docstring), with the unreadable registry.

    Attributes:
        root_dir: the folder the relative paths start from (for a pack: the pack folder).
        paths: ``[N]`` relative paths.
        sizes: ``[N]`` ``(width, height)`` or None.
        kinds: ``[N]`` ``(channels, bits)`` or None.
        dropped: ``(source path, reason)`` of the files left out when it was opened.
        packed: the pack reader, or None for files.
        pack_ids: ``[N]`` pack rows (packs only; empty otherwise).
        source: a description for log lines and errors.
        max_substitutions: how many consecutive unreadable files :meth:`resolve` skips before raising.
    """

    def __init__(
        self,
        root_dir: Path,
        source: str,
        packed: PackedReader | None = None,
        max_substitutions: int = 16,
    ):
        if max_substitutions < 1:
            raise ValueError(f"Catalogue: expected max_substitutions >= 1, got {max_substitutions}; e.g. 16")
        self.root_dir = Path(root_dir)
        self.source = source
        self.packed = packed
        self.max_substitutions = int(max_substitutions)
        self.paths: list[str] = []
        self.sizes: list[Size | None] = []
        self.kinds: list[Kind | None] = []
        self.pack_ids: list[int] = []
        self.dropped: list[tuple[str, str]] = []
        self.unreadable = UnreadableFiles()

    # ------------------------------------------------------------------------------------------
    # opening
    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        *,
        min_size: int = 20,
        base: str | os.PathLike | None = None,
        check_headers: bool = True,
        allow_outside_root: bool = False,
        max_substitutions: int = 16,
    ) -> Catalogue:
        """The catalogue of ``root``: a folder, a ``.csv`` manifest or a pack folder (module docstring)."""
        root = Path(root)
        if base is not None and root.is_dir():
            kind = "pack" if is_pack(root) else "folder"
            raise ValueError(
                f"Catalogue: expected base only with a .csv manifest, got base={base} for {kind} {root}; drop base"
            )
        if root.is_file() and root.suffix.lower() == ".csv":
            root_dir = Path(base) if base is not None else manifest_base(root)
            kept = read_kept_rows(root, root=root_dir, allow_outside_root=allow_outside_root)
            catalogue = cls(root_dir, f"manifest {root} (paths relative to {root_dir})", None, max_substitutions)
            listed = list(zip(kept.paths, kept.sizes, kept.kinds, kept.sizes))
        elif root.is_dir() and is_pack(root):
            catalogue = cls(root, f"pack {root}", PackedReader(root), max_substitutions)
            catalogue._take_pack_skipped(min_size)
            # the source file's size decides "too small", as for files (a max_side cap only shrinks the copy)
            listed = [
                (
                    e.path,
                    (e.width, e.height),
                    (e.channels, e.bits),
                    (e.source_width, e.source_height) if e.source_width and e.source_height else (e.width, e.height),
                )
                for e in catalogue.packed.entries
            ]
            check_headers = False  # the shards hold decoded pixels; their index is the header
        elif root.is_dir():
            catalogue = cls(root, f"folder {root}", None, max_substitutions)
            listed = [(rel, None, None, None) for rel in scan_folder(root)]
        else:
            raise ValueError(
                f"data: expected an image folder, a manifest .csv or a pack folder, got {root} "
                f"({_what_is(root)}); {_data_path_hint(root)}"
            )
        catalogue._admit(listed, int(min_size), check_headers)
        return catalogue

    def _admit(self, listed: list[tuple[str, Size | None, Kind | None, Size | None]], min_size: int, check: bool):
        """Keep the listed entries that pass the header check and the size rule, in order."""
        for count, (rel, size, kind, source_size) in enumerate(listed):
            if check:
                try:
                    info = read_image_info(self.root_dir / rel)
                except ImageReadError as exc:
                    self._drop(rel, f"unreadable: {exc.reason}")
                    continue
                size, kind = (info.width, info.height), (info.channels, info.bits)
                source_size = size
            if source_size is not None and source_size[0] < min_size and source_size[1] < min_size:
                self._drop(rel, too_small_reason(source_size[0], source_size[1], min_size))
                continue
            self.paths.append(rel)
            self.sizes.append(size)
            self.kinds.append(kind)
            if self.packed is not None:
                self.pack_ids.append(count)
            if (count + 1) % 10000 == 0:
                logger.info("scanned %d / %d files of %s", count + 1, len(listed), self.source)
        if not self.paths:
            raise ValueError(
                f"data: expected at least one readable image ({', '.join(IMAGE_EXTENSIONS)}, any case) "
                f"in {self.source}, got {len(listed)} candidate files and {len(self.dropped)} dropped; "
                "check the path and the files' extensions"
            )
        logger.info("%s: %d images, %d dropped at scan", self.source, len(self.paths), len(self.dropped))

    def _drop(self, rel: str, reason: str) -> None:
        path = str(self.source_path(rel))
        logger.warning("dropping %s: %s", path, reason)
        self.dropped.append((path, reason))

    def _take_pack_skipped(self, min_size: int) -> None:
        """Put the files ``infmae pack`` left out into :attr:`dropped`, under their source paths."""
        packed = self.packed
        left_out = packed.skipped
        self.dropped.extend(left_out)
        if left_out:
            logger.warning(
                "pack %s: %d source files were left out when it was written (unreadable or too small), "
                "reported with the skipped files",
                packed.root,
                len(left_out),
            )
        if packed.min_size > min_size:
            logger.warning(
                "pack %s was written with --min-size %d, above min_size=%d: images with a side between the two "
                "are not in it; re-pack with --min-size %d to train on them",
                packed.root,
                packed.min_size,
                min_size,
                min_size,
            )

    # ------------------------------------------------------------------------------------------
    # entries
    def __len__(self) -> int:
        return len(self.paths)

    def path(self, position: int) -> Path:
        """The file behind ``position`` (for a pack: its path inside the pack folder, as a name)."""
        return self.root_dir / self.paths[position]

    def source_path(self, rel: str) -> Path:
        """Where the file ``rel`` came from: under the root, or a pack's recorded source folder."""
        return self.root_dir / rel if self.packed is None else self.packed.source_path(rel)

    def pack_row(self, position: int) -> int:
        """The pack index row of ``position`` (packs only)."""
        return self.pack_ids[position]

    def unknown(self) -> list[str]:
        """Paths whose size or kind is not known (headers not checked, an incomplete manifest)."""
        return [p for p, s, k in zip(self.paths, self.sizes, self.kinds) if s is None or k is None]

    def split(self, keep: Callable[[str], bool]) -> Catalogue:
        """Move the entries whose relative path satisfies ``keep(path)`` into a new catalogue and return it;
        this one keeps the others. Both share the unreadable registry (a file found unreadable is skipped on
        both sides); the new one has nothing in :attr:`dropped`."""
        chosen = [i for i, rel in enumerate(self.paths) if keep(rel)]
        if not chosen or len(chosen) == len(self.paths):
            raise ValueError(
                f"data: expected a validation split that leaves images on both sides, got {len(chosen)} of "
                f"{len(self.paths)} images; change data.val_fraction or pass --val-data"
            )
        held = Catalogue(self.root_dir, self.source, self.packed, self.max_substitutions)
        held.unreadable = self.unreadable
        taken = set(chosen)
        count = len(self.paths)
        for name in ("paths", "sizes", "kinds", "pack_ids"):
            values = getattr(self, name)
            if len(values) == count:
                setattr(held, name, [values[i] for i in chosen])
                setattr(self, name, [v for i, v in enumerate(values) if i not in taken])
        return held

    # ------------------------------------------------------------------------------------------
    # substitution
    def resolve(self, index: int) -> tuple[int, list[tuple[str, str]]]:
        """The position read for ``index``: the first of ``index, index + 1, ...`` (modulo N) not known
        unreadable, and the ``(path, reason)`` of those passed over. Raises RuntimeError naming them when
        ``max_substitutions`` consecutive files are unreadable."""
        n = len(self.paths)
        skipped: list[tuple[str, str]] = []
        for attempt in range(min(self.max_substitutions, n)):
            position = (index + attempt) % n
            path = str(self.path(position))
            reason = self.unreadable.get(path)
            if reason is None:
                return position, skipped
            skipped.append((path, reason))
        names = "; ".join(f"{p} ({r})" for p, r in skipped)
        raise RuntimeError(
            f"data: {len(skipped)} consecutive files from position {index} are unreadable: {names}; "
            "run `infmae curate` on the data and train on its manifest"
        )

    def read(
        self, index: int, decode: Callable[[int], T], errors: tuple[type[Exception], ...]
    ) -> tuple[T, int, list[tuple[str, str]]]:
        """``decode(position)`` of the position :meth:`resolve` gives for ``index``; a decode that raises one
        of ``errors`` marks that file unreadable and the next position is tried (the substitution loop of
        both loaders). Returns ``(decoded, position, skipped)``."""
        while True:
            position, skipped = self.resolve(index)
            try:
                return decode(position), position, skipped
            except errors as exc:
                reason = getattr(exc, "reason", None) or f"cannot read file ({exc})"
                self.unreadable.mark(str(self.path(position)), reason)


def _what_is(path: Path) -> str:
    if not path.exists():
        return "no such file or folder"
    return "a single image" if path.suffix.lower() in IMAGE_EXTENSIONS else "a file that is neither"


def _data_path_hint(path: Path) -> str:
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return f"point --data at the folder that holds it: --data {path.parent}"
    return "check the data path"
