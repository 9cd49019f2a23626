"""The data wing's shared pieces: the sample spec and its 16-bit mapping value, the catalogue's substitution
and split, the manifest module's write/read round trip, and the DALI graph's inputs per source."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from infmae.config import DataConfig
from infmae.data.catalogue import Catalogue
from infmae.data.dali import GraphPlan
from infmae.data.folder import ImageFolderDataset
from infmae.data.io import ImageReadError
from infmae.data.manifest import MANIFEST_COLUMNS, read_kept_rows, read_manifest_rows, write_manifest_rows
from infmae.data.mapping import DEFAULT_MAPPING, SixteenBitMapping, image_range
from infmae.data.spec import SampleSpec
from infmae.data.synthetic import write_image


@pytest.fixture
def folder(tmp_path):
    for i in range(5):
        write_image(tmp_path / f"img{i}.png", np.full((24, 30), 40 * i, np.uint8))
    return tmp_path


def test_the_spec_from_the_config_is_the_spec_of_the_dataset_defaults():
    """The config's defaults, the mapping's and the dataset's keyword defaults are one rule."""
    from_config = SampleSpec.from_config(DataConfig(), (224, 224), 3, seed=7)
    from_keywords = SampleSpec.from_options(img_size=(224, 224), in_chans=3, seed=7)
    assert from_config == from_keywords
    assert from_config.mapping == DEFAULT_MAPPING == SixteenBitMapping("percentile", 0.5, 99.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_config.seed = 8
    assert from_config.eval_view().crop == "centre" and from_config.crop == "random"


@pytest.mark.parametrize(
    ("mean", "std", "channels"),
    [(0.425, 0.2, 1), ((0.425,) * 3, (0.2,) * 3, 1), ((0.4, 0.5, 0.6), (0.2, 0.2, 0.25), 3)],
)
def test_gray_images_take_the_statistics_the_spec_gives_them(folder, mean, std, channels):
    """A gray sample for a 3-channel model stays one channel when the statistics are equal on every channel
    (written once or three times) and is repeated before normalising when they differ; each channel is
    normalised by its own mean and std."""
    dataset = ImageFolderDataset(folder, img_size=(16, 16), in_chans=3, seed=0, mean=mean, std=std, crop="centre")
    sample = dataset[2][0]  # a flat image of value 80/255
    assert sample.shape == (channels, 16, 16)
    spec_mean, spec_std = dataset.spec.normalisation(channels)
    expected = (80 / 255 - np.array(spec_mean)) / np.array(spec_std)
    np.testing.assert_allclose(sample.mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)


def test_the_preview_is_the_validation_view(folder):
    """``infmae visualize`` feeds the model what validation does: the same crop, mapping and statistics,
    repeated to the model's channels."""
    from infmae.config import Config, ModelConfig
    from infmae.data.preview import preview_tensor

    # 41 x 20 for a 2:1 model: the validation crop is 40 x 20 (the former preview rule kept 41 x 20)
    write_image(folder / "tall.png", np.random.default_rng(1).integers(0, 255, (41, 20), dtype=np.uint8))
    config = Config(model=ModelConfig(img_size=(64, 32)), data=DataConfig(mean=0.4, std=0.3))
    spec = SampleSpec.from_config(config.data, (64, 32), 3, seed=0).eval_view()
    dataset = ImageFolderDataset(folder, spec)
    index = next(i for i in range(len(dataset)) if dataset.path(i).name == "tall.png")
    assert torch.equal(preview_tensor(folder / "tall.png", config), dataset[index][0].expand(3, -1, -1))


def test_the_mapping_is_one_validated_value():
    counts = np.random.default_rng(0).integers(7000, 9000, (20, 30, 1)).astype(np.uint16)
    rule = SixteenBitMapping("percentile", 2.0, 98.0)
    assert rule.range(counts) == image_range(counts, "percentile", 2.0, 98.0)
    assert SixteenBitMapping.from_dict(rule.to_dict()) == rule
    assert SixteenBitMapping("minmax").range(counts) == (float(counts.min()), float(counts.max()))
    with pytest.raises(ValueError, match="expected mode in"):
        SixteenBitMapping("gamma")
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        SixteenBitMapping("percentile", 60, 40)


def test_the_catalogue_substitutes_the_next_readable_position_and_wraps(folder):
    catalogue = Catalogue.open(folder, max_substitutions=3)
    assert catalogue.paths == [f"img{i}.png" for i in range(5)] and catalogue.kinds == [(1, 8)] * 5
    assert catalogue.resolve(1) == (1, [])
    catalogue.unreadable.mark(str(catalogue.path(1)), "cut")
    catalogue.unreadable.note([(str(catalogue.path(4)), "gone")])
    assert catalogue.resolve(1) == (2, [(str(folder / "img1.png"), "cut")])
    assert catalogue.resolve(4) == (0, [(str(folder / "img4.png"), "gone")])  # wraps to the start
    catalogue.unreadable.note([(str(catalogue.path(2)), "cut"), (str(catalogue.path(3)), "cut")])
    with pytest.raises(RuntimeError, match=r"3 consecutive files from position 1 .*img1\.png .*img3\.png"):
        catalogue.resolve(1)


def test_a_read_that_fails_marks_the_file_and_reads_the_next(folder):
    catalogue = Catalogue.open(folder)
    failing = {2}

    def decode(position):
        if position in failing:
            raise ImageReadError(catalogue.path(position), "truncated")
        return position * 10

    assert catalogue.read(2, decode, (ImageReadError,)) == (
        30,
        3,
        [(str(folder / "img2.png"), "truncated")],
    )
    assert catalogue.unreadable.as_dict() == {str(folder / "img2.png"): "truncated"}
    with pytest.raises(ZeroDivisionError):  # an error not listed is not a bad file
        catalogue.read(0, lambda position: 1 // 0, (OSError,))


def test_a_split_shares_the_unreadable_registry_and_keeps_both_sides(folder):
    dataset = ImageFolderDataset(folder, img_size=(16, 16), in_chans=1, seed=0)
    held = dataset.split_off(lambda path: path in ("img1.png", "img3.png"))
    assert held.paths == ["img1.png", "img3.png"] and dataset.paths == ["img0.png", "img2.png", "img4.png"]
    assert held.eval_view and not dataset.eval_view and held.spec.mapping == dataset.spec.mapping
    dataset.note_unreadable([(str(folder / "img3.png"), "cut")])
    assert held.unreadable == {str(folder / "img3.png"): "cut"}


def test_the_manifest_module_reads_what_it_writes(tmp_path):
    rows = [
        ["a.png", "keep", "", 30, 24, 8, 1] + [""] * (len(MANIFEST_COLUMNS) - 7),
        ["b.png", "drop", "too_small", 10, 10, 8, 1] + [""] * (len(MANIFEST_COLUMNS) - 7),
        ["c.tif", "keep", "", "", "", "", ""] + [""] * (len(MANIFEST_COLUMNS) - 7),
    ]
    path = write_manifest_rows(tmp_path, rows)
    assert [r["path"] for r in read_manifest_rows(path)] == ["a.png", "b.png", "c.tif"]
    kept = read_kept_rows(path, root=tmp_path)
    assert kept.paths == ["a.png", "c.tif"]
    assert kept.sizes == [(30, 24), None] and kept.kinds == [(1, 8), None]
    assert not (tmp_path / "manifest.csv.partial").exists()


@pytest.mark.parametrize(
    "packed, device_id, stored, names",
    [
        (False, None, False, ("payload", "start", "shape", "flip", "kind")),
        (False, 0, False, ("payload", "start", "shape", "flip", "kind")),
        (True, None, True, ("payload", "start", "shape", "flip", "layout", "ranges")),
        (True, 0, False, ("payload", "start", "shape", "flip", "layout", "chunk_sizes", "kind")),
    ],
)
def test_the_graph_inputs_follow_the_source(packed, device_id, stored, names):
    plan = GraphPlan(
        packed=packed,
        device_id=device_id,
        decode_rgb=False,
        channels=1,
        average_colour=False,
        stored_ranges=stored,
        mapping=DEFAULT_MAPPING,
        img_size=(32, 32),
        mean=(0.425,),
        std=(0.2,),
        half=False,
    )
    assert plan.feed_names == names and plan.gpu == (device_id is not None)
