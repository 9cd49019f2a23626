"""Decisions and the manifest of ``infmae curate`` (shared/README.md section 4).

From the scan rows (:mod:`infmae.curate.scan`), in this order:

1. ``unreadable``: the reader failed (the reason is in the ``error`` column).
2. ``too_small``: width AND height both under ``min_size`` (Inf30: 20 px).
3. Groups among the rest: files with equal pixel SHA-256, and files whose 64-bit pHashes are within
   ``hamming`` bits (multi-index hashing, :mod:`infmae.curate.index`) AND whose 256-bit pHashes are
   within ``VERIFY_FACTOR * hamming`` bits (a check of each found pair that removes chance collisions
   of the coarse hash), joined by union-find.
   With ``sequence_aware``, frames of one folder taken in natural name order (``f2`` before ``f10``)
   are cut into segments: a frame joins the current segment when it is a near-duplicate (same two
   tests) of the segment's FIRST frame (its key frame), else it starts a new one. So a slow pan is kept every few
   frames instead of chaining into one group; key frames are then matched across folders with the
   index as usual.
4. One anchor per group is kept, by ``anchor``: ``largest`` = most pixels, then more bits, then higher
   entropy; ``entropy`` = highest entropy, then most pixels, then more bits; ties go to the first path.
   The other members are dropped: ``duplicate`` when their pixels equal those of a member ranked
   above them (same pixel SHA-256: an exact copy, re-encoded or not), else ``near_duplicate``.
   ``group`` is ``g`` + the number of the group (groups numbered in the order of their anchors' paths)
   for every member, anchor included; ``anchor`` is the anchor's path.
   Files in no group have both empty.

``OUT/manifest.csv`` has one row per file (sorted by path, ``/``-separated, relative to SRC) with the
columns :data:`MANIFEST_COLUMNS`; it is written to a temporary name and renamed, so it is never half
written. ``OUT/curate.json`` records the absolute SRC (the loader resolves the paths against it), the
options and the counts.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .hashes import hex_to_words, popcount64
from .index import UnionFind, near_pairs

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "status",
    "reason",
    "width",
    "height",
    "bits",
    "channels",
    "entropy",
    "sha256",
    "phash",
    "group",
    "anchor",
    "format",
    "size_bytes",
    "phash256",
    "error",
)
REASONS: tuple[str, ...] = ("unreadable", "too_small", "duplicate", "near_duplicate")
ANCHOR_RULES: tuple[str, ...] = ("largest", "entropy")
#: A pair found by the 64-bit index is confirmed when the 256-bit pHashes differ by at most
#: VERIFY_FACTOR * hamming bits (48 at the default 6). Measured: planted near-duplicates (noise, 1-2 px
#: shift, brightness, 8-bit copy of 16-bit) <= 24 bits; distinct synthetic scenes that collide on the
#: 64-bit hash (20 pairs among 50k images at hamming 6) 64..116 bits.
VERIFY_FACTOR = 8


@dataclass
class Decisions:
    """Per-file decisions, aligned with ``paths`` (sorted)."""

    paths: list[str]
    reason: list[str]
    group: list[str]
    anchor: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, list[int]] = field(default_factory=dict)  # group id -> member indices, anchor first


def _natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def decide(
    connection: sqlite3.Connection,
    min_size: int = 20,
    hamming: int = 6,
    anchor: str = "largest",
    sequence_aware: bool = False,
) -> Decisions:
    """Decide keep/drop for every scanned file (rules in the module docstring)."""
    if anchor not in ANCHOR_RULES:
        raise ValueError(f"curate: expected --anchor in {ANCHOR_RULES}, got {anchor!r}; the default is 'largest'")
    if min_size < 0:
        raise ValueError(f"curate: expected --min-size >= 0, got {min_size}; the default is 20")
    cursor = connection.execute(
        "SELECT path, width, height, bits, entropy, sha256, phash, phash256, error FROM files ORDER BY path"
    )
    # streamed into compact columns: no row tuples kept (300k rows -> tens of MB)
    paths: list[str] = []
    reason: list[str] = []
    sha: list[bytes] = []
    candidates: list[int] = []
    area_list, bits_list, entropy_list, phash_list, words = [], [], [], [], []
    no_words = np.zeros(4, np.uint64)
    for i, (path, width, height, nbits, ent, sha_hex, ph, ph256, error) in enumerate(cursor):
        paths.append(path)
        if error is not None:
            reason.append("unreadable")
        elif width < min_size and height < min_size:
            reason.append("too_small")
        else:
            reason.append("")
            candidates.append(i)
        area_list.append((width or 0) * (height or 0))
        bits_list.append(nbits or 0)
        entropy_list.append(ent if ent is not None else 0.0)
        phash_list.append(int(ph, 16) if ph else 0)
        words.append(hex_to_words(ph256) if ph256 else no_words)
        sha.append(bytes.fromhex(sha_hex) if sha_hex else b"")
    n = len(paths)
    area = np.array(area_list, dtype=np.int64)
    bits = np.array(bits_list, dtype=np.int64)
    entropy = np.array(entropy_list, dtype=np.float64)
    phash = np.array(phash_list, dtype=np.uint64)
    phash256 = np.stack(words) if words else np.zeros((0, 4), np.uint64)
    del area_list, bits_list, entropy_list, phash_list, words
    verify_limit = VERIFY_FACTOR * hamming

    def verified(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs (a[k], b[k]) whose 256-bit pHashes are within VERIFY_FACTOR * hamming bits."""
        return popcount64(phash256[a] ^ phash256[b]).sum(axis=1) <= verify_limit

    sets = UnionFind(n)
    first_by_sha: dict[bytes, int] = {}
    distinct_pixels = []  # one file per pixel hash: exact copies share every fingerprint
    for i in candidates:
        j = first_by_sha.setdefault(sha[i], i)
        if j != i:
            sets.union(j, i)
        else:
            distinct_pixels.append(i)
    if sequence_aware:
        by_folder: dict[str, list[int]] = defaultdict(list)
        for i in distinct_pixels:
            by_folder[str(PurePosixPath(paths[i]).parent)].append(i)
        searched = []
        for members in by_folder.values():
            members.sort(key=lambda k: _natural_key(paths[k]))
            key_frame = None
            for i in members:
                if (
                    key_frame is not None
                    and (int(phash[i]) ^ int(phash[key_frame])).bit_count() <= hamming
                    and verified(np.array([i]), np.array([key_frame]))[0]
                ):
                    sets.union(key_frame, i)
                else:
                    key_frame = i
                    searched.append(i)
    else:
        searched = distinct_pixels
    searched_arr = np.asarray(searched, dtype=np.int64)
    pairs = near_pairs(phash[searched_arr], hamming)
    if len(pairs):
        a, b = searched_arr[pairs[:, 0]], searched_arr[pairs[:, 1]]
        keep = verified(a, b)
        for i, j in zip(a[keep].tolist(), b[keep].tolist()):
            sets.union(i, j)

    members_of: dict[int, list[int]] = defaultdict(list)
    for i in candidates:
        members_of[sets.find(i)].append(i)
    if anchor == "largest":
        rank = lambda i: (-area[i], -bits[i], -entropy[i], paths[i])  # noqa: E731
    else:
        rank = lambda i: (-entropy[i], -area[i], -bits[i], paths[i])  # noqa: E731
    multi = [sorted(m, key=rank) for m in members_of.values() if len(m) > 1]
    multi.sort(key=lambda m: paths[m[0]])
    group = [""] * n
    anchor_path = [""] * n
    groups: dict[str, list[int]] = {}
    width = max(4, len(str(len(multi))))
    for number, members in enumerate(multi, start=1):
        gid = f"g{number:0{width}d}"
        groups[gid] = members
        head = members[0]
        for i in members:
            group[i] = gid
            anchor_path[i] = paths[head]
        seen_sha = {sha[head]}
        for i in members[1:]:  # members are in rank order: the first of each pixel-hash class represents it
            reason[i] = "duplicate" if sha[i] in seen_sha else "near_duplicate"
            seen_sha.add(sha[i])
    counts = {r: reason.count(r) for r in REASONS}
    counts["keep"] = reason.count("")
    counts["total"] = n
    counts["groups"] = len(multi)
    return Decisions(paths=paths, reason=reason, group=group, anchor=anchor_path, counts=counts, groups=groups)


def write_manifest(connection: sqlite3.Connection, decisions: Decisions, out: Path) -> Path:
    """Stream ``OUT/manifest.csv`` from the store and the decisions (rows in path order)."""
    path = Path(out) / "manifest.csv"
    partial = path.with_suffix(".csv.partial")
    cursor = connection.execute(
        "SELECT path, width, height, bits, channels, entropy, sha256, phash, format, size, phash256, error "
        "FROM files ORDER BY path"
    )
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for i, (rel, width, height, bits, channels, entropy, sha, phash, fmt, size, phash256, error) in enumerate(
            cursor
        ):
            assert rel == decisions.paths[i], "store changed while writing the manifest"
            reason = decisions.reason[i]
            writer.writerow(
                [
                    rel,
                    "drop" if reason else "keep",
                    reason,
                    "" if width is None else width,
                    "" if height is None else height,
                    "" if bits is None else bits,
                    "" if channels is None else channels,
                    "" if entropy is None else f"{entropy:.4f}",
                    sha or "",
                    phash or "",
                    decisions.group[i],
                    decisions.anchor[i],
                    fmt or "",
                    size,
                    phash256 or "",
                    error or "",
                ]
            )
    os.replace(partial, path)
    return path


def write_info(out: Path, src: Path, options: dict, counts: dict) -> Path:
    """``OUT/curate.json``: the absolute SRC the manifest's paths are relative to, options, counts."""
    path = Path(out) / "curate.json"
    info = {"source": str(Path(src).resolve()), "manifest": "manifest.csv", "options": options, "counts": counts}
    path.write_text(json.dumps(info, indent=2))
    return path


def read_manifest_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of a manifest as dicts (for tests and tools; the loader has its own reader)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
