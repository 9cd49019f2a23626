"""Image file reading for the reference data path, at the file's true bit depth.

Legend: H, W = image height and width in pixels; C = channels (1 or 3).

``read_image(path)`` returns an ``[H, W, C]`` numpy array, ``uint8`` for 8-bit files and ``uint16``
for 16-bit files, bit-exact. It never converts through a mode that saturates or truncates 16-bit data
(the released InfMAE code used ``convert('RGB')``, which turns a 16-bit thermal image white).

Pillow modes and what they become:

=============  ==========================================================================
Pillow mode    result
=============  ==========================================================================
``L``          uint8, C=1
``LA``         uint8, C=1 (alpha dropped)
``1``          uint8, C=1, values 0 / 255
``P`` / ``PA`` uint8, C=1 when the palette is gray, else C=3 (alpha dropped)
``RGB``        uint8, C=3
``RGBA``       uint8, C=3 (alpha dropped); ``RGBX``, ``CMYK``, ``YCbCr`` are converted to RGB
``I;16*``      uint16, C=1 (little, big or native endian, bit-exact)
``I``          uint16, C=1 when every value lies in [0, 65535] (Pillow uses ``I`` for some
               16-bit files); otherwise an error: 32-bit integer data has no defined mapping
``F``          error: 32-bit float data (e.g. temperatures) has no defined mapping to [0, 1]
=============  ==========================================================================

Files with 16 bits per sample and 3 channels are a special case: Pillow decodes them into its 8-bit
``RGB`` mode, silently dropping the low byte. A TIFF of that kind is read with ``tifffile`` instead
(uncompressed, deflate and packbits; LZW needs ``pip install imagecodecs``); a PNG of that kind is
reported as unreadable rather than decoded wrongly.

EXIF orientation is not applied (neither did the released loader): pixels come in stored order.

Every failure (empty file, not an image, truncated body, undecodable strips, unsupported mode) raises
:class:`ImageReadError` with the path and a human-readable reason. ``img.load()`` runs inside the
``try`` so a truncated file fails here, not later, and Pillow's ``LOAD_TRUNCATED_IMAGES`` is forced
off (a truncated file decoded with gray padding would be a silently wrong batch).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TIFF_FORMATS = ("TIFF",)


class ImageReadError(Exception):
    """A file could not be read as an image.

    Attributes:
        path: the file's path, as given.
        reason: a short human-readable reason, e.g. ``"empty file (0 bytes)"``.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def _ensure_truncated_images_off() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; setting it to False so truncated files "
            "are reported and skipped instead of decoded with padding"
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot stat file ({exc.strerror or exc})") from None
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"too many pixels for Pillow's safety limit ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any header failure is a bad file
        raise ImageReadError(path, f"unreadable header ({type(exc).__name__}: {exc})") from None


def _raw_mode(img: Image.Image) -> str:
    """The decoder's raw mode of the first tile (e.g. ``'RGB;16B'``), or ``''`` when unknown."""
    tile = getattr(img, "tile", None) or []
    if not tile:
        return ""
    args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def read_image_header(path: str | os.PathLike) -> tuple[int, int, str]:
    """Read a file's size and Pillow mode without decoding pixels: ``(width, height, mode)``.

    Raises:
        ImageReadError: as :func:`read_image_info`.
    """
    info = read_image_info(path)
    return info.width, info.height, info.mode


_GRAY_MODES = ("L", "LA", "1", "I", "F") + _SIXTEEN_BIT_MODES


def _is_wide_colour(mode: str, raw_mode: str) -> bool:
    """16 bits per sample decoded by Pillow into an 8-bit colour mode (it drops the low byte)."""
    return ";16" in raw_mode and mode not in _SIXTEEN_BIT_MODES and mode != "I"


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, without decoding pixels.

    Attributes:
        width, height: size in pixels.
        channels: 1 for gray modes, 3 otherwise (a palette image counts as colour here; :func:`read_image`
            returns it gray when its palette is gray, which is the same pixels either way).
        bits: 16 for 16-bit samples (gray ``I;16*``/``I`` and 16-bit colour TIFF), else 8.
        mode: Pillow's mode string.
    """

    width: int
    height: int
    channels: int
    bits: int
    mode: str


def read_image_info(path: str | os.PathLike) -> ImageInfo:
    """Read a file's size, channels and bit depth from its header (no pixel decode).

    Raises:
        ImageReadError: empty file, not an image, an unreadable header, or a file :func:`read_image`
            refuses by its header alone (16-bit colour PNG, which Pillow would truncate to 8 bits).
    """
    path = Path(path)
    _check_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = _open(path)
        with img:
            width, height = img.size
            mode, fmt, raw_mode = img.mode, img.format, _raw_mode(img)
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"invalid size {width}x{height}")
    wide_colour = _is_wide_colour(mode, raw_mode)
    if wide_colour and fmt not in _TIFF_FORMATS:
        raise ImageReadError(
            path,
            f"16-bit colour {fmt} (raw mode {raw_mode}) would be truncated to 8 bits by Pillow; "
            "convert it to 16-bit grayscale",
        )
    bits = 16 if (wide_colour or mode in _SIXTEEN_BIT_MODES or mode == "I") else 8
    channels = 1 if mode in _GRAY_MODES else 3
    return ImageInfo(width=width, height=height, channels=channels, bits=bits, mode=mode)


def _read_tiff_with_tifffile(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        raise ImageReadError(
            path, "16-bit colour TIFF needs tifffile (Pillow truncates it to 8 bits): pip install tifffile"
        ) from None
    try:
        array = tifffile.imread(path, key=0)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"16-bit colour TIFF undecodable by tifffile ({exc})") from None
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint16:
        raise ImageReadError(
            path, f"16-bit colour TIFF with unsupported layout shape={array.shape} dtype={array.dtype}"
        )
    return np.ascontiguousarray(array[..., :3])


def _to_array(path: Path, img: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image to an [H, W, C] uint8/uint16 array (see the module table)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # np.asarray gives '<u2' or '>u2'; astype makes it native-endian uint16 (a copy only if needed)
        return np.asarray(img).astype(np.uint16, copy=False)[..., None]
    if mode == "I":
        array = np.asarray(img)
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageReadError(
                path,
                f"32-bit integer image with values {lo}..{hi} outside the 16-bit range; save it as 16-bit PNG/TIFF",
            )
        return array.astype(np.uint16)[..., None]
    if mode == "F":
        raise ImageReadError(
            path, "32-bit float image (mode F) has no defined mapping to [0, 1]; save it as 16-bit PNG/TIFF"
        )
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)[..., None]
    if mode == "LA":
        return np.asarray(img.getchannel("L"), dtype=np.uint8)[..., None]
    if mode == "1":
        return (np.asarray(img, dtype=bool).astype(np.uint8) * 255)[..., None]
    if mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., :1])
        return rgb
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    raise ImageReadError(path, f"unsupported Pillow mode {mode!r}")


_STDERR_LOCK = threading.Lock()


@contextmanager
def _native_stderr_captured():
    """Capture what native code writes to file descriptor 2 meanwhile: libtiff (inside Pillow) prints its
    warnings and errors there ('tempfile.tif: Using code not yet in table.'), outside any log. Yields a
    list that holds the captured text afterwards. One capture at a time per process (the lock), since
    descriptor 2 is shared by every thread."""
    captured: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace").strip())


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file at its true bit depth.

    Args:
        path: a PNG, TIFF, JPEG or BMP file (any format Pillow identifies is tried).

    Returns:
        ``[H, W, C]`` array, C in {1, 3}, dtype ``uint8`` (8-bit files) or ``uint16`` (16-bit files,
        bit-exact). Alpha channels are dropped.

    Raises:
        ImageReadError: with ``.path`` and ``.reason`` for any failure (empty, not an image, truncated,
            corrupt body, unsupported mode).
    """
    path = Path(path)
    _ensure_truncated_images_off()
    _check_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns on odd EXIF; the decode result is what counts
        img = _open(path)
        with img:
            raw_mode = _raw_mode(img)
            if _is_wide_colour(img.mode, raw_mode):
                if img.format in _TIFF_FORMATS:
                    return _read_tiff_with_tifffile(path)
                raise ImageReadError(
                    path,
                    f"16-bit colour {img.format} (raw mode {raw_mode}) would be truncated to 8 bits "
                    "by Pillow; convert it to 16-bit grayscale",
                )
            native = _native_stderr_captured() if img.format in _TIFF_FORMATS else nullcontext([""])
            try:
                with native as said:
                    img.load()
            except Exception as exc:  # noqa: BLE001 - truncated/corrupt body, decoder errors
                detail = f"; libtiff: {' '.join(said[0].split())}" if said and said[0] else ""
                raise ImageReadError(path, f"cannot decode pixels ({type(exc).__name__}: {exc}{detail})") from None
            if said and said[0]:
                logger.debug("%s: libtiff said: %s", path, said[0])
            array = _to_array(path, img)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(path, f"decoded to an empty or malformed array of shape {array.shape}")
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")  # Pillow's buffers are read-only; hand out an owned array
    return array
