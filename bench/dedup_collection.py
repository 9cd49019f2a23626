"""A generated collection for measuring near-duplicate detection: planted copies of graded strength among
distinct scenes that share a coarse layout, and slowly panning sequences.

Legend: H, W = frame height and width; d = the margin a frame is cut from (room for a camera shift).

Every scene is :func:`infmae.data.synthetic.make_layout_scene` of one of ``layouts`` road-camera layouts
(horizon, sky, road, gradient), 640x512 or 640x480 by default, 8-bit or 16-bit (raw counts), so distinct
scenes share their coarse structure the way frames of one camera do. Written under ``root``:

- ``distinct/l<layout>/s<k>-<look>.png``: ``distinct`` scenes, each alone (any group they end in is a
  false pair), each with its own objects and texture; ``look`` (:data:`LOOKS`) says whether an 8-bit
  scene has a narrow gray span (:data:`LOW_SHARE` of them);
- ``empty/l<layout>/s<k>-<look>.png``: low-detail scenes (no objects, a tenth of the texture): what
  tells two of one layout apart is only their smooth shading, as for frames of one fixed camera over an
  empty road hours apart. Whether they should merge is a matter of policy, not of detection, so they are
  reported apart from the distinct scenes;
- ``pairs/<kind>/<strength>/p<k>-<look>_a.<ext>`` and ``..._b.<ext>``: a scene and ONE planted copy of it, one
  pair per file pair, so that recall is per kind and strength (no chain through other copies). The copy
  kinds and strengths are :data:`COPY_LEVELS`, the scene of :data:`LOW_SHARE` of them has low detail
  (and of 8-bit ones, independently, a narrow gray span); :data:`BAR_LEVELS` are those of the issue's measured
  collection (sensor noise, a 3 px shift, +10 % gain / +10 levels, an 8-bit export of a 16-bit frame,
  JPEG, a 90 % resize);
- ``pans/speed<s>_<k>/frame<i>.png`` (:func:`write_pans`): a camera panning ``s`` px per frame.

Output is a pure function of the seed (each scene draws from ``SeedSequence([seed, role, index])``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from infmae.data.synthetic import make_layout_scene, random_layout, to_counts16, write_image

#: kind -> strengths, weakest first. noise: sigma in % of the frame's 0.5-99.5 percentile range;
#: shift: camera shift in px, random direction; gain: % (values x (1 + g/100), clipped); offset: levels
#: of the 8-bit scale added (range / 255 counts each for a 16-bit frame); to8: the 8-bit export of a
#: 16-bit frame (min-max, percentile 1/99 or 5/95 clipped, gamma 0.7, histogram equalised like a camera's
#: AGC); jpeg: quality (a 16-bit frame: JPEG of its min-max export); resize: scale factor (Lanczos).
COPY_LEVELS: dict[str, tuple] = {
    "noise": (0.5, 1, 2, 4, 8),
    "shift": (1, 2, 3, 5, 8, 16),
    "gain": (5, 10, 20, 40),
    "offset": (10, 20, 40),
    "to8": ("minmax", "p1", "p5", "gamma0.7", "histeq"),
    "jpeg": (95, 90, 75, 50, 30),
    "resize": (0.9, 0.75, 0.5, 0.25),
}
#: The strengths of the issue's acceptance bar, and the weaker ones of each kind.
BAR_LEVELS: frozenset[tuple[str, object]] = frozenset(
    [("noise", s) for s in (0.5, 1, 2)]
    + [("shift", s) for s in (1, 2, 3)]
    + [("gain", s) for s in (5, 10)]
    + [("offset", 10)]
    + [("to8", s) for s in ("minmax", "p1")]
    + [("jpeg", s) for s in (95, 90, 75)]
    + [("resize", 0.9)]
)
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((512, 640), (480, 640))
#: Share of scenes with little detail (no objects, a tenth of the fine texture), and, independently, of
#: 8-bit scenes with a narrow gray span: the frames on which perceptual hashes are fragile.
LOW_SHARE = 0.3
LOOKS = ("normal", "lowdetail", "normal+lowcontrast", "lowdetail+lowcontrast")
_MARGIN = 16  # px of scene around each frame: the largest shift of COPY_LEVELS
_DISTINCT, _PAIRS, _PANS, _EMPTY = 0, 1, 2, 3  # seed roles


def _robust_range(pixels: np.ndarray) -> float:
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    return max(float(hi - lo), 1.0)


def _clip_to(values: np.ndarray, dtype) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.clip(np.round(values), 0, top).astype(dtype)


def export8(counts: np.ndarray, mapping: str) -> np.ndarray:
    """An 8-bit export of 16-bit ``counts`` [H, W] by ``mapping`` (a ``to8`` strength of :data:`COPY_LEVELS`)."""
    values = counts.astype(np.float64)
    if mapping == "histeq":  # each pixel's rank: a flat histogram, as a camera's AGC makes
        flat = values.ravel()
        levels, inverse, tally = np.unique(flat, return_inverse=True, return_counts=True)
        rank = (np.cumsum(tally) - 0.5 * (tally + 1)) / max(1, flat.size - 1)
        return np.round(rank[inverse.reshape(-1)].reshape(values.shape) * 255).astype(np.uint8)
    if mapping.startswith("gamma"):
        lo, hi, power = values.min(), values.max(), float(mapping[5:])
        return np.round(np.clip((values - lo) / max(hi - lo, 1.0), 0, 1) ** power * 255).astype(np.uint8)
    if mapping == "minmax":
        lo, hi = values.min(), values.max()
    elif mapping.startswith("p"):
        q = float(mapping[1:])
        lo, hi = np.percentile(values, (q, 100 - q))
    else:
        raise ValueError(f"export8: expected a mapping of {COPY_LEVELS['to8']}, got {mapping!r}")
    return np.round(np.clip((values - lo) / max(hi - lo, 1.0), 0, 1) * 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=int(quality))
    return buffer.getvalue()


def make_copy(full: np.ndarray, kind: str, strength, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | bytes]:
    """``(base, copy)`` from ``full`` [H + 2d, W + 2d] (uint8 or uint16): the base is the centre crop, the copy
    a planted near-duplicate of it. The copy is pixels, or the bytes of a JPEG file for ``jpeg``."""
    d = _MARGIN
    height, width = full.shape[0] - 2 * d, full.shape[1] - 2 * d
    base = full[d : d + height, d : d + width]
    dtype = base.dtype
    if kind == "noise":
        return base, _clip_to(base + rng.normal(0, strength / 100 * _robust_range(base), base.shape), dtype)
    if kind == "shift":
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = int(round(strength * np.sin(angle))), int(round(strength * np.cos(angle)))
        return base, full[d + dy : d + dy + height, d + dx : d + dx + width]
    if kind == "gain":
        return base, _clip_to(base.astype(np.float64) * (1 + strength / 100), dtype)
    if kind == "offset":
        step = 1.0 if dtype == np.uint8 else _robust_range(base) / 255
        return base, _clip_to(base.astype(np.float64) + strength * step, dtype)
    if kind == "to8":
        if dtype != np.uint16:
            raise ValueError(f"make_copy: expected a 16-bit frame for kind 'to8', got {dtype}")
        return base, export8(base, strength)
    if kind == "jpeg":
        return base, _jpeg(base if dtype == np.uint8 else export8(base, "minmax"), strength)
    if kind == "resize":
        size = (round(width * strength), round(height * strength))
        resized = Image.fromarray(base.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
        return base, _clip_to(np.asarray(resized), dtype)
    raise ValueError(f"make_copy: expected a kind of {tuple(COPY_LEVELS)}, got {kind!r}")


def _frame(
    rng: np.random.Generator, layout, sizes, sixteen: bool, margin: int, low_detail_share: float
) -> tuple[np.ndarray, str]:
    """-> (pixels, look): ``look`` names the scene's detail and (8-bit) contrast, see :data:`LOOKS`."""
    height, width = sizes[int(rng.integers(len(sizes)))]
    low_detail, low_contrast = rng.random() < low_detail_share, (not sixteen) and rng.random() < LOW_SHARE
    scene = make_layout_scene(height + 2 * margin, width + 2 * margin, layout, rng, 0.1 if low_detail else 1.0)
    look = ("lowdetail" if low_detail else "normal") + ("+lowcontrast" if low_contrast else "")
    if sixteen:
        return to_counts16(scene, rng), look
    if low_contrast:  # 30 to 75 gray levels around a random mean: an 8-bit camera with a narrow span
        span, middle = rng.uniform(0.12, 0.3), rng.uniform(0.3, 0.7)
        scene = middle + (scene - 0.5) * span
    return np.round(np.clip(scene, 0, 1) * 255).astype(np.uint8), look


def _layouts(seed: int, count: int) -> list:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    return [random_layout(rng) for _ in range(count)]


def _strength_name(strength) -> str:
    return str(strength).replace(".", "p")


def write_distinct(
    root: Path, indices: range, seed: int, layouts: int, sizes=DEFAULT_SIZES, empty: bool = False
) -> dict[str, None]:
    """Write distinct scenes ``indices`` (scene ``k`` uses layout ``k % layouts``) -> {path: None}. With
    ``empty``: low-detail scenes instead (no objects), under ``empty/``: see the module docstring."""
    plans = _layouts(seed, layouts)
    truth: dict[str, None] = {}
    for k in indices:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _EMPTY if empty else _DISTINCT, k]))
        pixels, look = _frame(rng, plans[k % layouts], sizes, bool(k % 2), 0, 1.0 if empty else 0.0)
        rel = f"{'empty' if empty else 'distinct'}/l{k % layouts:03d}/s{k:05d}-{look}.png"
        write_image(Path(root) / rel, pixels, compress_level=1)
        truth[rel] = None
    return truth


def pair_jobs(levels: dict[str, tuple], per_level: int) -> list[tuple[str, object, int]]:
    """``(kind, strength, k)`` for every planted pair, ``k`` numbering the pairs of all levels."""
    jobs = [(kind, strength) for kind, strengths in levels.items() for strength in strengths]
    return [(kind, strength, n * per_level + j) for n, (kind, strength) in enumerate(jobs) for j in range(per_level)]


def write_pairs(
    root: Path, jobs: list[tuple[str, object, int]], seed: int, layouts: int, sizes=DEFAULT_SIZES
) -> dict[str, str]:
    """Write each job's scene and its planted copy -> {path: pair id} (the id names kind and strength:
    ``<kind>/<strength>/p<k>``)."""
    plans = _layouts(seed, layouts)
    truth: dict[str, str] = {}
    for kind, strength, k in jobs:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _PAIRS, k]))
        sixteen = kind == "to8" or bool(rng.integers(2))
        full, look = _frame(rng, plans[int(rng.integers(layouts))], sizes, sixteen, _MARGIN, LOW_SHARE)
        base, copy = make_copy(full, kind, strength, rng)
        pair = f"{kind}/{_strength_name(strength)}/p{k:05d}-{look}"
        first = f"pairs/{pair}_a.png"
        write_image(Path(root) / first, base, compress_level=1)
        if isinstance(copy, bytes):
            second = f"pairs/{pair}_b.jpg"
            (Path(root) / second).write_bytes(copy)
        else:
            second = f"pairs/{pair}_b.png"
            write_image(Path(root) / second, copy, compress_level=1)
        truth[first] = truth[second] = pair
    return truth


def write_pans(
    root: Path, speeds: tuple[int, ...], pans_per_speed: int, frames: int, seed: int, size=(480, 640)
) -> dict[str, tuple[int, int]]:
    """A camera panning right at ``speed`` px per frame over a layout scene: ``frames`` crops of ``size``.
    -> {path: (pan number, x offset of the frame in px)}."""
    height, width = size
    truth: dict[str, tuple[int, int]] = {}
    pan = 0
    for speed in speeds:
        for k in range(pans_per_speed):
            rng = np.random.default_rng(np.random.SeedSequence([seed, _PANS, pan]))
            wide = make_layout_scene(height, width + speed * (frames - 1), random_layout(rng), rng)
            sixteen = bool(k % 2)
            pixels = to_counts16(wide, rng) if sixteen else np.round(wide * 255).astype(np.uint8)
            sigma = 0.005 * _robust_range(pixels)  # each frame its own sensor noise, as a real camera's
            for i in range(frames):
                frame = pixels[:, i * speed : i * speed + width]
                frame = _clip_to(frame + rng.normal(0, sigma, frame.shape), pixels.dtype)
                rel = f"pans/speed{speed}_{k}/frame{i}.png"  # natural order: frame2 before frame10
                write_image(Path(root) / rel, frame, compress_level=1)
                truth[rel] = (pan, i * speed)
            pan += 1
    return truth
