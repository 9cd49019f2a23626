"""Near-duplicate search over 64-bit perceptual hashes without an all-pairs comparison.

Legend: N = number of hashes; M = number of distinct hashes; P = number of pairs.

**Multi-index hashing** (Norouzi, Punjani, Fleet, CVPR 2012). The 64 bits are cut into ``m`` disjoint
chunks. By the (generalised) pigeonhole principle, two hashes within Hamming distance ``t`` differ by
at most ``r_c`` bits on at least one chunk ``c`` when ``sum_c (r_c + 1) > t`` (e.g. t=6, 4 chunks:
radii 1, 1, 1, 0), so the candidates of a query are the hashes whose chunk ``c`` equals the query's
chunk ``c`` with at most ``r_c`` bits flipped, for some ``c``. A chunk may be looked up on a subset of
its bits (its *key*): two hashes within ``r_c`` bits on the chunk are within ``r_c`` bits on the key,
so nothing is missed; a shorter key trades look-ups for candidates. Every candidate is checked with its
exact Hamming distance (popcount of the XOR). The chunk count and key widths come from a cost model
(:func:`chunk_layout`); the cost per query stays within a polylog factor as M grows, instead of M
comparisons. Identical hashes are collapsed first (``np.unique``), so a thousand copies of one frame
cost one query.

Layout in memory, for speed: per chunk the hashes are sorted by key and the queries run in that order,
so the bucket table and the candidates are read almost sequentially (a random order is several times
slower from 300k hashes up, cache misses); a flip pattern ``f`` is probed only from the keys whose
highest bit of ``f`` is clear, because the other end of each such pair probes it the other way round.

:class:`UnionFind` turns the pairs into groups (connected components).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from .hashes import popcount64

MAX_HAMMING = 24
MAX_KEY_BITS = 22
_QUERY_BLOCK = 65536
# a bucket look-up costs about as much as checking 2 candidates (numpy; fitted on 10k..2M random hashes
# so that the chosen layout is the fastest measured one, see bench/bench_curate.py)
_PROBE_COST = 2.0


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


class Chunk(NamedTuple):
    """One index chunk: bits ``shift .. shift+width-1`` of the hash, searched within ``radius`` bits,
    looked up on its lowest ``key_bits`` bits (``key_bits <= width``)."""

    shift: int
    width: int
    radius: int
    key_bits: int


def _key_bits(width: int, radius: int, num_hashes: int) -> tuple[float, int]:
    """``(cost, bits)``: the key width in ``1..min(width, MAX_KEY_BITS)`` minimising
    ``V(bits, radius) * (probe cost + M / 2**bits)`` (look-ups x (fixed cost + candidates each))."""
    return min(
        (_ball_size(bits, radius) * (_PROBE_COST + num_hashes / 2.0**bits), bits)
        for bits in range(1, min(width, MAX_KEY_BITS) + 1)
    )


def chunk_layout(num_hashes: int, threshold: int) -> list[Chunk]:
    """The chunks, radii and key widths of the index for ``num_hashes`` distinct hashes, by a cost model.

    For ``m`` chunks of width about ``64 / m`` with radii ``r_i`` (:func:`chunk_radii`), a query costs
    about ``sum_i V(k_i, r_i) * (P + M / 2**k_i)``: ``V`` bucket look-ups of fixed cost ``P`` (in units of
    one candidate check; measured), each returning ``M / 2**k_i`` candidates on average. Each key width
    ``k_i`` and then the ``m`` in ``1..t+1`` minimising the sum are taken. Keys of at most
    :data:`MAX_KEY_BITS` bits keep the bucket table small (16 MiB at 22 bits).
    """
    best: tuple[float, list[Chunk]] | None = None
    for chunks in range(1, min(64, threshold + 1) + 1):
        widths = [64 // chunks + (1 if k < 64 % chunks else 0) for k in range(chunks)]
        radii = chunk_radii(chunks, threshold)
        cost, layout = 0.0, []
        for k, (width, radius) in enumerate(zip(widths, radii)):
            chunk_cost, bits = _key_bits(width, radius, num_hashes)
            cost += chunk_cost
            layout.append(Chunk(sum(widths[:k]), width, radius, bits))
        if best is None or cost < best[0]:
            best = (cost, layout)
    return best[1]


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for bits in itertools.combinations(range(width), r):
            masks.append(sum(1 << b for b in bits))
    return np.asarray(masks, dtype=np.int64)


def _chunk_pairs(hashes: np.ndarray, chunk: Chunk, threshold: int) -> list[np.ndarray]:
    """Pairs found through one chunk: ``[P_c, 2]`` arrays of indices into ``hashes``, ``i < j``."""
    m = hashes.shape[0]
    keys = ((hashes >> np.uint64(chunk.shift)) & np.uint64((1 << chunk.key_bits) - 1)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_hashes = keys[order], hashes[order]
    # a direct bucket table over the key space: one array look-up per probe; int32 halves its footprint
    bucket_counts = np.bincount(sorted_keys, minlength=1 << chunk.key_bits).astype(np.int32)
    bucket_starts = np.cumsum(bucket_counts, dtype=np.int64) - bucket_counts  # int64
    found = []
    for mask in _flip_masks(chunk.key_bits, chunk.radius).tolist():
        high_bit = 1 << (mask.bit_length() - 1) if mask else 0
        for start in range(0, m, _QUERY_BLOCK):
            block_keys = sorted_keys[start : start + _QUERY_BLOCK]
            if mask:  # each pair from its end whose key has the mask's highest bit clear
                query = np.flatnonzero((block_keys & high_bit) == 0)
                wanted = block_keys[query] ^ mask
            else:
                query = np.arange(block_keys.shape[0])
                wanted = block_keys
            counts = bucket_counts[wanted]
            hit = np.flatnonzero(counts)
            if hit.size == 0:
                continue
            query, counts, wanted = query[hit] + start, counts[hit], wanted[hit]
            total = int(counts.sum())
            first = np.cumsum(counts) - counts
            qpos = np.repeat(query, counts)  # positions in the key order
            cpos = np.arange(total) + np.repeat(bucket_starts[wanted] - first, counts)
            if not mask:  # the query's own bucket: each unordered pair once, not with itself
                own = qpos < cpos
                qpos, cpos = qpos[own], cpos[own]
            close = popcount64(sorted_hashes[qpos] ^ sorted_hashes[cpos]) <= threshold
            if close.any():
                a, b = order[qpos[close]], order[cpos[close]]
                found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return found


def near_pairs(hashes: np.ndarray, threshold: int, layout: list[Chunk] | None = None) -> np.ndarray:
    """Pairs of DISTINCT uint64 hashes within Hamming distance ``threshold``.

    Args:
        hashes: ``[M]`` uint64, distinct values (use :func:`near_duplicate_labels` for raw hashes).
        threshold: maximum Hamming distance, 0..:data:`MAX_HAMMING`.
        layout: the index chunks; default :func:`chunk_layout` (tests pass others to cover every path).

    Returns:
        ``[P, 2]`` int64 index pairs ``(i, j)`` with ``i < j``, each pair once, sorted.
    """
    if not 0 <= threshold <= MAX_HAMMING:
        raise ValueError(f"curate: expected --hamming in [0, {MAX_HAMMING}], got {threshold}; the default is 6")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    m = hashes.shape[0]
    if m < 2 or threshold == 0:
        return np.zeros((0, 2), np.int64)
    layout = chunk_layout(m, threshold) if layout is None else layout
    if sum(c.width for c in layout) != 64 or sum(c.radius + 1 for c in layout) <= threshold:
        raise ValueError(
            f"near_pairs: expected chunks covering 64 bits with sum(radius + 1) > {threshold}, got {layout}"
        )
    found = [pairs for chunk in layout for pairs in _chunk_pairs(hashes, chunk, threshold)]
    if not found:
        return np.zeros((0, 2), np.int64)
    # a pair close on several chunks is found once per chunk
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
