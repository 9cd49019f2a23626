"""Mapping decoded pixels to float32 in [0, 1], 8-bit and 16-bit alike.

Legend: H, W = image height and width; C = channels (1 or 3).

The rule (every loader, reference or DALI, must apply the same one):

- ``uint8``: ``x / 255``, always; ``mode``, ``low`` and ``high`` are ignored.
- ``uint16``: ``y = clip((x - lo) / (hi - lo), 0, 1)`` computed in float32, where ``(lo, hi)`` is the
  image's range, chosen by ``mode``:

  - ``"percentile"`` (default): ``lo``/``hi`` are the ``low``/``high`` percentiles (default 0.5 and 99.5)
    of the WHOLE decoded image, all channels pooled, with numpy's default ("linear") percentile
    definition. This is a robust per-image range: a few hot or dead pixels do not flatten the scene.
    If ``hi <= lo`` (an image that is flat apart from a few outliers), it falls back to min/max.
  - ``"minmax"``: ``lo = min``, ``hi = max`` of the whole image.
  - ``"full"``: ``lo = 0``, ``hi = 65535`` (the raw counts, no stretch; most thermal scenes then use
    a narrow band of [0, 1]).

  If the range is still flat (``hi <= lo``: every pixel has the same value), the image maps to zeros.

The range belongs to the image, not to the crop: compute it once on the full decoded image with
:func:`image_range` (a packed index or a manifest may store it) and apply it to any crop with
:func:`apply_range`, so a crop of a hot object is not stretched differently from the whole frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

SIXTEEN_BIT_MODES: tuple[str, ...] = ("percentile", "minmax", "full")


def _check_array(op: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{op}: expected a numpy array [H,W,C], got {type(array).__name__}; use read_image()")
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"{op}: expected an array of shape [H,W,C] with C in (1, 3), got shape {tuple(array.shape)}; "
            "add a channel axis with array[..., None]"
        )
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{op}: expected dtype uint8 or uint16, got {array.dtype}; decode with read_image()")


@dataclass(frozen=True)
class SixteenBitMapping:
    """The 16-bit to [0, 1] rule as one value (the module docstring): ``mode`` and, for ``"percentile"``,
    the ``low``/``high`` percentiles. Its defaults are the data wing's default rule (``DataConfig`` writes
    the same numbers: a test holds them equal); a loader, a pack and a preview each hold one of these
    instead of three loose arguments (``data.sixteen_bit_mode``, ``data.low_percentile``,
    ``data.high_percentile``)."""

    mode: str = "percentile"
    low: float = 0.5
    high: float = 99.5

    def __post_init__(self) -> None:
        if self.mode not in SIXTEEN_BIT_MODES:
            raise ValueError(
                f"SixteenBitMapping: expected mode in {SIXTEEN_BIT_MODES}, got {self.mode!r}; the default is "
                "'percentile' (data.sixteen_bit_mode)"
            )
        if not (0.0 <= self.low < self.high <= 100.0):
            raise ValueError(
                f"SixteenBitMapping: expected 0 <= low < high <= 100, got low={self.low}, high={self.high}; the "
                "default is 0.5, 99.5 (data.low_percentile, data.high_percentile)"
            )
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    def range(self, array: np.ndarray) -> tuple[float, float]:
        """:func:`image_range` under this rule."""
        return _image_range(array, self)

    def ranges_torch(self, images: list[torch.Tensor]) -> list[tuple[float, float]]:
        """:func:`image_ranges_torch` under this rule."""
        return _image_ranges_torch(images, self)

    def to_unit_float(self, array: np.ndarray) -> torch.Tensor:
        """:func:`to_unit_float` under this rule."""
        lo, hi = self.range(array)
        return apply_range(array, lo, hi)

    def to_dict(self) -> dict:
        """As a pack's ``pack.json`` records it (the config's names)."""
        return {"sixteen_bit_mode": self.mode, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, values: dict) -> SixteenBitMapping:
        """From :meth:`to_dict`'s form."""
        return cls(values["sixteen_bit_mode"], float(values["low"]), float(values["high"]))


#: the default rule; the module functions' defaults are read from it
DEFAULT_MAPPING = SixteenBitMapping()


def _percentiles_uint16(array: np.ndarray, qs: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of a uint16 array, equal to ``np.percentile(array, qs)`` (linear), via a histogram.

    A 65536-bin histogram replaces the partial sort: O(N) and no copy of a large image.
    """
    counts = np.bincount(array.ravel(), minlength=65536)
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    out = []
    for q in qs:
        virtual = (q / 100.0) * (n - 1)  # the sorted position, as numpy computes it
        below = int(np.floor(virtual))
        above = min(below + 1, n - 1)
        frac = virtual - below
        a = float(np.searchsorted(cumulative, below, side="right"))
        b = float(np.searchsorted(cumulative, above, side="right"))
        diff = b - a
        # numpy's _lerp: a + diff * t, computed from the upper end when t >= 0.5 (monotone, exact ends)
        value = b - diff * (1.0 - frac) if frac >= 0.5 else a + diff * frac
        out.append(value)
    return out[0], out[1]


def image_range(
    array: np.ndarray,
    mode: str = DEFAULT_MAPPING.mode,
    low: float = DEFAULT_MAPPING.low,
    high: float = DEFAULT_MAPPING.high,
) -> tuple[float, float]:
    """The image's value range ``(lo, hi)`` used to map it to [0, 1] (rule in the module docstring).

    Args:
        array: ``[H, W, C]`` uint8 or uint16, the FULL decoded image (not a crop).
        mode, low, high: the fields of :class:`SixteenBitMapping`; ignored for uint8.

    Returns:
        ``(lo, hi)`` as Python floats; ``(0.0, 255.0)`` for uint8. ``hi <= lo`` only for a flat image
        (every pixel equal), which :func:`apply_range` maps to zeros.
    """
    return _image_range(array, SixteenBitMapping(mode, low, high))


def _image_range(array: np.ndarray, mapping: SixteenBitMapping) -> tuple[float, float]:
    _check_array("image_range", array)
    if array.dtype == np.uint8:
        return 0.0, 255.0
    if mapping.mode == "full":
        return 0.0, 65535.0
    if mapping.mode == "percentile":
        lo, hi = _percentiles_uint16(array, (mapping.low, mapping.high))
        if hi > lo:
            return lo, hi
    return float(array.min()), float(array.max())


def apply_range(array: np.ndarray, lo: float, hi: float) -> torch.Tensor:
    """Map pixels to [0, 1] with a given range: ``clip((x - lo) / (hi - lo), 0, 1)`` in float32.

    Args:
        array: ``[h, w, C]`` uint8 or uint16 (typically a crop of the image the range came from).
        lo, hi: the image's range from :func:`image_range`.

    Returns:
        ``[C, h, w]`` float32 tensor in [0, 1]; all zeros when ``hi <= lo`` (flat image).
    """
    _check_array("apply_range", array)
    if not hi > lo:
        return torch.zeros((array.shape[2], array.shape[0], array.shape[1]), dtype=torch.float32)
    # the float32 copy in numpy also makes a read-only or strided crop safe to hand to torch
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 2, 0), dtype=np.float32))
    if array.dtype == np.uint8 and lo == 0.0 and hi == 255.0:
        return x / 255.0
    return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)


def to_unit_float(
    array: np.ndarray,
    mode: str = DEFAULT_MAPPING.mode,
    low: float = DEFAULT_MAPPING.low,
    high: float = DEFAULT_MAPPING.high,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Map a decoded image to float32 [0, 1] (rule in the module docstring).

    Args:
        array: ``[H, W, C]`` uint8 or uint16 from :func:`infmae.data.io.read_image`.
        mode, low, high: the fields of :class:`SixteenBitMapping`; see :func:`image_range`.
        value_range: a precomputed ``(lo, hi)`` (e.g. of the full image when ``array`` is a crop);
            when given, ``mode``/``low``/``high`` are not used.

    Returns:
        ``[C, H, W]`` float32 tensor in [0, 1].
    """
    if value_range is None:
        value_range = image_range(array, mode, low, high)
    lo, hi = value_range
    return apply_range(array, float(lo), float(hi))


def histogram_uint16(flat: torch.Tensor, scatter: bool) -> torch.Tensor:
    """[65536] int64 counts of the values of ``flat`` (int32 in [0, 65535]). ``scatter``: a scatter-add
    (integer atomics: exact), which unlike CUDA's ``bincount`` reads nothing back to the host."""
    if scatter:
        counts = torch.zeros(65536, dtype=torch.int64, device=flat.device)
        return counts.scatter_add_(0, flat.long(), torch.ones_like(flat, dtype=torch.int64))
    return torch.bincount(flat, minlength=65536)


def image_ranges_torch(
    images: list[torch.Tensor],
    mode: str = DEFAULT_MAPPING.mode,
    low: float = DEFAULT_MAPPING.low,
    high: float = DEFAULT_MAPPING.high,
) -> list[tuple[float, float]]:
    """:func:`image_range` of each ``uint16`` tensor of a batch, on any device, bit-identical to numpy's
    rule, with one device-to-host transfer for the whole batch (for loaders that decode to 16-bit on the
    GPU, i.e. DALI). 8-bit data must be handled by the caller (its range is fixed).

    The percentile path is the histogram walk of :func:`_percentiles_uint16`: a 65536-bin count, its
    cumulative sum and the sorted positions found by ``searchsorted``, all on the device; the
    interpolation is then done in Python floats exactly as numpy does it.
    """
    return _image_ranges_torch(images, SixteenBitMapping(mode, low, high))


def _image_ranges_torch(images: list[torch.Tensor], mapping: SixteenBitMapping) -> list[tuple[float, float]]:
    mode, low, high = mapping.mode, mapping.low, mapping.high
    for x in images:
        if x.dtype != torch.uint16:
            raise TypeError(f"image_ranges_torch: expected uint16 tensors, got {x.dtype}; decode 16-bit data as uint16")
    if mode == "full":
        return [(0.0, 65535.0)] * len(images)
    plans, stats = [], []
    for x in images:
        flat = x.reshape(-1).to(torch.int32)
        parts = [flat.min().view(1), flat.max().view(1)]
        plan = []
        if mode == "percentile":
            n = flat.numel()
            positions = []
            for q in (low, high):
                virtual = (q / 100.0) * (n - 1)
                below = int(np.floor(virtual))
                positions += [below, min(below + 1, n - 1)]
                plan.append(virtual - below)
            cumulative = histogram_uint16(flat, scatter=flat.is_cuda).cumsum_(0)
            wanted = torch.tensor(positions, device=x.device, dtype=cumulative.dtype)
            parts.append(torch.searchsorted(cumulative, wanted, right=True).to(torch.int32))
        plans.append(plan)
        stats.append(torch.cat(parts))
    host = torch.cat(stats).cpu().tolist() if stats else []  # the one sync
    out, offset = [], 0
    for plan in plans:
        lo_min, hi_max = float(host[offset]), float(host[offset + 1])
        found = host[offset + 2 : offset + 2 + 2 * len(plan)]
        offset += 2 + 2 * len(plan)
        if plan:
            ends = []
            for (a, b), frac in zip(((found[0], found[1]), (found[2], found[3])), plan):
                a, b = float(a), float(b)
                diff = b - a
                ends.append(b - diff * (1.0 - frac) if frac >= 0.5 else a + diff * frac)
            if ends[1] > ends[0]:
                out.append((ends[0], ends[1]))
                continue
        out.append((lo_min, hi_max))
    return out


def image_range_torch(
    x: torch.Tensor,
    mode: str = DEFAULT_MAPPING.mode,
    low: float = DEFAULT_MAPPING.low,
    high: float = DEFAULT_MAPPING.high,
) -> tuple[float, float]:
    """:func:`image_ranges_torch` of one image."""
    return image_ranges_torch([x], mode, low, high)[0]
