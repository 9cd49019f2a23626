"""read_image / read_image_header: bit-exact round trips per format, and every bad-file kind reported."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from infmae.data.io import IMAGE_EXTENSIONS, ImageReadError, read_image, read_image_header
from infmae.data.synthetic import make_scene, to_counts16, write_image


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _gray8(rng, h=37, w=53):
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def _gray16(rng, h=37, w=53):
    # full 16-bit range, so any truncation to 8 bits or any byte-order slip changes values
    return rng.integers(0, 65536, (h, w), dtype=np.uint16)


@pytest.mark.parametrize(
    "name, kind, options",
    [
        ("a.png", "gray8", {}),
        ("a.png", "gray16", {}),
        ("a.png", "rgb8", {}),
        ("a.tif", "gray16", {}),
        ("a.tif", "gray16", {"compression": "tiff_lzw"}),
        ("a.tiff", "gray16", {"compression": "tiff_adobe_deflate"}),
        ("a.tif", "gray8", {"compression": "tiff_lzw"}),
        ("a.tif", "rgb8", {}),
        ("a.bmp", "gray8", {}),
        ("a.BMP", "rgb8", {}),
    ],
)
def test_round_trip_is_bit_exact(tmp_path, rng, name, kind, options):
    pixels = {
        "gray8": lambda: _gray8(rng),
        "gray16": lambda: _gray16(rng),
        "rgb8": lambda: rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
    }[kind]()
    path = write_image(tmp_path / name, pixels, **options)
    out = read_image(path)
    expected = pixels if pixels.ndim == 3 else pixels[..., None]
    assert out.dtype == expected.dtype
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    assert out.flags.writeable and out.flags.c_contiguous
    width, height, _ = read_image_header(path)
    assert (height, width) == pixels.shape[:2]


def test_sixteen_bit_big_endian_tiff(tmp_path, rng):
    pixels = _gray16(rng)
    path = tmp_path / "be.tif"
    Image.fromarray(pixels.astype(">u2")).save(path)
    assert read_image_header(path)[2] == "I;16B"
    out = read_image(path)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out[..., 0], pixels)


def test_sixteen_bit_colour_tiff_read_with_tifffile(tmp_path, rng):
    tifffile = pytest.importorskip("tifffile", reason="optional: 16-bit colour TIFF support (pip install tifffile)")
    pixels = rng.integers(0, 65536, (21, 34, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, pixels, photometric="rgb")
    out = read_image(path)
    assert out.dtype == np.uint16  # Pillow alone would give 8-bit RGB
    np.testing.assert_array_equal(out, pixels)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def test_sixteen_bit_colour_png_is_refused_not_truncated(tmp_path, rng):
    pixels = rng.integers(0, 65536, (8, 6, 3), dtype=np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 6, 8, 16, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    path = tmp_path / "rgb16.png"
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match="truncated to 8 bits"):
        read_image(path)


def test_jpeg_reads_with_the_right_shape(tmp_path, rng):
    scene = np.round(make_scene(48, 80, rng) * 255).astype(np.uint8)
    out = read_image(write_image(tmp_path / "a.jpg", scene, quality=95))
    assert out.shape == (48, 80, 1) and out.dtype == np.uint8
    assert np.abs(out[..., 0].astype(int) - scene).mean() < 4  # lossy, but the same picture
    rgb = np.stack([scene, 255 - scene, scene // 2], axis=-1)
    out = read_image(write_image(tmp_path / "b.jpeg", rgb, quality=95))
    assert out.shape == (48, 80, 3) and out.dtype == np.uint8


def test_other_pillow_modes(tmp_path, rng):
    gray = _gray8(rng)
    # LA and RGBA: alpha dropped
    Image.fromarray(np.stack([gray, 255 - gray], -1)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[..., 0], gray)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    # 1-bit
    bits = rng.random((9, 7)) > 0.5
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png")[..., 0], bits.astype(np.uint8) * 255)
    # palette: gray palette -> 1 channel, colour palette -> 3 channels
    Image.fromarray(gray).convert("P").save(tmp_path / "pgray.png")
    assert read_image_header(tmp_path / "pgray.png")[2] == "P"
    assert read_image(tmp_path / "pgray.png").shape == (37, 53, 1)
    colour = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(colour).quantize(16).save(tmp_path / "pcolour.png")
    assert read_image(tmp_path / "pcolour.png").shape == (9, 7, 3)
    # mode I with 16-bit content -> uint16; with values beyond 16 bits -> error
    values = _gray16(rng).astype(np.int32)
    Image.fromarray(values).save(tmp_path / "i32.tif")
    assert read_image_header(tmp_path / "i32.tif")[2] == "I"
    out = read_image(tmp_path / "i32.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 0], values)
    values[0, 0] = 70000
    Image.fromarray(values).save(tmp_path / "i32big.tif")
    with pytest.raises(ImageReadError, match="outside the 16-bit range"):
        read_image(tmp_path / "i32big.tif")
    # float images have no defined mapping
    Image.fromarray(rng.random((5, 6)).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="float"):
        read_image(tmp_path / "f.tif")


def test_bad_files_raise_with_a_reason(tmp_path, rng):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    good = write_image(tmp_path / "good.png", _gray8(rng, 120, 160))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    tiff = write_image(tmp_path / "c.tif", to_counts16(make_scene(64, 80, rng), rng), compression="tiff_lzw")
    with Image.open(tiff) as img:
        offset, count = img.tag_v2[273][0], img.tag_v2[279][0]
    data = bytearray(tiff.read_bytes())
    data[offset : offset + count] = bytes(rng.integers(0, 256, count, dtype=np.uint8))
    corrupt = tmp_path / "corrupt16.tif"
    corrupt.write_bytes(bytes(data))

    cases = [(empty, "empty file"), (text, "not an image"), (tmp_path / "missing.png", "cannot stat")]
    for path, reason in cases:
        for reader in (read_image, read_image_header):
            with pytest.raises(ImageReadError) as info:
                reader(path)
            assert info.value.path == str(path)
            assert reason in info.value.reason
    # headers are fine, bodies are not: the header check passes and the decode fails
    for path in (truncated, corrupt):
        read_image_header(path)
        with pytest.raises(ImageReadError, match="cannot decode pixels") as info:
            read_image(path)
        assert info.value.path == str(path)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(truncated)


def test_truncated_images_flag_is_forced_off(tmp_path, rng):
    good = write_image(tmp_path / "good.png", _gray8(rng, 120, 160))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageReadError):
            read_image(truncated)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def test_extensions_and_error_pickles():
    import pickle

    assert IMAGE_EXTENSIONS == (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
    err = pickle.loads(pickle.dumps(ImageReadError("/x.png", "empty file (0 bytes)")))
    assert (err.path, err.reason) == ("/x.png", "empty file (0 bytes)")
