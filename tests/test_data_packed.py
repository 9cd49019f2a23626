"""`infmae pack`: lossless round trip for every format and bit depth, the cap, atomic output, and the
reference loader reading a pack exactly as it reads the files."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from infmae.cli import main
from infmae.data import ImageFolderDataset, ReferenceLoader, generate_dataset, read_image, scan_folder
from infmae.data.packed import CHUNK_BYTES, PackedReader, cap_longer_side, chunk_layout, is_pack, pack_dataset
from infmae.data.synthetic import write_image


def format_zoo(root):
    """One file per format x bit depth x channels, incl. the extreme sizes 40x23 and 6912x1024."""
    rng = np.random.default_rng(7)
    g8 = rng.integers(0, 256, (23, 40), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (64, 80), dtype=np.uint16)
    wide16 = rng.integers(7000, 9000, (1024, 6912), dtype=np.uint16)
    c8 = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
    write_image(root / "g8.png", g8)
    write_image(root / "g16.png", g16)
    write_image(root / "wide16.png", wide16, compress_level=1)
    write_image(root / "g16_raw.tif", g16)
    write_image(root / "g16_lzw.tif", g16, compression="tiff_lzw")
    write_image(root / "g16_deflate.tiff", g16, compression="tiff_adobe_deflate")
    write_image(root / "g8.jpg", g8, quality=90)
    write_image(root / "c8.jpeg", c8, quality=90)
    write_image(root / "g8.BMP", g8)
    write_image(root / "c8.png", c8)
    import tifffile

    tifffile.imwrite(root / "c16.tif", rng.integers(0, 65536, (30, 50, 3), dtype=np.uint16), photometric="rgb")
    return root


def test_pack_round_trip_is_exact_for_every_format(tmp_path):
    src = format_zoo(tmp_path / "src")
    files = scan_folder(src)
    info = pack_dataset(files, src, tmp_path / "pack", workers=2)
    assert info["count"] == len(files) == 11 and not info["skipped"]
    reader = PackedReader(tmp_path / "pack")
    for i, entry in enumerate(reader.entries):
        expected = read_image(src / entry.path)
        got = reader.read(i)
        assert got.dtype == expected.dtype and got.shape == expected.shape, entry.path
        np.testing.assert_array_equal(got, expected, err_msg=entry.path)
    wide = next(e for e in reader.entries if e.path == "wide16.png")
    # a 14 MB frame is cut into equal <= 1 MiB chunks so the GPU can inflate it in parallel
    assert len(wide.chunk_sizes) == chunk_layout(1024 * 6912 * 2)[0] > 1 and wide.chunk_len <= CHUNK_BYTES


def test_pack_stores_the_reference_range(tmp_path):
    from infmae.data.mapping import SixteenBitMapping, image_range

    src = format_zoo(tmp_path / "src")
    pack_dataset(scan_folder(src), src, tmp_path / "pack", workers=1, mapping=SixteenBitMapping(low=1.0, high=99.0))
    reader = PackedReader(tmp_path / "pack")
    assert reader.mapping == SixteenBitMapping("percentile", 1.0, 99.0)
    for i, entry in enumerate(reader.entries):
        assert (entry.lo, entry.hi) == image_range(reader.read(i), "percentile", 1.0, 99.0), entry.path


def test_cap_longer_side_is_lossy_only_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 65536, (100, 300, 1), dtype=np.uint16)
    assert cap_longer_side(big, 300) is big
    capped = cap_longer_side(big, 150)
    assert capped.shape == (50, 150, 1) and capped.dtype == np.uint16
    src = tmp_path / "src"
    write_image(src / "a.png", big[..., 0])
    pack_dataset(["a.png"], src, tmp_path / "pack", max_side=150, workers=1)
    np.testing.assert_array_equal(PackedReader(tmp_path / "pack").read(0), capped)


def test_pack_skips_bad_files_and_never_leaves_half_a_pack(tmp_path):
    src = tmp_path / "src"
    generate_dataset(src, 12, seed=3, include_bad=True)
    out = tmp_path / "pack"
    info = pack_dataset(scan_folder(src), src, out, workers=2)
    reasons = dict(info["skipped"])
    assert {
        "cam_a/seq02/ir_truncated.png",
        "cam_b/empty.png",
        "cam_b/notes_not_an_image.jpg",
        "cam_b/day2/corrupt_body16.tif",
    } <= set(reasons)
    assert is_pack(out) and not (tmp_path / "pack.partial").exists()
    with pytest.raises(FileExistsError, match="remove it or choose another"):
        pack_dataset(scan_folder(src), src, out, workers=1)


def test_damaged_shard_is_a_read_error(tmp_path):
    from infmae.data.io import ImageReadError

    src = tmp_path / "src"
    write_image(src / "a.png", np.random.default_rng(0).integers(0, 65536, (64, 64), dtype=np.uint16))
    pack_dataset(["a.png"], src, tmp_path / "pack", workers=1)
    shard = tmp_path / "pack" / "shard-00000.bin"
    shard.write_bytes(b"\xff" * shard.stat().st_size)
    with pytest.raises(ImageReadError, match="damaged pack: CRC-32"):
        PackedReader(tmp_path / "pack").read(0)
    # without a stored checksum (a pack of another writer), LZ4's own error is the report
    reader = PackedReader(tmp_path / "pack")
    reader.entries[0] = dataclasses.replace(reader.entries[0], crc32=None)
    with pytest.raises(ImageReadError, match="damaged packed chunk"):
        reader.read(0)


def test_a_changed_byte_that_lz4_inflates_is_caught_by_the_checksum(tmp_path):
    """LZ4 inflates a block with one literal byte changed without an error (the GPU's inflate too): the
    stored CRC-32 is what tells both loaders the image is not the packed one."""
    import lz4.block

    from infmae.data.io import ImageReadError

    src = tmp_path / "src"
    write_image(src / "a.png", np.random.default_rng(0).integers(0, 65536, (64, 64), dtype=np.uint16))
    pack_dataset(["a.png"], src, tmp_path / "pack", workers=1)
    entry = PackedReader(tmp_path / "pack").entries[0]
    shard = tmp_path / "pack" / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    middle = entry.offset + entry.chunk_sizes[0] // 2  # inside the literals of random pixels
    data[middle] ^= 0x01
    shard.write_bytes(bytes(data))
    chunk = bytes(data[entry.offset : entry.offset + entry.chunk_sizes[0]])
    damaged = lz4.block.decompress(chunk, uncompressed_size=entry.chunk_len)  # no error from LZ4 itself
    assert len(damaged) == entry.chunk_len
    reader = PackedReader(tmp_path / "pack")
    with pytest.raises(ImageReadError, match="damaged pack: CRC-32"):
        reader.read(0)  # the CPU path (reference loader, DALI in CPU mode)
    with pytest.raises(ImageReadError, match="damaged pack: CRC-32"):
        reader.compressed(0)  # the bytes the GPU path hands to DALI's inflate


def test_reference_loader_on_a_pack_equals_the_files(tmp_path):
    src = tmp_path / "src"
    generate_dataset(src, 24, seed=5, include_bad=True)
    pack_dataset(scan_folder(src), src, tmp_path / "pack", workers=2)
    kwargs = dict(img_size=(32, 32), in_chans=3, seed=11)
    on_files = ImageFolderDataset(src, **kwargs)
    on_pack = ImageFolderDataset(tmp_path / "pack", **kwargs)
    # the pack holds the decodable files only; compare position by position on the shared paths
    assert set(on_pack.paths) <= set(on_files.paths)
    for position, rel in enumerate(on_pack.paths):
        file_position = on_files.paths.index(rel)
        a = on_files.transform(on_files.load(file_position), position)
        b = on_pack.transform(on_pack.load(position), position)
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=rel)
    batches = list(ReferenceLoader(on_pack, batch_size=4, seed=1).iter_epoch(0))
    assert len(batches) == len(on_pack) // 4 and all(not b.skipped for b in batches)


@pytest.mark.slow
def test_cli_pack_from_a_manifest_and_pretrain_reads_it(tmp_path):
    src = tmp_path / "src"
    generate_dataset(src, 10, seed=2, include_bad=False)
    manifest = tmp_path / "manifest.csv"
    rows = ["path,status"] + [
        f"{p},{'keep' if i % 2 == 0 else 'near_duplicate'}" for i, p in enumerate(scan_folder(src))
    ]
    manifest.write_text("\n".join(rows) + "\n")
    assert main(["pack", str(manifest), "--data-root", str(src), "-o", str(tmp_path / "pack"), "--workers", "1"]) == 0
    info = json.loads((tmp_path / "pack" / "pack.json").read_text())
    assert info["count"] == 5
    assert main(["pack", str(manifest), "-o", str(tmp_path / "pack")]) == 2  # exists: a clear error, exit 2
    out = tmp_path / "run"
    code = main(
        [
            "pretrain",
            "--preset",
            "demo",
            "--data",
            str(tmp_path / "pack"),
            "--output",
            str(out),
            "--set",
            "train.max_steps=1",
            "--set",
            "train.batch_size=4",
            "--set",
            "data.num_workers=0",
        ]
    )
    assert code == 0
    assert (out / "metrics.jsonl").read_text().count("\n") >= 1
