"""Near-duplicate search over 64-bit perceptual hashes without an all-pairs comparison.

Legend: N = number of hashes; M = number of distinct hashes; P = number of pairs.

**Multi-index hashing** (Norouzi, Punjani, Fleet, CVPR 2012). The 64 bits are cut into ``m`` chunks
(``m`` from a cost model, :func:`chunk_layout`; chunks of about ``log2(M)`` bits keep buckets small). By the (generalised) pigeonhole principle,
two hashes within Hamming distance ``t`` differ by at most ``r_c`` bits on at least one chunk ``c``
when ``sum_c (r_c + 1) > t`` (e.g. t=6, 4 chunks: radii 1, 1, 1, 0), so the candidates of a query are
the hashes whose chunk ``c`` equals the query's chunk ``c`` with at most ``r_c`` bits flipped, for
some ``c``: a sorted array and ``searchsorted`` per chunk and flip
pattern (a direct bucket table, one array look-up per probe). Every candidate is then checked with its exact Hamming distance (popcount of the XOR). Cost per
query: ``sum_c V(b, r_c)`` look-ups plus the candidates, which stays about constant (up to log
factors) as M grows, instead of M comparisons. Identical hashes are collapsed first (``np.unique``), so
a thousand copies of one frame cost one query.

:class:`UnionFind` turns the pairs into groups (connected components).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .hashes import popcount64

MAX_HAMMING = 24
_QUERY_BLOCK = 65536
_PROBE_COST = 4.0  # a bucket probe costs about as much as checking 4 candidates (measured, numpy)


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def labels(self) -> np.ndarray:
        """``[n]`` int64: the root of each element."""
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


def _ball_size(width: int, radius: int) -> int:
    return sum(math.comb(width, r) for r in range(radius + 1))


def chunk_radii(chunks: int, threshold: int) -> list[int]:
    """Per-chunk search radii ``r_i`` with ``sum(r_i + 1) >= threshold + 1`` (generalised pigeonhole:
    two hashes within ``threshold`` bits cannot differ by more than ``r_i`` bits on EVERY chunk ``i``)."""
    needed = max(0, threshold + 1 - chunks)
    return [needed // chunks + (1 if k < needed % chunks else 0) for k in range(chunks)]


def chunk_layout(num_hashes: int, threshold: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of each chunk, chosen by a cost model.

    For ``m`` chunks of width ``w = 64 / m`` with radii ``r_i`` (:func:`chunk_radii`), a query costs
    about ``sum_i V(w, r_i) * (4 + M / 2**w)``: ``V`` bucket look-ups (a probe costs about as much as
    4 candidate checks, measured), each returning ``M / 2**w`` candidates on average. The ``m`` in
    ``1..t+1`` with chunks of at most 24 bits (so the bucket table stays small) that minimises it is
    taken (3 chunks when ``t + 1`` chunks would be wider).
    """
    best = None
    for chunks in range(1, min(64, threshold + 1) + 1):
        width = math.ceil(64 / chunks)
        if width > 24:
            continue
        probes = sum(_ball_size(width, r) for r in chunk_radii(chunks, threshold))
        cost = probes * (_PROBE_COST + num_hashes / 2.0**width)
        if best is None or cost < best[0]:
            best = (cost, chunks)
    chunks = best[1] if best is not None else 3
    widths = [64 // chunks + (1 if k < 64 % chunks else 0) for k in range(chunks)]
    shifts = [sum(widths[:k]) for k in range(chunks)]
    return list(zip(shifts, widths))


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for bits in itertools.combinations(range(width), r):
            masks.append(sum(1 << b for b in bits))
    return np.asarray(masks, dtype=np.int64)


def near_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Pairs of DISTINCT uint64 hashes within Hamming distance ``threshold``.

    Args:
        hashes: ``[M]`` uint64, distinct values (use :func:`near_duplicate_labels` for raw hashes).
        threshold: maximum Hamming distance, 0..:data:`MAX_HAMMING`.

    Returns:
        ``[P, 2]`` int64 index pairs ``(i, j)`` with ``i < j``, each pair once.
    """
    if not 0 <= threshold <= MAX_HAMMING:
        raise ValueError(f"curate: expected --hamming in [0, {MAX_HAMMING}], got {threshold}; the default is 6")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    m = hashes.shape[0]
    if m < 2 or threshold == 0:
        return np.zeros((0, 2), np.int64)
    layout = chunk_layout(m, threshold)
    radii = chunk_radii(len(layout), threshold)
    found: list[np.ndarray] = []
    for (shift, width), radius in zip(layout, radii):
        keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        bucket_counts = np.bincount(keys, minlength=1 << width)  # a direct table: O(1) look-up per probe
        bucket_starts = np.cumsum(bucket_counts) - bucket_counts
        for mask in _flip_masks(width, radius):
            for start in range(0, m, _QUERY_BLOCK):
                query = np.arange(start, min(m, start + _QUERY_BLOCK))
                wanted = keys[query] ^ mask
                counts = bucket_counts[wanted]
                total = int(counts.sum())
                if total == 0:
                    continue
                qi = np.repeat(query, counts)
                offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
                cand = order[np.repeat(bucket_starts[wanted], counts) + offsets]
                keep = qi < cand
                qi, cand = qi[keep], cand[keep]
                close = popcount64(hashes[qi] ^ hashes[cand]) <= threshold
                if close.any():
                    found.append(np.stack([qi[close], cand[close]], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def near_duplicate_labels(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Group ``[N]`` uint64 hashes: connected components of "Hamming distance <= threshold".

    Returns:
        ``[N]`` int64 labels; equal labels = same group (a label is the index of one member).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if hashes.size == 0:
        return np.zeros(0, np.int64)
    distinct, inverse = np.unique(hashes, return_inverse=True)
    inverse = inverse.reshape(-1)
    sets = UnionFind(distinct.shape[0])
    for i, j in near_pairs(distinct, threshold).tolist():
        sets.union(i, j)
    distinct_labels = sets.labels()
    # name each group by its first member in the input order
    first = np.full(distinct.shape[0], -1, np.int64)
    first_of_distinct = np.unique(inverse, return_index=True)[1]
    first[np.arange(distinct.shape[0])] = first_of_distinct
    root_first = np.full(distinct.shape[0], np.iinfo(np.int64).max, np.int64)
    np.minimum.at(root_first, distinct_labels, first)
    return root_first[distinct_labels][inverse]
