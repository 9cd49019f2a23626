"""The synthetic infrared generator: deterministic, every format and bit depth, realistic scenes."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from infmae.data.io import read_image
from infmae.data.synthetic import BAD_FILES, FILE_KINDS, IGNORED_FILES, generate_dataset, make_scene


def test_make_scene_range_structure_and_determinism():
    scene = make_scene(120, 160, np.random.default_rng(0))
    assert scene.shape == (120, 160) and scene.dtype == np.float32
    assert 0.0 <= scene.min() and scene.max() <= 1.0
    assert scene.std() > 0.05  # not flat
    np.testing.assert_array_equal(scene, make_scene(120, 160, np.random.default_rng(0)))
    assert not np.array_equal(scene, make_scene(120, 160, np.random.default_rng(1)))
    # warm objects: the hottest pixels stand well above the median background
    assert np.percentile(scene, 99.5) - np.median(scene) > 0.2
    assert make_scene(7, 300, np.random.default_rng(2)).shape == (7, 300)
    with pytest.raises(ValueError, match="expected a positive size"):
        make_scene(0, 10, np.random.default_rng(0))


def test_generator_is_deterministic(tmp_path):
    a = generate_dataset(tmp_path / "a", 12, seed=3, sizes=[(48, 64), (40, 30)])
    b = generate_dataset(tmp_path / "b", 12, seed=3, sizes=[(48, 64), (40, 30)])
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa
    c = generate_dataset(tmp_path / "c", 12, seed=4, sizes=[(48, 64), (40, 30)])
    assert sum(pa.read_bytes() != pc.read_bytes() for pa, pc in zip(a[:12], c[:12])) >= 10


def test_generator_writes_every_format(tmp_path):
    paths = generate_dataset(tmp_path, 40, seed=0)
    good = paths[:40]
    assert len({p.parent for p in good}) >= 3  # a few sub-folders
    seen = {}
    for path in good:
        kind = path.stem.split("_", 2)[2]
        seen.setdefault(kind, []).append(path)
        ext, bits, channels, options = FILE_KINDS[kind]
        assert path.suffix == ext
        array = read_image(path)
        assert array.dtype == (np.uint16 if bits == 16 else np.uint8)
        assert array.shape[2] == channels
        if bits == 16:
            assert 7000 <= array.min() and array.max() <= 9500 and np.ptp(array) > 500
        with Image.open(path) as img:
            if ext.lower() in (".tif", ".tiff"):
                compression = {None: 1, "tiff_lzw": 5, "tiff_adobe_deflate": 8}[options.get("compression")]
                assert img.tag_v2[259] == compression
            assert (
                img.format
                == {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[
                    ext.lower()
                ]
            )
    assert set(seen) == set(FILE_KINDS)
    sizes = {read_image(p).shape[:2] for p in good}
    assert len(sizes) >= 5 and any(h != w for h, w in sizes)
    for rel in list(BAD_FILES.values()) + list(IGNORED_FILES):
        assert (tmp_path / rel).exists()
    assert (tmp_path / BAD_FILES["zero_byte"]).stat().st_size == 0
    assert generate_dataset(tmp_path / "clean", 3, include_bad=False)[-1].name.startswith("ir_00002")


def test_generator_is_fast(tmp_path):
    start = time.perf_counter()
    generate_dataset(tmp_path, 64, seed=1, include_bad=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"64 images took {elapsed:.1f} s"  # loose: a shared 2-core CI runner
