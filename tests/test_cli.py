"""The `infmae` command: the README's demo end to end, export, visualize."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from infmae.cli import main
from infmae.config import preset
from infmae.model.infmae import ENCODER_PREFIXES
from infmae.training import checkpoint as ckpt
from tests.helpers import demo_pretrain_args


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    code = main(demo_pretrain_args(run, "data.num_workers=0"))
    assert code == 0
    return run


@pytest.mark.slow
def test_demo_preset_trains_end_to_end(tmp_path):
    """The demo trains: synthetic data written, loss at the end below 60 % of its first logged value, a run folder
    with config, metrics, checkpoint and a reconstruction PNG."""
    run = tmp_path / "demo"
    assert main(["pretrain", "--preset", "demo", "--output", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["step"] == steps[-1]["total_steps"]
    assert steps[-1]["loss"] < 0.6 * steps[0]["loss"], (steps[0]["loss"], steps[-1]["loss"])
    held_out = [r for r in records if "val_loss" in r][-1]  # better than each image's visible mean, on new images
    assert held_out["step"] == steps[-1]["step"] and held_out["val_loss"] < held_out["val_baseline_loss"], held_out
    assert json.loads((run / "config.json").read_text())["preset"] == "demo"
    assert ckpt.latest_checkpoint(run) is not None
    assert any((run / "synthetic_data").rglob("*.png"))
    pictures = sorted((run / "reconstructions").glob("*.png"))
    grid = np.asarray(Image.open(pictures[-1]))
    assert grid.ndim == 2 and grid.std() > 10  # an image with content, not a flat field
    assert grid[:18, 150:].min() < 128 and grid[18:, :150].min() < 128  # labelled: column names, file names


def test_export_writes_the_encoder_with_released_names(short_run, tmp_path):
    out = tmp_path / "encoder.pth"
    assert main(["export", str(short_run), "-o", str(out)]) == 0
    exported = torch.load(out)["model"]
    full = ckpt.load_checkpoint(short_run)["model"]
    assert set(exported) == {k for k in full if k.startswith(ENCODER_PREFIXES)}
    assert not any(k.startswith(("decoder", "mask_token", "stage1_output", "patch_embed.")) for k in exported)
    assert all(torch.equal(exported[k], full[k]) for k in exported)
    gray = tmp_path / "gray.pth"
    assert main(["export", str(short_run), "-o", str(gray), "--in-chans", "1"]) == 0
    assert torch.load(gray)["model"]["patch_embed1.proj.weight"].shape[1] == 1


def test_visualize_writes_a_grid_and_skips_unreadable_files(short_run, tmp_path):
    images = sorted((short_run / "synthetic_data").rglob("*.png"))[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "grid.png"
    assert main(["visualize", str(short_run), *map(str, images), str(bad), "-o", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    size = preset("demo").model.img_size[0]
    scale = -(-128 // size)
    header, labels = 18, 150  # the column names above, each row's file name and masked MSE on the left
    assert grid.shape == (header + 3 * (size * scale + 2) + 2, labels + 4 * (size * scale + 2) + 2)
    assert grid[:header, labels:].min() < 128  # the column names are drawn
    assert grid[header:, :labels].min() < 128  # and the row labels


def test_pretrain_reports_config_errors_without_a_traceback(tmp_path, capsys):
    assert main(["pretrain", "--output", str(tmp_path / "x"), "--set", "model.order=sideways"]) == 2
    assert "model.order" in capsys.readouterr().err
