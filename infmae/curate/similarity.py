"""Content confirmation of near-duplicate candidates: shift-searched correlation of detail thumbnails.

Legend: K = number of thumbnails; P = number of pairs; S = :data:`THUMB_SIDE` (32).

The 64-bit pHash index (:mod:`infmae.curate.index`) proposes pairs; this module decides whether a proposed
pair shows the same content. Each image keeps its ``[S, S]`` percentile thumbnail
(:func:`infmae.curate.hashes.percentile_thumbnail`: the unrounded Lanczos thumbnail of the 8-bit view, the
one its pHash is computed from, each pixel replaced by its rank; 1 KiB in the scan store), and a pair is
compared as:

1. **percentile thumbnail** (:func:`detail_maps`): each pixel's average rank within its thumbnail, in
   [0, 1] (recomputed from the stored bytes). Any increasing global mapping of the intensities (gain,
   offset, gamma, an 8-bit export of a 16-bit frame, a camera's histogram-equalising AGC) leaves it
   unchanged, up to what the thumbnail's averaging mixes.
2. **detail map**: that thumbnail minus its Gaussian blur (sigma :data:`BLUR_SIGMA` thumbnail pixels).
   The blur holds the coarse layout (sky, horizon, road, vignetting) that distinct scenes of one camera
   share; what is left is where the objects and textures are.
3. **similarity** (:func:`similarity`): the normalised correlation of the two detail maps over their
   overlap, the largest over integer shifts of up to :data:`MAX_SHIFT` thumbnail pixels.

So the two stages test different scales: the 64-bit pHash the coarse structure, this the fine one.
Measured with ``bench/bench_dedup.py`` (16.9k generated 640x512 / 640x480 thermal scenes, 8- and
16-bit, results in ``bench/results/bench_dedup_*``): the raw thumbnails of distinct scenes that share a
layout correlate up to 0.97, as high as true copies do; their detail maps at most 0.787 over all 995,000
same-layout pairs, 0.845 over every pair within 12 pHash bits (a scene with a few objects against an
empty one of its layout), 0.63 over the index's candidates at the default 6 bits. True copies at the
issue's strengths (noise, a 3 px shift, +10 % gain, 16 -> 8-bit exports, JPEG, a 90 % resize) score
0.96 and above on 640 px frames, 0.91 on 320 px ones (the same shift is twice the share of the frame).
:data:`SIMILARITY_THRESHOLD` = 0.88 sits between 0.845 and 0.91. Two scenes with no objects and one
layout (an empty road hours apart) differ only in smooth shading and score up to 0.96: such pairs
merge when their pHashes are close too, as near-duplicates of one view. A thumbnail with no detail at
all (a flat frame) correlates with nothing: such frames are grouped only as exact copies.
"""

from __future__ import annotations

import numpy as np

from .hashes import THUMB_SIZE

THUMB_SIDE = THUMB_SIZE
THUMB_BYTES = THUMB_SIDE * THUMB_SIDE
#: Gaussian sigma of the layout removed from each percentile thumbnail, in thumbnail pixels (1/16 of the
#: frame). Measured 1..4 on 900 planted pairs and 8,000 same-layout pairs: 2 keeps the layout out
#: (distinct scenes <= 0.66) while a 3 px shift and histogram equalisation still correlate >= 0.96;
#: 4 lets the layout through (distinct up to 0.77); 1 leaves mostly noise (copies down to 0.92).
BLUR_SIGMA = 2.0
#: Largest shift searched, thumbnail pixels (1 = 1/32 of the frame, 20 px of a 640 px frame).
MAX_SHIFT = 1
#: A proposed pair is the same content when :func:`similarity` >= this: between the most similar distinct
#: scenes (0.845) and the least similar copies at the issue's strengths (0.91 at 320 px, 0.96 at 640 px).
SIMILARITY_THRESHOLD = 0.88
_PAIR_BLOCK = 2048  # pairs per vectorised block: their maps and integral images stay in a few MiB
#: Energy (sum of squares) under which a detail map counts as flat: a constant thumbnail leaves float32
#: rounding of about 1e-8 per pixel (1e-13 in all); one differing pixel of 1024 already gives about 1e-3.
_FLAT_ENERGY = 1e-6
_RANK_BLOCK = 64  # thumbnails per histogram call: a 64 x 256 bin table stays in the cache (7x faster)


def _blur_matrix(side: int, sigma: float) -> np.ndarray:
    """``[side, side]`` float32 ``G`` with ``G @ x`` a Gaussian blur of the columns of ``x``, edges reflected
    (so a border pixel is not pulled towards zero)."""
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    matrix = np.zeros((side, side), np.float64)
    for i in range(side):
        j = i + offsets
        j = np.where(j < 0, -j - 1, j)  # reflect about the edge: -1 -> 0, -2 -> 1
        j = np.where(j >= side, 2 * side - 1 - j, j)
        np.add.at(matrix[i], j, weights)
    return matrix.astype(np.float32)


_BLUR = _blur_matrix(THUMB_SIDE, BLUR_SIGMA)


def thumbs_from_blobs(blobs: list[bytes]) -> np.ndarray:
    """Thumbnails as stored (``S*S`` bytes each, row-major) -> ``[K, S, S]`` uint8."""
    if any(len(blob) != THUMB_BYTES for blob in blobs):
        sizes = sorted({len(blob) for blob in blobs})
        raise ValueError(
            f"thumbs_from_blobs: expected {THUMB_BYTES}-byte thumbnails, got sizes {sizes[:5]}; "
            "rescan with `infmae curate --rescan`"
        )
    if not blobs:
        return np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.uint8)
    return np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), THUMB_SIDE, THUMB_SIDE)


def detail_maps(thumbs_KSS: np.ndarray) -> np.ndarray:
    """``[K, S, S]`` uint8 thumbnails -> ``[K, S, S]`` float32 detail maps (steps 1-2 of the module docstring)."""
    thumbs_KSS = np.asarray(thumbs_KSS)
    if thumbs_KSS.ndim != 3 or thumbs_KSS.dtype != np.uint8:
        raise ValueError(
            f"detail_maps: expected [K,S,S] uint8 thumbnails, got shape {thumbs_KSS.shape} dtype {thumbs_KSS.dtype}"
        )
    side = thumbs_KSS.shape[1]
    blur = _BLUR if side == THUMB_SIDE else _blur_matrix(side, BLUR_SIGMA)
    out = np.empty(thumbs_KSS.shape, np.float32)
    for start in range(0, thumbs_KSS.shape[0], _RANK_BLOCK):
        ranks = _percentiles(thumbs_KSS[start : start + _RANK_BLOCK])
        out[start : start + _RANK_BLOCK] = ranks - blur @ ranks @ blur.T
    return out


def _percentiles(thumbs_KSS: np.ndarray) -> np.ndarray:
    """Each pixel's average rank within its thumbnail, in [0, 1], from the 256-bin histograms (ties share
    one rank: a flat region must not become a ramp in raster order, which distinct frames would share)."""
    k = thumbs_KSS.shape[0]
    pixels = thumbs_KSS[0].size if k else 1
    flat = thumbs_KSS.reshape(k, pixels).astype(np.intp)
    counts = np.bincount((flat + 256 * np.arange(k)[:, None]).ravel(), minlength=256 * k).reshape(k, 256)
    below = np.cumsum(counts, axis=1) - counts
    level_rank = ((below + 0.5 * (counts - 1)) / max(1, pixels - 1)).astype(np.float32)
    return level_rank[np.arange(k)[:, None], flat].reshape(thumbs_KSS.shape)


def _window_sums(integral: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """``[P]`` sums over ``[rows, cols]`` of the maps whose ``[P, S+1, S+1]`` integral images are given."""
    y0, y1, x0, x1 = rows.start, rows.stop, cols.start, cols.stop
    return integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]


def _integral(squares: np.ndarray) -> np.ndarray:
    """``[P, S, S]`` -> ``[P, S+1, S+1]`` integral images, as two matrix products with a triangle of ones
    (``cumsum`` along a middle axis is several times slower in numpy)."""
    side = squares.shape[1]
    prefix = np.tril(np.ones((side + 1, side), np.float32), -1)  # row i sums rows < i
    return prefix @ squares @ prefix.T


def similarity(detail_a: np.ndarray, detail_b: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """``[P]`` float32: for each pair of ``[P, S, S]`` detail maps, the largest normalised correlation
    ``sum(a * b) / sqrt(sum(a^2) * sum(b^2))`` over the maps' overlap, over shifts ``(dy, dx)`` in
    ``[-max_shift, max_shift]^2``; 0 where either overlap is flat. Detail maps are zero-mean at every
    scale above the blur's, so the overlap's mean is not subtracted (the energies come from integral
    images: one product pass per shift)."""
    if detail_a.shape != detail_b.shape or detail_a.ndim != 3:
        raise ValueError(
            f"similarity: expected two [P,S,S] arrays of one shape, got {detail_a.shape} and {detail_b.shape}"
        )
    p, side = detail_a.shape[0], detail_a.shape[1]
    best = np.full(p, -1.0, np.float32)
    for start in range(0, p, _PAIR_BLOCK):
        a, b = detail_a[start : start + _PAIR_BLOCK], detail_b[start : start + _PAIR_BLOCK]
        energy_a, energy_b = _integral(a * a), _integral(b * b)
        score = best[start : start + _PAIR_BLOCK]
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                rows_a, rows_b = slice(max(0, dy), side + min(0, dy)), slice(max(0, -dy), side + min(0, -dy))
                cols_a, cols_b = slice(max(0, dx), side + min(0, dx)), slice(max(0, -dx), side + min(0, -dx))
                cross = np.einsum("pij,pij->p", a[:, rows_a, cols_a], b[:, rows_b, cols_b])
                window_a, window_b = _window_sums(energy_a, rows_a, cols_a), _window_sums(energy_b, rows_b, cols_b)
                flat = (window_a < _FLAT_ENERGY) | (window_b < _FLAT_ENERGY)
                ncc = np.where(flat, 0.0, cross / np.sqrt(np.maximum(window_a * window_b, _FLAT_ENERGY**2)))
                np.maximum(score, ncc, out=score)
    return best
