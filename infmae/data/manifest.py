"""The manifest format, written by ``infmae curate`` and read by every loader and ``infmae pack``: its one owner.

``OUT/manifest.csv`` has one row per file, sorted by path, with the columns :data:`MANIFEST_COLUMNS`
(docs/specification.md, 'Manifest contract'). A reader needs only :data:`MANIFEST_REQUIRED_COLUMNS`; rows
with ``status == "keep"`` are used. ``OUT/curate.json`` beside it records the absolute ``source`` folder
the paths are relative to (:func:`manifest_base`), the options and the counts.

Writing goes through :func:`write_manifest_rows` (a temporary name, then a rename: never half written)
and :func:`write_manifest_info`; reading through :func:`read_manifest` (the loaders' view: kept paths,
sizes and kinds, each path checked to stay inside its root) and :func:`read_manifest_rows` (every row).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: column -> what it holds, in file order (the contract; more columns may be added, none removed)
MANIFEST_FORMAT: dict[str, str] = {
    "path": "relative to the curated folder, '/'-separated",
    "status": "keep or drop",
    "reason": "empty when kept; else unreadable, too_small, duplicate or near_duplicate",
    "width": "pixels",
    "height": "pixels",
    "bits": "bit depth, 8 or 16",
    "channels": "1 or 3",
    "entropy": "Shannon entropy (bits) of the 8-bit view's 256-bin histogram",
    "sha256": "of the decoded pixels",
    "phash": "64-bit perceptual hash, 16 hex digits",
    "group": "duplicate group id, the same for every member; empty for a file in no group",
    "anchor": "the path of the group's kept member; empty for a file in no group",
    "format": "Pillow's format name",
    "size_bytes": "file size",
    "phash256": "256-bit perceptual hash",
    "error": "the reader's reason when unreadable",
}
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_FORMAT)
#: what a reader needs; the other columns are used when present (sizes and kinds spare a header read)
MANIFEST_REQUIRED_COLUMNS: tuple[str, ...] = ("path", "status")
MANIFEST_NAME = "manifest.csv"
INFO_NAME = "curate.json"
KEEP = "keep"


@dataclass
class ManifestRows:
    """The kept rows of a manifest, aligned: relative paths, ``(width, height)`` and ``(channels, bits)``
    (None where the columns are missing or empty)."""

    paths: list[str]
    sizes: list[tuple[int, int] | None]
    kinds: list[tuple[int, int] | None]


def write_manifest_rows(out: str | os.PathLike, rows: Iterable[Sequence]) -> Path:
    """Write ``OUT/manifest.csv``: the header, then ``rows`` (values in :data:`MANIFEST_COLUMNS` order,
    sorted by path). Written to a temporary name and renamed, so a reader never sees half a manifest."""
    path = Path(out) / MANIFEST_NAME
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    os.replace(partial, path)
    return path


def write_manifest_info(out: str | os.PathLike, src: str | os.PathLike, options: dict, counts: dict) -> Path:
    """``OUT/curate.json``: the absolute SRC the manifest's paths are relative to, options, counts."""
    path = Path(out) / INFO_NAME
    info = {"source": str(Path(src).resolve()), "manifest": MANIFEST_NAME, "options": options, "counts": counts}
    path.write_text(json.dumps(info, indent=2))
    return path


def read_manifest_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of a manifest as dicts, kept or not (for reports, tools and tests)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def manifest_base(manifest: Path) -> Path:
    """The folder a manifest's paths are relative to when no ``base`` is given: the ``source`` that
    ``infmae curate`` recorded in ``curate.json`` beside the CSV, else the CSV's own folder."""
    info = Path(manifest).parent / INFO_NAME
    if info.is_file():
        try:
            source = json.loads(info.read_text()).get("source")
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"manifest: expected {info} to be JSON written by `infmae curate`, got an unreadable file "
                f"({exc}); re-run curate or pass base"
            ) from None
        if source:
            return Path(source)
    return Path(manifest).parent


def escapes_root(root_abs: str, rel: str) -> str | None:
    """Where ``rel`` leads when that is outside ``root_abs`` (an absolute, normalised folder), else None.

    Lexical first (``os.path.normpath``: ``..`` components, absolute paths); a path with a ``..`` component
    is also resolved (``os.path.realpath``), since ``link/..`` leaves through a link to a folder. Links
    inside the root reached without ``..`` are followed: whoever can write the root chose them.
    """
    target = os.path.normpath(os.path.join(root_abs, rel))
    if os.path.commonpath([root_abs, target]) != root_abs:
        return target
    if ".." in Path(rel).parts:
        real_root, real_target = os.path.realpath(root_abs), os.path.realpath(os.path.join(root_abs, rel))
        if os.path.commonpath([real_root, real_target]) != real_root:
            return real_target
    return None


def _int_pair(row: dict, first: str, second: str) -> tuple[int, int] | None:
    try:
        return int(row[first]), int(row[second])
    except (KeyError, TypeError, ValueError):
        return None


def read_kept_rows(
    manifest: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
) -> ManifestRows:
    """The rows of a manifest with ``status == "keep"`` (see :func:`read_manifest`), with their kinds."""
    manifest = Path(manifest)
    root_abs = os.path.abspath(manifest_base(manifest) if root is None else root)
    kept = ManifestRows([], [], [])
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in MANIFEST_REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"manifest: expected manifest columns {MANIFEST_REQUIRED_COLUMNS}, got {columns} in "
                f"{manifest}; write it with `infmae curate SRC -o OUT`"
            )
        dropped_rows = outside = 0
        for row in reader:
            if (row.get("status") or "").strip() != KEEP:
                dropped_rows += 1
                continue
            rel = row["path"].strip()
            target = escapes_root(root_abs, rel)
            if target is not None:
                if not allow_outside_root:
                    raise ValueError(
                        f"manifest: expected the kept rows of {manifest} to stay inside their root {root_abs}, "
                        f"got line {reader.line_num} with path {rel!r}, which leads to {target}; fix or drop the "
                        "row, or, for a manifest you trust, set data.allow_outside_root=true "
                        "(infmae pack: --allow-outside-root)"
                    )
                outside += 1
            kept.paths.append(rel)
            kept.sizes.append(_int_pair(row, "width", "height"))
            kept.kinds.append(_int_pair(row, "channels", "bits"))
    if outside:
        logger.warning(
            "manifest %s: %d kept rows lead outside its root %s (allowed by allow_outside_root)",
            manifest,
            outside,
            root_abs,
        )
    logger.info("manifest %s: %d rows kept, %d rows not 'keep'", manifest, len(kept.paths), dropped_rows)
    return kept


def read_manifest(
    manifest: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
) -> tuple[list[str], list[tuple[int, int] | None]]:
    """Rows of a curate manifest with ``status == "keep"``: (relative paths, (width, height) or None).

    ``root`` is the folder the paths are relative to (default :func:`manifest_base`). A kept row whose
    path leads outside it (``../../x.png``, ``/etc/x.png``) raises ValueError naming the row, unless
    ``allow_outside_root`` (``data.allow_outside_root``, ``infmae pack --allow-outside-root``).
    """
    kept = read_kept_rows(manifest, root=root, allow_outside_root=allow_outside_root)
    return kept.paths, kept.sizes
