"""Trainer: schedule, parameter groups, atomic checkpoints, exact resume, bad files, non-finite loss."""

import json
import math

import pytest
import torch

from infmae.config import Config
from infmae.model.infmae import InfMAE
from infmae.training import checkpoint as ckpt
from infmae.training.optim import learning_rate, parameter_groups
from infmae.training.trainer import Trainer
from tests.helpers import assert_latest_alone, image_folder, losses, tiny_model, tiny_run


def tiny_config(data_path, **train):
    return tiny_run(data_path, tiny_model(img_size=(48, 48)), **{"epochs": 3, "checkpoint_every": 1000, **train})


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory):
    return image_folder(tmp_path_factory, "clean", 20, seed=3)


@pytest.fixture(scope="module")
def dirty_data(tmp_path_factory):
    return image_folder(tmp_path_factory, "dirty", 12, seed=4, include_bad=True)


def test_schedule_warms_up_linearly_then_follows_a_half_cosine():
    peak, total, warm = 1e-3, 100, 10
    assert learning_rate(0, total, warm, peak) == 0.0
    assert learning_rate(5, total, warm, peak) == pytest.approx(5e-4)
    assert learning_rate(10, total, warm, peak) == pytest.approx(peak)
    assert learning_rate(55, total, warm, peak) == pytest.approx(peak / 2)
    assert learning_rate(100, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    values = [learning_rate(s, total, warm, peak) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_parameter_groups_follow_the_release():
    model = InfMAE(tiny_model())
    decay, no_decay = parameter_groups(model, 0.05)
    ids = {id(p): n for n, p in model.named_parameters()}
    decayed = {ids[id(p)] for p in decay["params"]}
    not_decayed = {ids[id(p)] for p in no_decay["params"]}
    assert "mask_token" in decayed and "blocks3.0.attn.qkv.weight" in decayed and "patch_embed1.proj.weight" in decayed
    assert "blocks3.0.attn.qkv.bias" in not_decayed and "norm.weight" in not_decayed
    assert "pos_embed" not in decayed | not_decayed and "patch_embed.proj.weight" not in decayed | not_decayed
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | not_decayed == trainable


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path, clean_data):
    steps = 6  # 20 images / batch 4 = 5 steps per epoch: the resume crosses an epoch boundary
    whole = tmp_path / "whole"
    Trainer(tiny_config(clean_data, max_steps=2 * steps), whole).fit()
    split = tmp_path / "split"
    Trainer(tiny_config(clean_data, max_steps=steps), split).fit()
    Trainer(tiny_config(clean_data, max_steps=2 * steps), split, resume=True).fit()
    assert len(losses(whole)) == 2 * steps
    assert losses(split) == losses(whole)  # bitwise: floats round-trip exactly through JSON
    a = ckpt.load_checkpoint(whole)["model"]
    b = ckpt.load_checkpoint(split)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_recipe(tmp_path, clean_data):
    run = tmp_path / "run"
    Trainer(tiny_config(clean_data, max_steps=1), run).fit()
    with pytest.raises(ValueError, match="train.blr"):
        Trainer(tiny_config(clean_data, max_steps=2, blr=5e-3), run, resume=True)
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny_config(clean_data, max_steps=2), run)


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    state = {"model": {"w": torch.arange(4.0)}, "step": 1}
    first = ckpt.save_checkpoint(tmp_path, 1, state, keep_last=2)

    def broken_save(obj, handle):  # the process dies half-way through writing
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2}, keep_last=2)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert torch.equal(ckpt.load_checkpoint(tmp_path)["model"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        first.name,
        first.name + ".sha256",
    ]
    for step in (2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000004.pt"]
    assert not (tmp_path / "checkpoints" / "step_00000002.pt.sha256").exists()  # pruned with its checkpoint
    assert ckpt.load_checkpoint(tmp_path)["step"] == 4


@pytest.mark.slow
def test_async_checkpoints_equal_sync_ones_and_resume_exactly(tmp_path, clean_data):
    steps = 4
    sync, background = tmp_path / "sync", tmp_path / "async"
    Trainer(tiny_config(clean_data, max_steps=2 * steps, checkpoint_every=2), sync).fit()
    Trainer(tiny_config(clean_data, max_steps=steps, checkpoint_every=1, async_checkpoint=True), background).fit()
    Trainer(
        tiny_config(clean_data, max_steps=2 * steps, checkpoint_every=3, async_checkpoint=True), background, resume=True
    ).fit()
    assert losses(background) == losses(sync)  # bitwise
    assert ckpt.latest_checkpoint(background).name == f"step_{2 * steps:08d}.pt"
    a, b = ckpt.load_checkpoint(sync), ckpt.load_checkpoint(background)
    assert a["step"] == b["step"] == 2 * steps and a["data"] == b["data"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_async_save_copies_the_state_before_returning(tmp_path, monkeypatch):
    """Training changes the weights in place right after save returns: the file holds the values at the save."""
    release = __import__("threading").Event()
    atomic_write = ckpt._atomic_write
    monkeypatch.setattr(ckpt, "_atomic_write", lambda path, write: (release.wait(), atomic_write(path, write)))
    weights = torch.arange(6.0)
    pending = ckpt.save_checkpoint_async(tmp_path, 7, {"model": {"w": weights}, "extra": [torch.ones(2)]})
    weights.mul_(-1)  # the optimizer step that follows the save
    assert not pending.done()
    release.set()
    path = pending.wait()
    assert path.name == "step_00000007.pt" and ckpt.latest_checkpoint(tmp_path) == path
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.arange(6.0))


def test_a_failed_async_save_raises_on_wait_and_keeps_the_previous_latest(tmp_path, monkeypatch):
    first = ckpt.save_checkpoint(tmp_path, 1, {"step": 1})

    def full_disk(obj, handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    pending = ckpt.save_checkpoint_async(tmp_path, 2, {"step": 2})
    with pytest.raises(
        ckpt.CheckpointWriteError,
        match=r"could not write \S*step_00000002.pt: No space left on device; step_00000001.pt is still `latest`",
    ):
        pending.wait()
    monkeypatch.undo()
    assert_latest_alone(tmp_path, first)


@pytest.mark.slow
def test_bad_files_are_reported_and_skipped_and_the_run_finishes(tmp_path, dirty_data, caplog):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(dirty_data, epochs=2, warmup_epochs=0), run)
    summary = trainer.fit()  # two full epochs: every file is read at least once
    assert summary.steps == trainer.total_steps
    skipped = dict(line.split("\t") for line in (run / "skipped_files.tsv").read_text().splitlines())
    reasons = {path.rsplit("/", 1)[-1]: reason for path, reason in skipped.items()}
    expected = {
        "empty": "empty",
        "not_an_image": "not an image",
        "tiny_12x12": "too_small",
        "truncated": "truncated",
        "corrupt_body16": "decod",
    }
    for stem, reason in expected.items():
        match = [name for name in reasons if stem in name]
        assert match, f"{stem} was not reported: {sorted(reasons)}"
        assert reason in reasons[match[0]], (stem, reasons[match[0]])
        assert any(stem in record.getMessage() for record in caplog.records), stem
    assert "skipped 5 unusable files" in caplog.text


def test_a_non_finite_loss_stops_the_run_with_where_and_why(tmp_path, clean_data):
    trainer = Trainer(tiny_config(clean_data, max_steps=3), tmp_path / "run")
    with torch.no_grad():
        trainer.model.decoder_pred.bias.fill_(math.inf)
    with pytest.raises(
        FloatingPointError, match=r"steps 1 and 1; last batch indices \[.*\]; last good checkpoint none"
    ):
        trainer.fit()


def test_run_folder_holds_config_metrics_checkpoint_and_pictures(tmp_path, clean_data):
    run = tmp_path / "run"
    Trainer(tiny_config(clean_data, max_steps=4, visualize_every=2), run).fit()
    assert Config.from_dict(json.loads((run / "config.json").read_text())).train.max_steps == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "img_per_s", "data_wait_pct", "mem_gib", "eta_s"} <= set(records[0])
    assert sorted(p.name for p in (run / "reconstructions").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert ckpt.latest_checkpoint(run).name == "step_00000004.pt"


def test_training_with_triton_kernels_drops_the_per_step_id_check(tmp_path, clean_data, monkeypatch):
    import dataclasses

    import kernels.depthwise
    import kernels.tokens

    monkeypatch.setattr(kernels.HOST_SYNC_GUARDS, "check_ids", True)
    monkeypatch.setattr(kernels.HOST_SYNC_GUARDS, "check_neighbours", True)
    config = tiny_config(clean_data, max_steps=1)
    config.model = dataclasses.replace(config.model, kernels="triton")  # the interpreter runs them here
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.module.ops.name == "triton" and kernels.HOST_SYNC_GUARDS.check_ids is False
    assert kernels.HOST_SYNC_GUARDS.check_neighbours is False
    assert trainer.fit().steps == 1
