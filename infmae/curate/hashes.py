"""Per-image fingerprints for curation: the 8-bit view, its entropy, a pixel hash and a perceptual hash.

Legend: H, W = image height and width; C = channels (1 or 3).

- **8-bit view** (:func:`eight_bit_view`): ``[H, W]`` uint8. 8-bit files are used as decoded; 16-bit
  files go through the project's 16-bit rule (:mod:`infmae.data.mapping`, percentile 0.5 / 99.5 of the
  whole image, the same ``clip((x - lo) / (hi - lo), 0, 1)`` in float32 as the loaders) and then
  ``round(y * 255)``. Never a saturating conversion: Pillow's ``convert('L')`` of a 16-bit frame clips
  every count above 255 to white, so all 16-bit frames would hash and measure alike. Colour images
  are averaged to gray (as the reference loader does for ``in_chans=1``), then rounded.
- **entropy** (:func:`entropy_bits`): Shannon entropy in bits of the 256-bin histogram of the view,
  ``-sum(p * log2 p)`` over non-empty bins (0 for a constant image, 8 at most).
- **pixel hash** (:func:`pixel_sha256`): SHA-256 of the DECODED pixels (dtype, shape, then the bytes),
  not of the file, so a lossless re-encoding (PNG -> TIFF, another compression level) is an exact
  duplicate too.
- **thumbnail** (:func:`thumbnail`): the view resized to 32x32 (Pillow, Lanczos) in 32-bit float, NOT
  rounded to 8 bits: each thumbnail pixel averages hundreds of pixels, and a low-contrast 8-bit frame
  (a scene spanning 30 gray levels) keeps its fine structure only below one gray level. Rounding it
  moved up to 12 of the 64 pHash bits and halved the content similarity between a low-contrast frame
  and its noisy copy (bench/bench_dedup.py).
- **perceptual hash** (:func:`phash64`): the 64-bit DCT pHash: a 2-D DCT-II (orthonormal, numpy matrix
  product) of the thumbnail, the top-left 8x8 coefficients compared with their median; bit ``k``
  (row-major over the 8x8 block) is the bit of value ``2**k``. Affine brightness/contrast changes, mild
  noise, small shifts and re-quantisation move only a few bits. :func:`dct_hashes` also returns the
  256-bit variant (16x16 block, kept in the manifest).
- **percentile thumbnail** (:func:`percentile_thumbnail`): each thumbnail pixel replaced by its rank in
  the thumbnail (ties averaged), scaled to 0..255: 1024 bytes stored per image so that candidate pairs
  are confirmed by content (:mod:`infmae.curate.similarity`) without reading the images again. Any
  increasing mapping of the intensities leaves it unchanged. :func:`fingerprints` returns the hashes and
  this thumbnail from one resize.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from infmae.data.mapping import DEFAULT_MAPPING

THUMB_SIZE = 32
HASH_SIDE = 8


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` [n, n]: ``D @ x`` is the DCT of the column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(THUMB_SIZE)
_BIT_VALUES = (1 << np.arange(64, dtype=np.uint64)).astype(np.uint64)


def eight_bit_view(array: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` uint8/uint16 from ``read_image`` -> ``[H, W]`` uint8 gray view (module docstring)."""
    if array.ndim != 3 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"eight_bit_view: expected [H,W,C] uint8/uint16, got shape {array.shape} dtype {array.dtype}; "
            "decode with infmae.data.io.read_image"
        )
    if array.dtype == np.uint16:
        lo, hi = DEFAULT_MAPPING.range(array)
        if hi > lo:
            unit = np.clip((array.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        else:  # flat image: the mapping's rule sends it to zeros
            unit = np.zeros(array.shape, np.float32)
        view = np.round(unit * 255.0)
    else:
        view = array
    if view.shape[-1] == 1:
        return np.ascontiguousarray(view[..., 0], dtype=np.uint8)
    return np.round(view.astype(np.float32).mean(axis=-1)).astype(np.uint8)


def entropy_bits(view: np.ndarray) -> float:
    """Shannon entropy in bits of the 256-bin histogram of a uint8 array."""
    if view.dtype != np.uint8 or view.size == 0:
        raise ValueError(f"entropy_bits: expected a non-empty uint8 array, got dtype {view.dtype} size {view.size}")
    if view.ndim == 2:  # Pillow's histogram: the same counts, 2-4x faster than np.bincount (which casts to intp)
        counts = np.asarray(Image.fromarray(np.ascontiguousarray(view)).histogram(), dtype=np.float64)
    else:
        counts = np.bincount(view.ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / view.size
    return float(max(0.0, -(p * np.log2(p)).sum()))


def pixel_sha256(array: np.ndarray) -> str:
    """Hex SHA-256 of decoded pixels, including dtype and shape (so equal bytes of other layouts differ)."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def thumbnail(view: np.ndarray) -> np.ndarray:
    """The ``[32, 32]`` float32 Lanczos thumbnail of a ``[H, W]`` uint8 view, unrounded (the pHash's input).
    Pillow converts to float after decoding (mode ``F``) so that its box pre-reduction does not round
    either; from a uint8 image this costs about 1.3x the 8-bit resize, from a float array 6x."""
    image = Image.fromarray(np.ascontiguousarray(view)).convert("F")
    thumb = image.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(thumb, dtype=np.float32)


def percentile_thumbnail(thumb: np.ndarray) -> np.ndarray:
    """``[32, 32]`` float thumbnail -> ``[32, 32]`` uint8: each pixel's average rank among the thumbnail's
    pixels, scaled to 0..255 (a flat thumbnail is 128 everywhere)."""
    values = thumb.ravel()
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - 0.5 * (counts + 1))[inverse.reshape(-1)]  # 0-based, ties averaged
    scaled = np.round(rank * (255.0 / max(1, values.size - 1)))
    if counts.size == 1:
        scaled[:] = 128
    return scaled.astype(np.uint8).reshape(thumb.shape)


def _dct_of(thumb: np.ndarray) -> np.ndarray:
    pixels = thumb.astype(np.float64)
    return _DCT @ pixels @ _DCT.T


def _low_dct(view: np.ndarray) -> np.ndarray:
    """The 2-D DCT-II of the 32x32 Lanczos thumbnail of a ``[H, W]`` uint8 view (float64 [32, 32])."""
    return _dct_of(thumbnail(view))


def _median_bits(block: np.ndarray) -> np.ndarray:
    values = block.ravel()
    return values > np.median(values)


def phash64(view: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a ``[H, W]`` uint8 view, as a Python int in [0, 2**64)."""
    bits = _median_bits(_low_dct(view)[:HASH_SIDE, :HASH_SIDE])
    return int(_BIT_VALUES[bits].sum(dtype=np.uint64))


def dct_hashes(view: np.ndarray) -> tuple[int, str]:
    """``(phash64, phash256)`` from one thumbnail: the 64-bit pHash, and the 256-bit pHash (the 16x16
    low-frequency block against its median) as 64 hex digits. The 64-bit hash is what the index searches.
    The 256-bit one no longer decides anything (it stays in the manifest): as a check of the index's pairs
    it rejected true copies (noise, 3 px shift, 8-bit export, JPEG: 54-58 bits) only a few bits short of
    distinct sky-over-ground scenes (64+ bits); :mod:`infmae.curate.similarity` confirms pairs instead."""
    return _hashes_of(_dct_of(thumbnail(view)))


def _hashes_of(dct: np.ndarray) -> tuple[int, str]:
    bits64 = _median_bits(dct[:HASH_SIDE, :HASH_SIDE])
    bits256 = _median_bits(dct[: 2 * HASH_SIDE, : 2 * HASH_SIDE])
    return int(_BIT_VALUES[bits64].sum(dtype=np.uint64)), np.packbits(bits256).tobytes().hex()


def fingerprints(view: np.ndarray) -> tuple[int, str, bytes]:
    """``(phash64, phash256, percentile thumbnail)`` of a ``[H, W]`` uint8 view from ONE Lanczos resize: the
    two hashes of :func:`dct_hashes` and :func:`percentile_thumbnail` as 1024 row-major bytes, which
    :mod:`infmae.curate.similarity` compares to confirm the pairs the 64-bit index proposes."""
    thumb = thumbnail(view)
    phash, phash256 = _hashes_of(_dct_of(thumb))
    return phash, phash256, percentile_thumbnail(thumb).tobytes()


def hex_to_words(hex_digits: str) -> np.ndarray:
    """A 256-bit hash as 64 hex digits -> ``[4]`` uint64 words (for :func:`popcount64` distances)."""
    return np.frombuffer(bytes.fromhex(hex_digits), dtype=">u8").astype(np.uint64)


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (int(a) ^ int(b)).bit_count()


def popcount64(values: np.ndarray) -> np.ndarray:
    """Per-element number of set bits of a uint64 array, as int64 (no Python loop)."""
    values = np.asarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: one hardware popcount per element
        return np.bitwise_count(values).astype(np.int64)
    x = values.copy()  # SWAR for numpy 1.x
    x -= (x >> np.uint64(1)) & np.uint64(0x5555555555555555)
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)
