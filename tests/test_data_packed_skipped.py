"""Files `infmae pack` leaves out (unreadable, or too small: both sides under --min-size, 20 px by default)
are recorded in pack.json and reach a dataset opened on the pack as ``dropped`` under their SOURCE paths,
so a run on a pack lists them in skipped_files.tsv as a run on the folder would; older packs still load."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from infmae.cli import main
from infmae.data import ImageFolderDataset, read_image, scan_folder
from infmae.data.packed import PackedReader, pack_dataset
from infmae.data.synthetic import write_image

GOOD = {"a.png": (32, 40), "sub/b.png": (24, 21), "sub/c.tif": (40, 19)}  # (height, width); c: one side >= 20


@pytest.fixture
def src(tmp_path):
    """Three good images, one 10x10 image and one file that is not an image."""
    rng = np.random.default_rng(11)
    root = tmp_path / "src"
    for rel, (height, width) in GOOD.items():
        dtype = np.uint16 if rel.endswith(".tif") else np.uint8
        write_image(root / rel, rng.integers(0, np.iinfo(dtype).max, (height, width), dtype=dtype))
    write_image(root / "tiny.png", rng.integers(0, 256, (10, 10), dtype=np.uint8))
    (root / "sub/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    return root


def _dataset(root, **options):
    return ImageFolderDataset(root, img_size=(16, 16), in_chans=1, seed=0, **options)


def test_pack_lists_unreadable_and_tiny_files_with_reasons(src, tmp_path):
    info = pack_dataset(scan_folder(src), src, tmp_path / "pack", workers=1)
    reasons = dict(info["skipped"])
    assert set(reasons) == {"tiny.png", "sub/corrupt.png"}
    assert reasons["tiny.png"] == "too_small: 10x10 has both sides under 20 px"
    assert reasons["sub/corrupt.png"].startswith("unreadable: ")
    assert info["count"] == len(GOOD) and info["min_size"] == 20 and info["root"] == str(src)
    saved = json.loads((tmp_path / "pack" / "pack.json").read_text())
    assert [tuple(item) for item in saved["skipped"]] == [tuple(item) for item in info["skipped"]]
    reader = PackedReader(tmp_path / "pack")  # the images that were packed are unchanged
    assert sorted(e.path for e in reader.entries) == sorted(GOOD)
    for i, entry in enumerate(reader.entries):
        np.testing.assert_array_equal(reader.read(i), read_image(src / entry.path), err_msg=entry.path)
        assert (entry.source_height, entry.source_width) == GOOD[entry.path]


def test_a_dataset_on_the_pack_reports_them_under_their_source_paths(src, tmp_path):
    pack_dataset(scan_folder(src), src, tmp_path / "pack", workers=1)
    on_pack = _dataset(tmp_path / "pack")
    on_files = _dataset(src)
    assert sorted(on_pack.paths) == sorted(on_files.paths) == sorted(GOOD)
    # the same paths and reasons a run on the folder reports (the folder dataset reads headers only, so
    # the readers' wording of "unreadable" may differ; the path and the kind of reason may not)
    assert (
        dict(on_pack.dropped).keys()
        == dict(on_files.dropped).keys()
        == {str(src / "tiny.png"), str(src / "sub/corrupt.png")}
    )
    dropped = dict(on_pack.dropped)
    assert dropped[str(src / "tiny.png")] == dict(on_files.dropped)[str(src / "tiny.png")]
    assert dropped[str(src / "sub/corrupt.png")].startswith("unreadable: ")


def test_min_size_flag_and_the_datasets_own_min_size(src, tmp_path, caplog):
    assert main(["pack", str(src), "-o", str(tmp_path / "all"), "--workers", "1", "--min-size", "0"]) == 0
    info = json.loads((tmp_path / "all" / "pack.json").read_text())
    assert info["min_size"] == 0 and [p for p, _ in info["skipped"]] == ["sub/corrupt.png"]
    # the pack holds the 10x10 image; a dataset with min_size 20 drops it, naming the source file
    dataset = _dataset(tmp_path / "all")
    assert dict(dataset.dropped)[str(src / "tiny.png")] == "too_small: 10x10 has both sides under 20 px"
    assert "tiny.png" not in dataset.paths
    assert "tiny.png" in _dataset(tmp_path / "all", min_size=8).paths
    # a pack written with a larger min size than the dataset's: its left-out images are reported, with a hint
    assert main(["pack", str(src), "-o", str(tmp_path / "big"), "--workers", "1", "--min-size", "30"]) == 0
    with caplog.at_level(logging.WARNING, logger="infmae.data.folder"):
        dataset = _dataset(tmp_path / "big")
    assert sorted(dataset.paths) == ["a.png", "sub/c.tif"]
    assert dict(dataset.dropped)[str(src / "sub/b.png")] == "too_small: 21x24 has both sides under 30 px"
    assert "written with --min-size 30, above min_size=20" in caplog.text


def test_the_source_size_decides_not_the_capped_copy(tmp_path):
    src = tmp_path / "src"
    write_image(src / "strip.png", np.random.default_rng(0).integers(0, 256, (12, 200), dtype=np.uint8))
    write_image(src / "ok.png", np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8))
    info = pack_dataset(scan_folder(src), src, tmp_path / "pack", workers=1, max_side=16)
    assert info["count"] == 2 and not info["skipped"]
    dataset = _dataset(tmp_path / "pack")
    assert dataset.sizes[dataset.paths.index("strip.png")] == (16, 1)  # the stored copy: both sides under 20
    assert sorted(dataset.paths) == ["ok.png", "strip.png"] and not dataset.dropped


def test_an_older_pack_without_the_record_loads_with_nothing_skipped(src, tmp_path):
    pack_dataset(scan_folder(src), src, tmp_path / "pack", workers=1)
    meta = tmp_path / "pack" / "pack.json"
    info = json.loads(meta.read_text())
    del info["root"], info["min_size"]
    info["skipped"] = [[rel, reason.split(": ", 1)[1]] for rel, reason in info["skipped"]]  # as written then
    meta.write_text(json.dumps(info))
    dataset = _dataset(tmp_path / "pack")
    assert sorted(dataset.paths) == sorted(GOOD) and dataset.dropped == []
    assert PackedReader(tmp_path / "pack").skipped == []


def test_a_run_on_the_pack_lists_them_in_skipped_files(src, tmp_path):
    pack = tmp_path / "pack"
    assert main(["pack", str(src), "-o", str(pack), "--workers", "1"]) == 0
    run = tmp_path / "run"
    overrides = ["train.max_steps=1", "train.batch_size=2", "data.num_workers=0", "data.val_fraction=0"]
    code = main(
        ["pretrain", "--preset", "demo", "--data", str(pack), "--output", str(run)]
        + sum((["--set", o] for o in overrides), [])
    )
    assert code == 0
    rows = dict(line.split("\t", 1) for line in (run / "skipped_files.tsv").read_text().splitlines())
    assert rows.keys() == {str(src / "tiny.png"), str(src / "sub/corrupt.png")}
    assert rows[str(src / "tiny.png")].startswith("too_small: ")
    assert rows[str(src / "sub/corrupt.png")].startswith("unreadable: ")
