"""ImageFolderDataset: scan and drop, manifest, substitution of undecodable files, determinism, colour."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch

from infmae.data.folder import ImageFolderDataset
from infmae.data.io import read_image
from infmae.data.mapping import image_range, to_unit_float
from infmae.data.synthetic import BAD_FILES, FILE_KINDS, IGNORED_FILES, generate_dataset, write_image
from infmae.data.transforms import AugmentParams, apply_augment

SIZES = [(40, 56), (64, 48), (30, 90), (72, 72)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ir")
    generate_dataset(root, 24, seed=5, sizes=SIZES, include_bad=True)
    return root


def _dataset(root, **overrides):
    options = dict(img_size=(32, 48), in_chans=3, seed=17)
    options.update(overrides)
    return ImageFolderDataset(root, **options)


def test_scan_drops_bad_headers_and_tiny_images_with_reasons(data_root, caplog):
    with caplog.at_level(logging.WARNING, logger="infmae.data.folder"):
        dataset = _dataset(data_root)
    dropped = {path: reason for path, reason in dataset.dropped}
    assert set(dropped) == {str(data_root / BAD_FILES[k]) for k in ("zero_byte", "text_as_jpg", "tiny")}
    assert "empty file" in dropped[str(data_root / BAD_FILES["zero_byte"])]
    assert "not an image" in dropped[str(data_root / BAD_FILES["text_as_jpg"])]
    assert "too_small" in dropped[str(data_root / BAD_FILES["tiny"])]
    for path in dropped:
        assert any(path in record.getMessage() for record in caplog.records)
    # 24 good images + the two whose header reads but whose body does not; hidden and .txt ignored
    assert len(dataset) == 26
    assert dataset.paths == sorted(dataset.paths)
    assert BAD_FILES["truncated_png"] in dataset.paths and BAD_FILES["corrupt_tiff16"] in dataset.paths
    assert not set(IGNORED_FILES) & set(dataset.paths)
    assert any(p.endswith(".BMP") for p in dataset.paths)  # extensions match without case
    assert all("\\" not in p for p in dataset.paths)


@pytest.mark.parametrize("kind", ["truncated_png", "corrupt_tiff16"])
def test_undecodable_file_is_substituted_with_reason(data_root, caplog, kind):
    dataset = _dataset(data_root)
    bad = dataset.paths.index(BAD_FILES[kind])
    with caplog.at_level(logging.WARNING, logger="infmae.data.folder"):
        image, index, skipped = dataset[bad]
        again = dataset[bad]
    assert index != bad and skipped and skipped[0][0] == str(data_root / BAD_FILES[kind])
    assert "cannot decode pixels" in skipped[0][1]
    # the substitute is the next readable position, and the sample is exactly that position's sample
    expected_image, expected_index, expected_skipped = dataset[index]
    assert expected_skipped == [] and expected_index == index
    assert all(dataset.paths[p % len(dataset)] in {BAD_FILES[k] for k in BAD_FILES} for p in range(bad, index))
    torch.testing.assert_close(image, expected_image, rtol=0, atol=0)
    torch.testing.assert_close(again[0], image, rtol=0, atol=0)
    assert again[1] == index and again[2] == skipped
    warnings = [r for r in caplog.records if str(data_root / BAD_FILES[kind]) in r.getMessage()]
    assert len(warnings) == 1  # once per file
    assert str(data_root / BAD_FILES[kind]) in dataset.unreadable


def test_consecutive_unreadable_files_raise_naming_them(tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)  # not decodable
    write_image(tmp_path / "good.png", np.full((30, 30), 9, np.uint8))
    good = write_image(tmp_path / "zz.png", np.arange(900, dtype=np.uint8).reshape(30, 30))
    data = good.read_bytes()
    for i in range(3):
        (tmp_path / f"cut{i}.png").write_bytes(data[: len(data) // 2])
    dataset = _dataset(tmp_path, max_substitutions=2)
    assert {p for p, _ in dataset.dropped} == {str(tmp_path / f"bad{i}.png") for i in range(3)}
    with pytest.raises(RuntimeError, match=r"2 consecutive files .*cut0\.png .*cut1\.png"):
        dataset[dataset.paths.index("cut0.png")]


def test_augmentation_is_a_function_of_seed_epoch_and_index(data_root):
    a = _dataset(data_root)
    b = _dataset(data_root)
    torch.manual_seed(0)
    first = [a[i][0] for i in (3, 0, 7)]
    torch.manual_seed(999)  # the global RNG plays no part
    second = [b[i][0] for i in (3, 0, 7)]  # another object, another order of reads
    for x, y in zip(first, second):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    b.set_epoch(1)
    assert not torch.equal(b[3][0], first[0])
    b.set_epoch(0)
    torch.testing.assert_close(b[3][0], first[0], rtol=0, atol=0)
    assert not torch.equal(_dataset(data_root, seed=18)[3][0], first[0])
    # across epochs the crops vary (some crops differ among 5 epochs)
    params = {a.augment_params(3, 200, 300, epoch=e) for e in range(5)}
    assert len(params) == 5


def test_sample_uses_the_whole_image_range_and_the_documented_pipeline(data_root):
    dataset = _dataset(data_root, in_chans=1)
    index = next(i for i, p in enumerate(dataset.paths) if "png16" in p)
    array = read_image(dataset.path(index))
    assert array.dtype == np.uint16
    params = dataset.augment_params(index, array.shape[0], array.shape[1])
    full01 = to_unit_float(array, "percentile", 0.5, 99.5)
    expected = apply_augment(full01, params, (32, 48), 0.425, 0.2)
    image, got_index, skipped = dataset[index]
    assert got_index == index and skipped == []
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)
    assert image.shape == (1, 32, 48) and image.dtype == torch.float32
    # mapping the crop with its own range instead (the wrong rule) gives another sample
    crop = array[params.top : params.top + params.height, params.left : params.left + params.width]
    assert image_range(crop) != image_range(array)
    local = AugmentParams(0, 0, params.height, params.width, params.flip)
    wrong = apply_augment(to_unit_float(crop), local, (32, 48), 0.425, 0.2)
    assert (wrong - image).abs().max() > 0.05


def test_colour_handling(data_root):
    rgb_index = next(i for i, p in enumerate(_dataset(data_root).paths) if "png_rgb8" in p)
    gray_index = next(i for i, p in enumerate(_dataset(data_root).paths) if "png8" in p)
    colour3 = _dataset(data_root, in_chans=3)[rgb_index][0]
    colour1 = _dataset(data_root, in_chans=1)[rgb_index][0]
    assert colour3.shape == (3, 32, 48) and colour1.shape == (1, 32, 48)
    assert not torch.equal(colour3[0], colour3[1])  # stays RGB
    # gray = mean of the channels (up to the resize's clamp), in the normalised domain too
    torch.testing.assert_close(colour1[0], colour3.mean(0), rtol=0, atol=2e-2)
    assert _dataset(data_root, in_chans=3)[gray_index][0].shape == (1, 32, 48)  # expanded on the device
    # per-channel statistics that differ: gray must be repeated before normalising
    per_channel = _dataset(data_root, in_chans=3, mean=(0.4, 0.45, 0.5), std=(0.2, 0.2, 0.2))[gray_index][0]
    assert per_channel.shape == (3, 32, 48)
    torch.testing.assert_close(per_channel[1] - per_channel[0], torch.full((32, 48), -0.25), rtol=0, atol=1e-5)


def test_manifest_with_and_without_base(data_root, tmp_path):
    full = _dataset(data_root)
    keep = full.paths[:6]
    rows = [{"path": p, "status": "keep", "reason": "", "width": "", "height": ""} for p in keep]
    rows.insert(2, {"path": full.paths[6], "status": "drop", "reason": "near_duplicate", "width": "", "height": ""})
    out = tmp_path / "curated"
    out.mkdir()
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dataset = _dataset(manifest, base=data_root)
    assert dataset.paths == keep and dataset.dropped == []
    torch.testing.assert_close(dataset[4][0], full[4][0], rtol=0, atol=0)
    # without base, paths are relative to the CSV's folder: here they do not exist there
    with pytest.raises(ValueError, match="expected at least one readable image"):
        _dataset(manifest)
    bad = out / "bad.csv"
    bad.write_text("file,keep\na.png,1\n")
    with pytest.raises(ValueError, match=r"expected manifest columns \('path', 'status'\)"):
        _dataset(bad, base=data_root)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"expected at least one readable image \(.png, .tif"):
        _dataset(tmp_path)
    with pytest.raises(ValueError, match="expected an image folder, a manifest .csv or a pack folder, got .*missing"):
        _dataset(tmp_path / "missing")
    write_image(tmp_path / "a.png", np.zeros((30, 30), np.uint8))
    with pytest.raises(ValueError, match="expected in_chans 1 or 3, got 2"):
        _dataset(tmp_path, in_chans=2)
    with pytest.raises(ValueError, match="sixteen_bit_mode"):
        _dataset(tmp_path, sixteen_bit_mode="log")
    with pytest.raises(IndexError):
        _dataset(tmp_path)[5]
    assert set(FILE_KINDS)  # the kinds the fixture wrote are the generator's
