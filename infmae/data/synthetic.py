"""Synthetic infrared scenes written as real image files, for tests, demos and loader benchmarks.

Legend: H, W = image height and width in pixels.

A scene (:func:`make_scene`) is a float32 ``[H, W]`` map in [0, 1] built like a thermal frame: a smooth
background (low-frequency blurred noise plus a gradient), sometimes a colder sky band above a horizon,
warm objects (Gaussian hot spots, vehicles with a hot engine, buildings with warm windows, people),
then optional vignetting, column fixed-pattern noise and sensor noise. :func:`make_layout_scene` draws
scenes that share a :class:`SceneLayout` (horizon, sky, road, gradient) and differ in everything else.

:func:`generate_dataset` writes such scenes in the formats the engine must read: 8-bit PNG, 16-bit
PNG (raw counts in a 7000-9500 band), gray and colour JPEG, 16-bit TIFF (raw, LZW, deflate), 8-bit
BMP (upper-case ``.BMP``) and colour-mapped RGB PNG, in mixed sizes, in a few sub-folders. With
``include_bad`` it adds the bad files listed in :data:`BAD_FILES` and the ignored ones in
:data:`IGNORED_FILES`. Output is a pure function of the seed (each image has its own stream).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

#: Kinds of good files: name -> (extension, bits, channels, Pillow save options).
FILE_KINDS: dict[str, tuple[str, int, int, dict]] = {
    "png8": (".png", 8, 1, {"compress_level": 1}),
    "png16": (".png", 16, 1, {"compress_level": 1}),
    "jpg8": (".jpg", 8, 1, {"quality": 92}),
    "tif16": (".tif", 16, 1, {}),
    "tif16_lzw": (".tif", 16, 1, {"compression": "tiff_lzw"}),
    "tif16_deflate": (".tiff", 16, 1, {"compression": "tiff_adobe_deflate"}),
    "bmp8": (".BMP", 8, 1, {}),
    "png_rgb8": (".png", 8, 3, {"compress_level": 1}),
    "jpg_rgb8": (".jpeg", 8, 3, {"quality": 92}),
}
_KIND_WEIGHTS = {
    "png8": 0.15,
    "png16": 0.25,
    "jpg8": 0.14,
    "tif16": 0.1,
    "tif16_lzw": 0.1,
    "tif16_deflate": 0.1,
    "bmp8": 0.08,
    "png_rgb8": 0.05,
    "jpg_rgb8": 0.03,
}

#: Default (height, width) mix and weights: common thermal sensor formats, a few non-square, one rare wide.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (512, 640),
    (256, 320),
    (120, 160),
    (160, 96),
    (240, 320),
    (64, 64),
    (128, 128),
    (480, 640),
    (288, 384),
    (96, 128),
    (256, 1024),
)
_SIZE_WEIGHTS = (0.1, 0.2, 0.15, 0.1, 0.1, 0.06, 0.1, 0.04, 0.06, 0.08, 0.01)

_SUBFOLDERS = ("cam_a/seq01", "cam_a/seq02", "cam_b", "cam_b/day2")

#: The bad files written with ``include_bad``: kind -> path relative to the root.
BAD_FILES: dict[str, str] = {
    "truncated_png": "cam_a/seq02/ir_truncated.png",
    "zero_byte": "cam_b/empty.png",
    "text_as_jpg": "cam_b/notes_not_an_image.jpg",
    "tiny": "cam_a/seq01/tiny_12x12.png",
    "corrupt_tiff16": "cam_b/day2/corrupt_body16.tif",
}
#: Files written with ``include_bad`` that a folder scan must ignore (hidden, not an image extension).
IGNORED_FILES: tuple[str, ...] = ("cam_a/.thumbnail.png", "cam_b/README.txt")


def _smooth_noise(height: int, width: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """``[H, W]`` float32 noise with about ``cells`` features across the long side (bicubic upsampled)."""
    long_side = max(height, width)
    grid_h = max(2, round(cells * height / long_side) + 1)
    grid_w = max(2, round(cells * width / long_side) + 1)
    coarse = rng.standard_normal((grid_h, grid_w)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def _window(cy: float, cx: float, ry: float, rx: float, height: int, width: int):
    y0, y1 = max(0, int(cy - ry)), min(height, int(np.ceil(cy + ry)) + 1)
    x0, x1 = max(0, int(cx - rx)), min(width, int(np.ceil(cx + rx)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _add_blob(scene, cy, cx, sy, sx, heat):
    win = _window(cy, cx, 3 * sy, 3 * sx, *scene.shape)
    if win is not None:
        region, yy, xx = win
        scene[region] += heat * np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))


def _soft_box(yy, xx, cy, cx, hy, hx, soft):
    """1 inside the box of half-sizes (hy, hx), falling to 0 over ``soft`` pixels outside."""
    inside = np.minimum(hy - np.abs(yy - cy), hx - np.abs(xx - cx))
    return np.clip(inside / soft + 0.5, 0.0, 1.0)


def _add_box(scene, cy, cx, hy, hx, heat, soft=1.5):
    win = _window(cy, cx, hy + 2 * soft, hx + 2 * soft, *scene.shape)
    if win is not None:
        region, yy, xx = win
        scene[region] += heat * _soft_box(yy, xx, cy, cx, hy, hx, soft)


def _add_ellipse(scene, cy, cx, ry, rx, heat, soft=1.0):
    win = _window(cy, cx, ry + 2 * soft, rx + 2 * soft, *scene.shape)
    if win is not None:
        region, yy, xx = win
        dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        scene[region] += heat * np.clip((1.0 - dist) * min(ry, rx) / soft + 0.5, 0.0, 1.0)


def make_scene(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic thermal scene.

    Args:
        height, width: size in pixels (>= 1).
        rng: numpy Generator; the scene is a pure function of its state.

    Returns:
        ``[H, W]`` float32 in [0, 1]: warm objects bright on a smooth, cooler background.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"make_scene: expected a positive size, got {height}x{width}; e.g. 256x320")
    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    scene = 0.35 + 0.08 * (np.cos(angle) * xx + np.sin(angle) * yy)
    scene = scene + 0.06 * _smooth_noise(height, width, int(rng.integers(3, 6)), rng)
    scene = scene + 0.02 * _smooth_noise(height, width, int(rng.integers(12, 24)), rng)

    horizon = None
    if rng.random() < 0.5:  # a cold sky band above a horizon
        horizon = rng.uniform(0.2, 0.55) * height
        rows = np.arange(height, dtype=np.float32)[:, None]
        sky = 1.0 / (1.0 + np.exp((rows - horizon) / max(1.0, 0.01 * height)))
        scene = scene - sky * (0.2 + 0.1 * (1.0 - rows / max(horizon, 1.0)).clip(0, 1))
    scene = np.ascontiguousarray(np.broadcast_to(scene, (height, width)), dtype=np.float32)

    ground_top = horizon if horizon is not None else 0.0
    _add_objects(scene, ground_top, rng)
    return _sensor(scene, xx, yy, rng)


def _add_objects(scene: np.ndarray, ground_top: float, rng: np.random.Generator) -> None:
    """Add 2-8 warm objects (blobs, vehicles, buildings, people) to ``scene`` in place, their centres
    below row ``ground_top``."""
    height, width = scene.shape
    scale = min(height, width)
    for _ in range(int(rng.integers(2, 9))):
        kind = rng.choice(("blob", "vehicle", "building", "person"), p=(0.3, 0.3, 0.15, 0.25))
        cy = rng.uniform(ground_top, height)
        cx = rng.uniform(0, width)
        heat = rng.uniform(0.12, 0.45)
        if kind == "blob":
            sigma = rng.uniform(0.01, 0.06) * scale + 0.7
            _add_blob(scene, cy, cx, sigma * rng.uniform(0.6, 1.4), sigma, heat)
        elif kind == "vehicle":
            hx = rng.uniform(0.04, 0.12) * scale + 2
            hy = hx * rng.uniform(0.35, 0.6)
            _add_box(scene, cy, cx, hy, hx, 0.5 * heat)
            side = rng.choice((-1.0, 1.0))
            _add_blob(scene, cy, cx + side * 0.6 * hx, 0.4 * hy + 0.5, 0.3 * hx + 0.5, heat)  # engine
            for wheel in (-0.6, 0.6):
                _add_blob(scene, cy + hy, cx + wheel * hx, 0.2 * hy + 0.5, 0.15 * hx + 0.5, 0.6 * heat)
        elif kind == "building":
            hx = rng.uniform(0.08, 0.25) * scale + 3
            hy = rng.uniform(0.1, 0.3) * scale + 3
            base_y = min(cy, height - hy)
            _add_box(scene, base_y, cx, hy, hx, 0.25 * heat)
            rows, cols = int(rng.integers(2, 5)), int(rng.integers(2, 6))
            for r in range(rows):
                for c in range(cols):
                    wy = base_y - hy + (r + 0.5) * 2 * hy / rows
                    wx = cx - hx + (c + 0.5) * 2 * hx / cols
                    _add_box(scene, wy, wx, 0.2 * hy / rows + 0.5, 0.25 * hx / cols + 0.5, 0.6 * heat, soft=1.0)
        else:  # person: body ellipse and head
            ry = rng.uniform(0.04, 0.12) * scale + 2
            rx = ry * rng.uniform(0.25, 0.4)
            _add_ellipse(scene, cy, cx, ry, rx, heat)
            _add_ellipse(scene, cy - 1.25 * ry, cx, 0.3 * ry + 0.5, 0.3 * ry + 0.5, 1.1 * heat)


def _sensor(scene: np.ndarray, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The camera: optional vignetting and column fixed-pattern noise, sensor noise, then the scene
    stretched to [0.05, 0.9] by its 0.1 / 99.9 percentiles. ``xx``/``yy``: the [-1, 1] coordinate grids."""
    height, width = scene.shape
    if rng.random() < 0.5:  # vignetting
        radius2 = xx**2 + yy**2
        scene *= 1.0 - rng.uniform(0.05, 0.2) * radius2 / 2.0
    if rng.random() < 0.5:  # column fixed-pattern noise
        scene += rng.normal(0.0, rng.uniform(0.003, 0.01), size=(1, width)).astype(np.float32)
    scene += rng.normal(0.0, rng.uniform(0.004, 0.012), size=(height, width)).astype(np.float32)

    lo, hi = np.percentile(scene, (0.1, 99.9))
    scene = (scene - lo) / max(hi - lo, 1e-6) * 0.85 + 0.05
    return np.clip(scene, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SceneLayout:
    """The coarse layout a camera keeps from scene to scene (a car's road camera, a fixed mast): what
    distinct scenes of :func:`make_layout_scene` share. Fractions are of the frame's height or width."""

    horizon: float  # row of the horizon, fraction of the height
    sky_cold: float  # how much colder the sky is than the ground, in scene units
    gradient_angle: float  # direction of the background's linear gradient, radians
    road_x: float  # column of the road's vanishing point on the horizon, fraction of the width
    road_half_width: float  # half the road's width at the bottom row, fraction of the width
    road_heat: float  # road minus surroundings, scene units (asphalt is warmer by day, colder by night)


def random_layout(rng: np.random.Generator) -> SceneLayout:
    """A road-camera layout: horizon in the upper half, a road from the bottom to a vanishing point."""
    return SceneLayout(
        horizon=float(rng.uniform(0.3, 0.55)),
        sky_cold=float(rng.uniform(0.2, 0.3)),
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        road_x=float(rng.uniform(0.3, 0.7)),
        road_half_width=float(rng.uniform(0.25, 0.45)),
        road_heat=float(rng.uniform(-0.1, 0.1)),
    )


def make_layout_scene(
    height: int, width: int, layout: SceneLayout, rng: np.random.Generator, detail: float = 1.0
) -> np.ndarray:
    """A scene of ``layout``: the layout's gradient, sky, horizon and road, and its own background texture,
    objects and sensor noise from ``rng``. Two scenes of one layout are different pictures whose coarsest
    structure (and so most of a 64-bit pHash) is the same: the hard case for near-duplicate detection.
    ``detail`` scales the fine background texture; under 0.5 the scene has no objects either (fog, an
    empty field: little but the layout and noise, where perceptual hashes are fragile).

    Returns:
        ``[H, W]`` float32 in [0, 1], like :func:`make_scene`.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"make_layout_scene: expected a positive size, got {height}x{width}; e.g. 512x640")
    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    angle = layout.gradient_angle
    scene = 0.35 + 0.08 * (np.cos(angle) * xx + np.sin(angle) * yy)
    scene = scene + 0.03 * _smooth_noise(height, width, int(rng.integers(3, 6)), rng)
    scene = scene + 0.02 * detail * _smooth_noise(height, width, int(rng.integers(12, 24)), rng)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    horizon = layout.horizon * height
    scene = scene - layout.sky_cold / (1.0 + np.exp((rows - horizon) / max(1.0, 0.01 * height)))
    depth = np.clip((rows - horizon) / max(1.0, height - horizon), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom
    half = depth * layout.road_half_width * width
    road = np.clip((half - np.abs(cols - layout.road_x * width)) / 2.0 + 0.5, 0.0, 1.0) * (rows > horizon)
    scene = np.ascontiguousarray(scene + layout.road_heat * road, dtype=np.float32)
    if detail >= 0.5:
        _add_objects(scene, horizon, rng)
    return _sensor(scene, xx, yy, rng)


_IRONBOW = np.array(  # (position, r, g, b): black -> blue -> purple -> red -> orange -> yellow -> white
    [
        [0.0, 0, 0, 0],
        [0.15, 20, 10, 110],
        [0.35, 130, 20, 150],
        [0.55, 215, 50, 60],
        [0.75, 250, 140, 20],
        [0.9, 255, 220, 60],
        [1.0, 255, 255, 230],
    ],
    dtype=np.float32,
)


def colormap(scene: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 with an ironbow-like thermal palette."""
    channels = [np.interp(scene, _IRONBOW[:, 0], _IRONBOW[:, k]) for k in (1, 2, 3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def to_counts16(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> uint16 raw counts in a realistic band inside 7000-9500."""
    base = rng.uniform(7000, 7400)
    span = rng.uniform(900, 9500 - base)
    return np.round(base + scene * span).astype(np.uint16)


def write_image(path: str | os.PathLike, array: np.ndarray, **save_options) -> Path:
    """Write ``[H, W]`` (uint8/uint16) or ``[H, W, 3]`` (uint8) pixels; the format follows the extension.

    ``save_options`` go to Pillow's ``save`` (e.g. ``compression="tiff_lzw"`` for TIFF).
    """
    path = Path(path)
    if array.dtype not in (np.uint8, np.uint16) or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3 and array.dtype == np.uint8)
    ):
        raise ValueError(
            f"write_image: expected [H,W] uint8/uint16 or [H,W,3] uint8, got shape {array.shape} dtype {array.dtype}; "
            "convert the array first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, **save_options)
    return path


def _pick(rng: np.random.Generator, options, weights):
    return options[int(rng.choice(len(options), p=np.asarray(weights) / np.sum(weights)))]


def _write_bad_files(root: Path, rng: np.random.Generator) -> list[Path]:
    written = []
    # a PNG cut in the middle of its image data: the header is valid, decoding fails
    path = root / BAD_FILES["truncated_png"]
    write_image(path, np.round(make_scene(120, 160, rng) * 255).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    written.append(path)
    # an empty file and a text file with an image extension
    path = root / BAD_FILES["zero_byte"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    written.append(path)
    path = root / BAD_FILES["text_as_jpg"]
    path.write_text("calibration notes: FPA temperature 31.2 C\n")
    written.append(path)
    # a valid image below the 20 px size limit
    written.append(write_image(root / BAD_FILES["tiny"], np.round(make_scene(12, 12, rng) * 255).astype(np.uint8)))
    # a 16-bit LZW TIFF whose strips are overwritten with garbage: the header reads, the body does not
    path = write_image(
        root / BAD_FILES["corrupt_tiff16"], to_counts16(make_scene(96, 128, rng), rng), compression="tiff_lzw"
    )
    with Image.open(path) as img:
        offsets, counts = img.tag_v2[273], img.tag_v2[279]
    data = bytearray(path.read_bytes())
    for offset, count in zip(offsets, counts):
        data[offset : offset + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    written.append(path)
    # files a folder scan ignores
    written.append(write_image(root / IGNORED_FILES[0], np.round(make_scene(64, 64, rng) * 255).astype(np.uint8)))
    (root / IGNORED_FILES[1]).write_text("synthetic infrared test set\n")
    written.append(root / IGNORED_FILES[1])
    return written


def generate_dataset(
    root: str | os.PathLike,
    count: int,
    seed: int = 0,
    sizes: list[tuple[int, int]] | None = None,
    include_bad: bool = True,
) -> list[Path]:
    """Write ``count`` synthetic infrared images (plus bad files) under ``root``.

    The first ``len(FILE_KINDS)`` images cycle through every kind, so any ``count >= 9`` holds every
    format; the rest are drawn by weight (16-bit PNG most common, RGB rare).

    Args:
        root: output folder (created).
        count: number of good images.
        seed: image ``i`` is drawn from ``SeedSequence([seed, i])``, independent of ``count``.
        sizes: (height, width) choices, drawn uniformly; default :data:`DEFAULT_SIZES` with realistic weights.
        include_bad: also write :data:`BAD_FILES` and :data:`IGNORED_FILES`.

    Returns:
        every path written, good images first (in index order), then the bad and ignored files.
    """
    if count < 0:
        raise ValueError(f"generate_dataset: expected count >= 0, got {count}; pass the number of images")
    if sizes is not None and (not sizes or any(len(s) != 2 or min(s) <= 0 for s in sizes)):
        raise ValueError(f"generate_dataset: expected sizes as a non-empty list of (height, width), got {sizes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kinds = list(FILE_KINDS)
    written: list[Path] = []
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        kind = kinds[i] if i < len(kinds) else _pick(rng, kinds, [_KIND_WEIGHTS[k] for k in kinds])
        if sizes is not None:
            height, width = _pick(rng, list(sizes), [1.0] * len(sizes))
        else:
            height, width = _pick(rng, DEFAULT_SIZES, _SIZE_WEIGHTS)
        ext, bits, channels, options = FILE_KINDS[kind]
        scene = make_scene(height, width, rng)
        if channels == 3:
            pixels = colormap(scene)
        elif bits == 16:
            pixels = to_counts16(scene, rng)
        else:
            pixels = np.round(scene * 255).astype(np.uint8)
        folder = _SUBFOLDERS[i % len(_SUBFOLDERS)]
        written.append(write_image(root / folder / f"ir_{i:05d}_{kind}{ext}", pixels, **options))
    if include_bad:
        written.extend(_write_bad_files(root, np.random.default_rng(np.random.SeedSequence([seed, 2**31]))))
    logger.info("wrote %d synthetic images%s under %s", count, " and bad files" if include_bad else "", root)
    return written
