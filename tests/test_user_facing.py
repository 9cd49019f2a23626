"""What a user sees: held-out evaluation against a trivial baseline, labelled pictures, curves, a CLI that
lists its fields, thread counts on the CPU, and the rough edges of errors and logs."""

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch

from infmae.cli import main
from infmae.config import DataConfig, ModelConfig, TrainConfig, apply_overrides, preset
from infmae.config_help import field_docs, format_fields
from infmae.data import ImageFolderDataset, generate_dataset
from infmae.data.io import ImageReadError, read_image
from infmae.model.patchify import patchify
from infmae.training import checkpoint as ckpt
from infmae.training.evaluation import in_validation_split, masked_errors
from infmae.training.hardware import cpu_threads_for
from infmae.training.metrics import format_line
from infmae.training.plots import plot_run
from infmae.training.trainer import Trainer
from tests.helpers import image_folder
from tests.test_checkpoint_safety import tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return image_folder(tmp_path_factory, "ux_data", 24, seed=11)


# ----------------------------------------------------------------------------------------------
# held-out evaluation
# ----------------------------------------------------------------------------------------------
def test_masked_errors_match_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(3, 1, 32, 48, generator=gen)
    target = patchify(imgs)  # [3, 6, 256]
    pred = torch.randn(target.shape, generator=gen)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 1, 1]], dtype=torch.float32)
    model, baseline = masked_errors(imgs, pred, mask, norm_pix_loss=False)
    for b in range(3):
        masked = mask[b].bool()
        expected = ((pred[b, masked] - target[b, masked]) ** 2).mean()
        visible_mean = target[b, ~masked].mean()
        expected_baseline = ((target[b, masked] - visible_mean) ** 2).mean()
        assert torch.allclose(model[b], expected) and torch.allclose(baseline[b], expected_baseline)
    # predicting each visible mean is exactly the baseline
    guess = torch.stack([target[b, ~mask[b].bool()].mean().expand(6, 256) for b in range(3)])
    assert torch.allclose(masked_errors(imgs, guess, mask, False)[0], baseline)
    # the batch mean of the per-image errors is the training loss (every image has as many masked patches)
    batch = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 0]], dtype=torch.float32)
    per_patch = ((pred - target) ** 2).mean(-1)
    loss = (per_patch * batch).sum() / batch.sum()
    assert torch.allclose(masked_errors(imgs, pred, batch, False)[0].mean(), loss)


def test_the_validation_split_is_stable_and_near_its_fraction():
    paths = [f"cam_{c}/seq_{s}/frame_{f:05d}.png" for c in range(4) for s in range(5) for f in range(200)]
    chosen = {p for p in paths if in_validation_split(p, 0.1)}
    assert 0.08 < len(chosen) / len(paths) < 0.12
    assert chosen == {p for p in reversed(paths) if in_validation_split(p, 0.1)}  # order does not matter
    assert chosen <= {p for p in paths if in_validation_split(p, 0.2)}  # a larger share only adds files


def test_split_off_moves_held_out_images_into_a_fixed_view(data):
    dataset = ImageFolderDataset(data, img_size=(32, 48), in_chans=3, seed=0)
    everything = list(dataset.paths)
    held = dataset.split_off(lambda path: in_validation_split(path, 0.3))
    assert sorted(dataset.paths + held.paths) == sorted(everything) and not set(dataset.paths) & set(held.paths)
    assert held.eval_view and not dataset.eval_view and held.dropped == []
    first = held[0][0]
    held.set_epoch(5)
    assert torch.equal(held[0][0], first)  # the same view in every epoch: no random crop, no flip
    params = held.augment_params(0, 100, 200)
    assert (params.height, params.width, params.top, params.left, params.flip) == (100, 150, 0, 25, False)
    with pytest.raises(ValueError, match="leaves images on both sides"):
        dataset.split_off(lambda path: True)


def test_training_with_a_validation_split_logs_val_metrics_and_labelled_pictures(tmp_path, data, caplog):
    run = tmp_path / "run"
    config = tiny_config(data, max_steps=4, eval_every=2)
    config.data = DataConfig(path=str(data), num_workers=0, val_fraction=0.25)
    caplog.set_level(logging.INFO)
    trainer = Trainer(config, run)
    trainer.fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    last = evaluations[-1]
    assert {"val_loss", "val_baseline_loss", "val_psnr", "val_images"} <= set(last)
    assert last["val_images"] == len(trainer.val_dataset) and math.isfinite(last["val_psnr"])
    expected_psnr = 10 * math.log10(1 / (last["val_loss"] * config.data.std**2))
    assert last["val_psnr"] == pytest.approx(expected_psnr)
    assert "eval step 4: val_loss" in caplog.text
    from PIL import Image

    grid = np.asarray(Image.open(run / "reconstructions" / "step_00000004.png"))
    assert grid[:18, 150:].min() < 128 and grid[18:, :150].min() < 128  # column names and row labels


def test_a_separate_validation_folder(tmp_path, data):
    val = tmp_path / "val"
    generate_dataset(val, 6, seed=12, include_bad=False)
    config = tiny_config(data, max_steps=2, eval_every=2)
    config.data = DataConfig(path=str(data), num_workers=0, val_path=str(val))
    trainer = Trainer(config, tmp_path / "run")
    assert len(trainer.val_dataset) == 6 and len(trainer.dataset) == 24
    assert trainer.evaluate().images == 6


# ----------------------------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------------------------
def write_metrics(run, steps=20):
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": 1 / step, "lr": 1e-3, "img_per_s": 100.0, "data_wait_pct": 5.0, "mfu": None}
        lines.append(json.dumps(record))
        if step % 5 == 0:
            lines.append(json.dumps({"step": step, "val_loss": 1.2 / step, "val_baseline_loss": 0.8}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_plot_draws_the_curves_of_a_run(tmp_path):
    write_metrics(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    from PIL import Image

    picture = np.asarray(Image.open(tmp_path / "run" / "curves.png").convert("L"))
    assert picture.shape[0] > 600 and picture.std() > 10  # four panels with lines, not a blank canvas


def test_plot_names_the_missing_extra_and_the_missing_file(tmp_path, monkeypatch, capsys):
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    write_metrics(tmp_path / "run")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_run(tmp_path / "run")


# ----------------------------------------------------------------------------------------------
# the CLI explains itself
# ----------------------------------------------------------------------------------------------
def test_config_fields_lists_every_field_with_its_default(capsys):
    assert main(["config", "fields", "--preset", "paper_base"]) == 0
    listing = capsys.readouterr().out
    for cls, section in ((ModelConfig, "model"), (DataConfig, "data"), (TrainConfig, "train")):
        for field in dataclasses.fields(cls):
            assert f"  {section}.{field.name} (" in listing, field.name
    assert "  train.blr (float) = 0.00015" in listing
    assert field_docs()["train.blr"].startswith("Base learning rate")
    demo = [line for line in format_fields(preset("demo")).splitlines() if line.startswith("  ") and " (" in line]
    declared = sum(len(dataclasses.fields(c)) for c in (ModelConfig, DataConfig, TrainConfig))
    assert len([line for line in demo if not line.startswith("      ")]) == declared


def test_config_show_prints_the_resolved_configuration(capsys):
    assert main(["config", "show", "--preset", "demo", "--set", "train.blr=3e-3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["train"]["blr"] == 3e-3 and shown["preset"] == "demo"


def test_an_unknown_field_points_at_the_listing():
    with pytest.raises(ValueError, match="`infmae config fields` lists every field"):
        apply_overrides(preset("demo"), ["nonsense=3"])


# ----------------------------------------------------------------------------------------------
# rough edges
# ----------------------------------------------------------------------------------------------
def test_data_path_errors_name_the_path_plainly_and_hint_at_the_folder(tmp_path, capsys):
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(image)
    assert main(["pretrain", "--data", str(image), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "PosixPath" not in err and "ImageFolderDataset" not in err, err
    assert f"got {image} (a single image); point --data at the folder that holds it: --data {tmp_path}" in err
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder behind


def test_libtiff_messages_go_into_the_error_not_onto_stderr(tmp_path, capfd):
    generate_dataset(tmp_path, 2, seed=0, include_bad=True)
    corrupt = next(tmp_path.rglob("corrupt_body16.tif"))
    with pytest.raises(ImageReadError, match="libtiff: .*Using code not yet in table"):
        read_image(corrupt)
    assert "Using code" not in capfd.readouterr().err
    from PIL import Image

    good = tmp_path / "good_lzw.tif"
    Image.fromarray(np.arange(900, dtype=np.uint16).reshape(30, 30)).save(good, compression="tiff_lzw")
    assert read_image(good)[5, 7, 0] == 157  # a good TIFF still reads


def test_cpu_progress_lines_do_not_say_gpu():
    record = {"step": 1, "total_steps": 2, "epoch": 0, "loss": 1.0, "lr": 1e-3, "grad_norm": 1.0, "img_per_s": 5.0}
    record |= {"img_per_s_total": 10.0, "world_size": 2, "data_wait_pct": 1.0, "mem_gib": 1.0, "eta_s": 1.0}
    assert "/rank 10.0 total" in format_line(record | {"device": "cpu"})
    assert "/gpu 10.0 total" in format_line(record | {"device": "cuda"})


def test_the_done_line_after_a_resume_reports_the_runs_first_loss(tmp_path, data, caplog):
    run = tmp_path / "run"
    first = Trainer(tiny_config(data, max_steps=2), run).fit()
    resumed = Trainer(tiny_config(data, max_steps=4), run, resume=True).fit()
    assert resumed.first_step == 1 and resumed.first_loss == first.first_loss
    assert ckpt.latest_checkpoint(run).name == "step_00000004.pt"


def test_cpu_threads_leave_a_core_per_loader_worker():
    assert cpu_threads_for(cores=2, local_ranks=1, workers=2) == 1
    assert cpu_threads_for(cores=16, local_ranks=1, workers=2) == 14
    assert cpu_threads_for(cores=64, local_ranks=8, workers=2) == 6
    assert cpu_threads_for(cores=2, local_ranks=4, workers=0) == 1
    assert cpu_threads_for(cores=8, local_ranks=1, workers=0) == 8
