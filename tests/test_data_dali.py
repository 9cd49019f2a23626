"""The DALI loader (CPU mode here, the same graph as on a GPU) against the reference loader: the same
batches within the stated tolerance for every format and bit depth, exact uint16 decode, sharding,
resume, and bad files reported and skipped."""

import logging

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.dali
pytest.importorskip("nvidia.dali", reason="DALI is installed by pip install -e '.[dali]' (CI installs it)")

from infmae.cli import main  # noqa: E402
from infmae.data import ImageFolderDataset, ReferenceLoader, generate_dataset, read_image, scan_folder  # noqa: E402
from infmae.data.dali import DaliLoader, decode_file, import_dali  # noqa: E402
from infmae.data.io import ImageReadError  # noqa: E402
from infmae.data.packed import pack_dataset  # noqa: E402

from .helpers import demo_pretrain_args  # noqa: E402
from .test_data_packed import format_zoo  # noqa: E402
from .tolerances import TOLERANCES  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = format_zoo(tmp_path_factory.mktemp("zoo") / "src")
    pack = root.parent / "pack"
    pack_dataset(scan_folder(root), root, pack, workers=1)
    return root, pack


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "src"
    generate_dataset(root, 36, seed=4, include_bad=True)
    pack = root.parent / "pack"
    pack_dataset(scan_folder(root), root, pack, workers=1)
    return root, pack


def _full(images, channels=3):
    return images.expand(-1, channels, -1, -1) if images.shape[1] == 1 else images


def _assert_parity(ref_batch, dali_batch, channels, content=""):
    """Same positions, same shape, and the differences within the table's bounds for this content
    (``""``: IR scenes, ``"_noise"``: uniform noise)."""
    assert dali_batch.indices.tolist() == ref_batch.indices.tolist()
    a, b = _full(ref_batch.images, channels), _full(dali_batch.images, channels)
    assert a.shape == b.shape and b.dtype == torch.float32
    diff = (a - b).abs()
    assert diff.max().item() <= TOLERANCES[("dali_parity_max" + content, torch.float32)][0]
    assert diff.mean().item() <= TOLERANCES[("dali_parity_mean" + content, torch.float32)][0]


def test_decode_is_bit_exact_uint16(zoo):
    """8-bit files come out as x * 257 exactly, 16-bit files bit-exact (PNG, TIFF raw/LZW/deflate, BMP;
    JPEG within 1 level of Pillow's libjpeg), gray and colour, 40x23 and 6912x1024."""
    root, _ = zoo
    for path in sorted(root.iterdir()):
        array = read_image(path)
        expected = array.astype(np.int64) * (257 if array.dtype == np.uint8 else 1)
        got = decode_file(path, rgb=array.shape[2] == 3).astype(np.int64)
        assert got.shape == expected.shape, path.name
        if path.suffix.lower() in (".jpg", ".jpeg"):
            assert np.abs(got - expected).max() <= 257, path.name
        else:
            np.testing.assert_array_equal(got, expected, err_msg=path.name)


@pytest.mark.parametrize("source", ["files", "packed"])
@pytest.mark.parametrize("in_chans", [3, 1])
def test_batches_match_the_reference_loader(zoo, source, in_chans):
    root, pack = zoo
    data = root if source == "files" else pack
    kwargs = dict(img_size=(48, 64), in_chans=in_chans, seed=3)
    reference = ReferenceLoader(ImageFolderDataset(data, **kwargs), batch_size=11, seed=9)
    dali = DaliLoader(ImageFolderDataset(data, **kwargs), batch_size=11, seed=9, num_threads=2)
    for epoch in (0, 1):
        pairs = list(zip(reference.iter_epoch(epoch), dali.iter_epoch(epoch), strict=True))
        assert len(pairs) == 1
        for ref_batch, dali_batch in pairs:
            _assert_parity(ref_batch, dali_batch, in_chans, "_noise")


def test_pack_ranges_and_computed_ranges_agree(zoo):
    """The ranges stored by `infmae pack` and those computed in the graph on the decoded image give the
    same batch bit for bit; a loader whose mapping differs from the pack's computes them."""
    _, pack = zoo
    kwargs = dict(img_size=(32, 32), in_chans=3, seed=1)
    stored = DaliLoader(ImageFolderDataset(pack, **kwargs), batch_size=11, seed=2)
    computed = DaliLoader(ImageFolderDataset(pack, **kwargs), batch_size=11, seed=2)
    computed.stored_ranges = False  # the same mapping, computed in the graph
    assert stored.stored_ranges
    (a,), (b,) = list(stored.iter_epoch(0)), list(computed.iter_epoch(0))
    assert torch.equal(a.images, b.images)
    other = DaliLoader(ImageFolderDataset(pack, sixteen_bit_mode="minmax", **kwargs), batch_size=11, seed=2)
    assert not other.stored_ranges


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_is_disjoint_and_covers_the_epoch(synthetic, world_size):
    _, pack = synthetic
    dataset = ImageFolderDataset(pack, img_size=(32, 32), in_chans=1, seed=0)
    batch = 2
    seen = []
    for rank in range(world_size):
        loader = DaliLoader(dataset, batch_size=batch, seed=5, rank=rank, world_size=world_size, num_threads=1)
        indices = [b.indices for b in loader.iter_epoch(1)]
        assert [i.tolist() for i in indices] == loader.epoch_batches(1)
        seen += torch.cat(indices).tolist()
    covered = (len(dataset) // world_size // batch) * batch * world_size
    assert len(seen) == len(set(seen)) == covered >= len(dataset) - world_size * batch


def test_resume_mid_epoch_gives_the_same_batches(synthetic):
    root, _ = synthetic
    loader = DaliLoader(ImageFolderDataset(root, img_size=(32, 32), in_chans=3, seed=0), batch_size=4, seed=1)
    full = list(loader.iter_epoch(0))
    resumed = DaliLoader(ImageFolderDataset(root, img_size=(32, 32), in_chans=3, seed=0), batch_size=4, seed=1)
    tail = list(resumed.iter_epoch(0, start_step=3))
    assert len(tail) == len(full) - 3
    for a, b in zip(full[3:], tail, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)


def test_bad_files_are_reported_skipped_and_substituted_like_the_reference(synthetic):
    """Zero-byte and non-image files are dropped at the header scan; the truncated PNG and the TIFF with a
    corrupt body (valid header) fail inside DALI's decoder: the batch is rebuilt without them, with the
    reference loader's substitutes."""
    root, _ = synthetic
    kwargs = dict(img_size=(32, 32), in_chans=3, seed=0)
    dataset = ImageFolderDataset(root, **kwargs)
    dropped = {p.split("/src/")[-1] for p, _ in dataset.dropped}
    assert {"cam_b/empty.png", "cam_b/notes_not_an_image.jpg"} <= dropped
    reference = ReferenceLoader(ImageFolderDataset(root, **kwargs), batch_size=4, seed=1)
    dali = DaliLoader(dataset, batch_size=4, seed=1, num_threads=2)
    for ref_batch, dali_batch in zip(reference.iter_epoch(0), dali.iter_epoch(0), strict=True):
        _assert_parity(ref_batch, dali_batch, 3)
        assert [p for p, _ in dali_batch.skipped] == [p for p, _ in ref_batch.skipped]
    bad = {p.split("/src/")[-1]: r for p, r in dali.skipped.items()}
    assert set(bad) == {"cam_a/seq02/ir_truncated.png", "cam_b/day2/corrupt_body16.tif"}
    assert all("DALI cannot decode it" in r for r in bad.values())
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        decode_file(root / "cam_b/day2/corrupt_body16.tif")


def test_a_file_only_the_gpu_decoder_rejects_is_found_by_a_gpu_probe(synthetic, monkeypatch):
    """nvJPEG rejects some files that the CPU decoder reads: when the CPU probe finds no culprit in a
    failed batch of a GPU loader, each suspect is probed with the GPU ('mixed') decoder. The GPU decode is
    simulated here (no GPU): the fake fails one file for a device id and delegates everything else."""
    from infmae.data import dali as dali_module

    root, _ = synthetic
    dataset = ImageFolderDataset(root, img_size=(32, 32), in_chans=3, seed=0)
    loader = DaliLoader(dataset, batch_size=4, seed=1, num_threads=1)
    good = [i for i in range(len(dataset)) if str(dataset.path(i)).endswith(".jpg")][:3]
    assert len(good) == 3
    victim = str(dataset.path(good[1]))
    probed = []

    def fake_decode(path, rgb=False, device_id=None):
        probed.append((str(path), device_id))
        if device_id is not None and str(path) == victim:
            raise ImageReadError(path, "DALI cannot decode it (nvJPEG: unsupported marker)")
        return decode_file(path, rgb=rgb)

    monkeypatch.setattr(dali_module, "decode_file", fake_decode)
    assert loader.find_undecodable(good) == []  # CPU loader: the CPU probe is the pipeline's own decoder
    assert {d for _, d in probed} == {None}
    monkeypatch.setattr(loader, "device_id", 0)  # as if the loader decoded on GPU 0
    probed.clear()
    assert loader.find_undecodable(good) == [
        (victim, "DALI cannot decode it (nvJPEG: unsupported marker) on the GPU decoder")
    ]
    assert [d for _, d in probed] == [None] * 3 + [0] * 3  # CPU first, then the GPU decoder


@pytest.mark.slow
def test_pretrain_with_dali_ends_with_the_skipped_count(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        code = main(demo_pretrain_args(out, "data.loader=dali"))
    assert code == 0
    assert "DALI loader: files source, CPU mode" in caplog.text
    skipped = (out / "skipped_files.tsv").read_text().splitlines()
    names = {line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped}
    assert {"empty.png", "notes_not_an_image.jpg", "tiny_12x12.png"} <= names
    assert f"skipped {len(skipped)} unusable files" in caplog.text


def test_missing_dali_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match="nvidia-dali-cuda130"):
        import_dali()


def test_unknown_sizes_are_a_clear_error(tmp_path, synthetic):
    root, _ = synthetic
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,status\n" + "".join(f"{p},keep\n" for p in scan_folder(root)[:8]))
    dataset = ImageFolderDataset(manifest, img_size=(32, 32), in_chans=3, seed=0, base=root, check_headers=False)
    with pytest.raises(ValueError, match="check_headers=True"):
        DaliLoader(dataset, batch_size=2, seed=0)


def test_dali_trains_on_a_manifest_kept_rows_only(tmp_path, synthetic):
    root, _ = synthetic
    files = [p for p in scan_folder(root) if "tiny" not in p and "empty" not in p and "notes" not in p]
    kept = set(files[::2])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,status\n" + "".join(f"{p},{'keep' if p in kept else 'near_duplicate'}\n" for p in files))
    dataset = ImageFolderDataset(manifest, img_size=(32, 32), in_chans=3, seed=0, base=root)
    assert set(dataset.paths) == kept
    loader = DaliLoader(dataset, batch_size=3, seed=0)
    seen = {dataset.paths[i] for b in loader.iter_epoch(0) for i in b.indices.tolist()}
    assert seen and seen <= kept
