"""Decisions and the manifest of ``infmae curate`` (docs/specification.md, 'Manifest contract').

From the scan rows (:mod:`infmae.curate.scan`), in this order:

1. ``unreadable``: the reader failed (the reason is in the ``error`` column).
2. ``too_small``: width AND height both under ``min_size`` (Inf30: 20 px).
3. Groups among the rest: files with equal pixel SHA-256, and files whose 64-bit pHashes are within
   ``hamming`` bits (multi-index hashing, :mod:`infmae.curate.index`: the candidates) AND whose stored
   thumbnails show the same content (:mod:`infmae.curate.similarity`: shift-searched correlation of
   percentile-normalised detail maps >= ``SIMILARITY_THRESHOLD``; it removes the candidates that only
   share a coarse layout), joined by union-find.
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

``OUT/manifest.csv`` has one row per file (sorted by path, ``/``-separated, relative to SRC) in the format
of :mod:`infmae.data.manifest` (its one owner, which also reads it), as does ``OUT/curate.json`` (the
absolute SRC the loader resolves the paths against, the options and the counts).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from infmae.data.manifest import KEEP, write_manifest_rows

from .hashes import popcount64
from .index import UnionFind, near_pairs
from .similarity import SIMILARITY_THRESHOLD, THUMB_BYTES, detail_maps, similarity, thumbs_from_blobs

logger = logging.getLogger(__name__)

REASONS: tuple[str, ...] = ("unreadable", "too_small", "duplicate", "near_duplicate")
ANCHOR_RULES: tuple[str, ...] = ("largest", "entropy")
#: Rejected candidate pairs kept for the report (the closest pairs NOT merged: the margin).
CLOSEST_REJECTED = 10
_ROWID_BATCH = 900  # SQLite's bound on parameters of one statement was 999 before 3.32
_PAIR_BATCH = 8192  # pairs confirmed per batch: their thumbnails are loaded, used and dropped together
_SEQUENCE_WINDOW = 64  # frames of a folder compared with the current key frame in one call


@dataclass
class Decisions:
    """Per-file decisions, aligned with ``paths`` (sorted)."""

    paths: list[str]
    reason: list[str]
    group: list[str]
    anchor: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, list[int]] = field(default_factory=dict)  # group id -> member indices, anchor first
    phash: np.ndarray | None = None  # [N] uint64 64-bit pHashes (0 for unreadable files)
    pairs_checked: int = 0  # candidate pairs from the index whose content was compared
    pairs_confirmed: int = 0
    #: the closest candidate pairs that were NOT merged, most similar first: (i, j, pHash distance, similarity)
    closest_rejected: list[tuple[int, int, int, float]] = field(default_factory=list)


def _natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


class _Details:
    """Detail maps (:func:`infmae.curate.similarity.detail_maps`) of files, from the thumbnails in the
    store, loaded for the files a batch of comparisons needs and dropped with it (4 KiB each: all of a
    300k-file collection at once would be 1.2 GB)."""

    def __init__(self, connection: sqlite3.Connection, rowids: np.ndarray):
        self.connection = connection
        self.rowids = rowids
        self.missing_files: set[int] = set()

    @property
    def missing(self) -> int:
        return len(self.missing_files)

    def load(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[K]`` file indices -> (``[K, S, S]`` float32 detail maps, ``[K]`` bool: has a thumbnail)."""
        wanted = self.rowids[indices].tolist()
        blobs: dict[int, bytes] = {}
        distinct = sorted(set(wanted))
        for start in range(0, len(distinct), _ROWID_BATCH):
            chunk = distinct[start : start + _ROWID_BATCH]
            query = f"SELECT rowid, thumb FROM files WHERE rowid IN ({', '.join('?' * len(chunk))})"
            blobs.update((rowid, blob) for rowid, blob in self.connection.execute(query, chunk) if blob)
        present = np.array([rowid in blobs for rowid in wanted], dtype=bool)
        self.missing_files.update(np.asarray(indices)[~present].tolist())
        blank = bytes(THUMB_BYTES)  # a flat thumbnail: its detail map is zero and correlates with nothing
        thumbs = thumbs_from_blobs([blobs.get(rowid, blank) for rowid in wanted])
        return detail_maps(thumbs), present

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``[P]`` similarity of the files ``a[k]`` and ``b[k]``; NaN where either has no thumbnail."""
        both = np.concatenate([a, b])
        unique, inverse = np.unique(both, return_inverse=True)
        maps, present = self.load(unique)
        inverse = inverse.reshape(-1)
        ia, ib = inverse[: len(a)], inverse[len(a) :]
        score = similarity(maps[ia], maps[ib])
        return np.where(present[ia] & present[ib], score, np.nan)


def _segments(members: np.ndarray, phash: np.ndarray, hamming: int, details: _Details):
    """Cut one folder's frames (natural name order) into segments: yields ``(key frame, [joined frames])``.
    A frame joins while it is a near-duplicate of the key frame (pHash within ``hamming`` bits AND
    similarity >= threshold); the first one that is not becomes the next key frame. Frames are compared
    with the key frame :data:`_SEQUENCE_WINDOW` at a time (one vectorised call, not one per frame)."""
    position, count = 0, len(members)
    while position < count:
        key = int(members[position])
        key_map, key_present = (v[0] for v in details.load(members[position : position + 1]))
        joined: list[int] = []
        position += 1
        while position < count:
            window = members[position : position + _SEQUENCE_WINDOW]
            maps, present = details.load(window)
            close = popcount64(phash[window] ^ phash[key]) <= hamming
            score = similarity(np.broadcast_to(key_map, maps.shape), maps)
            close &= present & key_present & (score >= SIMILARITY_THRESHOLD)
            run = len(window) if close.all() else int(np.argmin(close))  # frames before the first break
            joined += window[:run].tolist()
            position += run
            if run < len(window):
                break
        yield key, joined


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
        "SELECT path, width, height, bits, entropy, sha256, phash, error, rowid FROM files ORDER BY path"
    )
    # streamed into compact columns: no row tuples kept (300k rows -> tens of MB); the thumbnails stay in
    # the store until a candidate pair needs them
    paths: list[str] = []
    reason: list[str] = []
    sha: list[bytes] = []
    candidates: list[int] = []
    area_list, bits_list, entropy_list, phash_list, rowid_list = [], [], [], [], []
    for i, (path, width, height, nbits, ent, sha_hex, ph, error, rowid) in enumerate(cursor):
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
        rowid_list.append(rowid)
        sha.append(bytes.fromhex(sha_hex) if sha_hex else b"")
    n = len(paths)
    area = np.array(area_list, dtype=np.int64)
    bits = np.array(bits_list, dtype=np.int64)
    entropy = np.array(entropy_list, dtype=np.float64)
    phash = np.array(phash_list, dtype=np.uint64)
    rowids = np.array(rowid_list, dtype=np.int64)
    del area_list, bits_list, entropy_list, phash_list, rowid_list
    details = _Details(connection, rowids)

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
            for key_frame, joined in _segments(np.asarray(members, np.int64), phash, hamming, details):
                searched.append(key_frame)
                for i in joined:
                    sets.union(key_frame, i)
    else:
        searched = distinct_pixels
    searched_arr = np.asarray(searched, dtype=np.int64)
    pairs = near_pairs(phash[searched_arr], hamming)
    rejected: list[tuple[float, int, int]] = []
    confirmed = 0
    for start in range(0, len(pairs), _PAIR_BATCH):
        a, b = searched_arr[pairs[start : start + _PAIR_BATCH, 0]], searched_arr[pairs[start : start + _PAIR_BATCH, 1]]
        score = details.similarity(a, b)
        keep = score >= SIMILARITY_THRESHOLD  # False for NaN: a pair without thumbnails is never merged
        confirmed += int(keep.sum())
        for i, j in zip(a[keep].tolist(), b[keep].tolist()):
            sets.union(i, j)
        # the closest rejected pairs of this batch; the best CLOSEST_REJECTED overall are kept below
        miss = np.flatnonzero(~keep & ~np.isnan(score))
        miss = miss[np.argsort(-score[miss], kind="stable")[:CLOSEST_REJECTED]]
        rejected += [(float(score[k]), int(a[k]), int(b[k])) for k in miss]
    rejected.sort(key=lambda r: (-r[0], r[1], r[2]))
    closest_rejected = [
        (i, j, (int(phash[i]) ^ int(phash[j])).bit_count(), score) for score, i, j in rejected[:CLOSEST_REJECTED]
    ]
    if details.missing:
        logger.warning(
            "curate: %d candidate file(s) have no thumbnail in the scan store and were not compared (never "
            "merged as near-duplicates); run `infmae curate --rescan` to fill them",
            details.missing,
        )

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
    return Decisions(
        paths=paths,
        reason=reason,
        group=group,
        anchor=anchor_path,
        counts=counts,
        groups=groups,
        phash=phash,
        pairs_checked=len(pairs),
        pairs_confirmed=confirmed,
        closest_rejected=closest_rejected,
    )


def write_manifest(connection: sqlite3.Connection, decisions: Decisions, out: Path) -> Path:
    """Stream ``OUT/manifest.csv`` from the store and the decisions (rows in path order)."""
    cursor = connection.execute(
        "SELECT path, width, height, bits, channels, entropy, sha256, phash, format, size, phash256, error "
        "FROM files ORDER BY path"
    )

    def rows():
        for i, (rel, width, height, bits, channels, entropy, sha, phash, fmt, size, phash256, error) in enumerate(
            cursor
        ):
            assert rel == decisions.paths[i], "store changed while writing the manifest"
            reason = decisions.reason[i]
            yield (
                rel,
                "drop" if reason else KEEP,
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
            )

    return write_manifest_rows(out, rows())
