"""Checkpoints that cannot run code, that are checked on load, and that fail in one clear line: crafted
pickles, truncated and byte-flipped files (single file and DCP folder), missing files, fallback to the
newest intact checkpoint on resume, disk full, older checkpoints and released files still loading."""

import argparse
import errno
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infmae.cli import main
from infmae.model.infmae import InfMAE
from infmae.training import checkpoint as ckpt
from infmae.training.rng import rng_state, set_rng_state
from infmae.training.trainer import Trainer
from tests.helpers import assert_latest_alone, finished_run, image_folder, losses, tiny_model, tiny_run


def tiny_config(data_path, **train):
    """The runs of this file, test_training_stops and test_user_facing: a save every 2 steps."""
    model = tiny_model(embed_dims=(8, 16, 32), decoder_embed_dim=16)
    return tiny_run(data_path, model, **{"epochs": 2, "checkpoint_every": 2, "tensorboard": False, **train})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return image_folder(tmp_path_factory, "ckpt_data", 16, seed=7)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """An uninterrupted 6-step run: the reference every resumed run must equal bit for bit."""
    return finished_run(tmp_path_factory, tiny_config(data, max_steps=6))


def error_lines(capsys) -> list[str]:
    """The command's error lines (the CLI writes each failure as one line starting with 'error:')."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = ckpt.load_checkpoint(a)["model"], ckpt.load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ----------------------------------------------------------------------------------------------
# a crafted pickle never runs
# ----------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(path: Path, marker: Path, model: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model or {}, "step": 2, "config": Payload(marker)}, path)
    return path


def test_the_payload_really_runs_when_loaded_unsafely(tmp_path):
    """The control: without weights_only the crafted file does run its command."""
    marker = tmp_path / "pwned"
    path = craft(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_crafted_pickle_runs_through_no_command(tmp_path, data, capsys):
    marker = tmp_path / "pwned"
    model = InfMAE(tiny_config(tmp_path).model).state_dict()
    evil = craft(tmp_path / "evil.pt", marker, model)
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(image)
    assert main(["export", str(evil), "-o", str(tmp_path / "enc.pth")]) == 2
    assert main(["visualize", str(evil), str(image), "-o", str(tmp_path / "grid.png")]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 2 and all("evil.pt" in e and "needs code (posix.system)" in e for e in errors), errors
    # the same file as a run's latest checkpoint, resumed
    run = tmp_path / "run"
    craft(run / "checkpoints" / "step_00000002.pt", marker, model)
    (run / "checkpoints" / "latest").write_text("step_00000002.pt")
    resume = ["pretrain", "--output", str(run), "--resume", "--data", str(data), "--set", "train.batch_size=4"]
    assert main(resume) == 2
    assert "needs code" in capsys.readouterr().err
    # and inside a DCP folder, as its extra.pt and as a rank file
    for name in (ckpt.EXTRA, "rank_00000.pt"):
        folder = ckpt.save_distributed_checkpoint(tmp_path / name, 1, {"model": model}, {"step": 1}, {"rng": {}})
        craft(folder / name, marker, model)
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load_checkpoint(folder)
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load_distributed_checkpoint(folder, {"model": {k: torch.empty_like(v) for k, v in model.items()}})
    assert not marker.exists()


def test_older_checkpoints_and_released_files_still_load(tmp_path):
    model = InfMAE(tiny_config(tmp_path).model).state_dict()
    # this project before safe loading: numpy's RNG state as numpy's own tuple (an ndarray inside)
    old_rng = {
        "python": __import__("random").getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    old = tmp_path / "old.pt"
    torch.save({"model": model, "step": 3, "rng": old_rng, "config": tiny_config(tmp_path).to_dict()}, old)
    state = ckpt.load_checkpoint(old)
    assert state["step"] == 3 and all(torch.equal(state["model"][k], model[k]) for k in model)
    np.random.seed(1)
    set_rng_state(state["rng"])
    assert np.array_equal(np.random.get_state()[1], old_rng["numpy"][1])
    # the released InfMAE / MAE layout: training arguments as an argparse.Namespace
    released = tmp_path / "released.pth"
    torch.save({"model": model, "epoch": 799, "args": argparse.Namespace(lr=1e-3, mask_ratio=0.75)}, released)
    loaded = ckpt.load_checkpoint(released)
    assert loaded["args"].lr == 1e-3 and all(torch.equal(loaded["model"][k], model[k]) for k in model)


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    np.random.seed(5)
    np.random.normal()  # a cached gaussian is part of the state
    saved = rng_state()
    expected = (np.random.random(4), torch.rand(3), __import__("random").random())
    path = ckpt.save_checkpoint(tmp_path, 1, {"rng": saved})
    np.random.seed(0), torch.manual_seed(0), __import__("random").seed(0)
    set_rng_state(ckpt.load_checkpoint(path)["rng"])
    assert np.array_equal(np.random.random(4), expected[0]) and torch.equal(torch.rand(3), expected[1])
    assert __import__("random").random() == expected[2]


def test_files_that_are_not_checkpoints_fail_in_one_line(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), tensor)
    for path in (text, tensor, tmp_path / "missing.pt"):
        assert main(["export", str(path), "-o", str(tmp_path / "enc.pth")]) == 2
        errors = error_lines(capsys)
        assert len(errors) == 1 and path.name in errors[0], errors


def test_export_of_a_checkpoint_without_an_encoder_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    torch.save({"model": {}}, empty)
    assert main(["export", str(empty), "-o", str(tmp_path / "enc.pth")]) == 2
    assert "got none of its 0 model tensors" in capsys.readouterr().err
    assert not (tmp_path / "enc.pth").exists()


# ----------------------------------------------------------------------------------------------
# integrity: truncated, byte-flipped and missing files
# ----------------------------------------------------------------------------------------------
def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def tensor_data_offset(path: Path) -> int:
    """An offset inside the stored bytes of the largest tensor (not the zip structure)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    header = 30 + len(info.filename.encode()) + len(info.extra)  # local header, then the stored bytes
    return info.header_offset + header + info.file_size // 2


def central_directory_offset(path: Path) -> int:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return archive.start_dir


def damaged_copies(source: Path, tmp_path: Path) -> dict[str, Path]:
    copies = {}
    for kind in ("truncated", "tensor_bytes", "zip_structure"):
        folder = tmp_path / kind
        folder.mkdir()
        path = folder / source.name
        path.write_bytes(source.read_bytes())
        (folder / (source.name + ".sha256")).write_bytes((source.parent / (source.name + ".sha256")).read_bytes())
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "tensor_bytes":
            flip_byte(path, tensor_data_offset(path))
        else:
            flip_byte(path, central_directory_offset(path))  # the first entry's header signature
        copies[kind] = path
    return copies


def test_damaged_single_file_checkpoints_are_refused_naming_the_file(tmp_path, capsys):
    model = InfMAE(tiny_config(tmp_path).model).state_dict()
    good = ckpt.save_checkpoint(tmp_path / "run", 4, {"model": model, "step": 4})
    assert ckpt.verify_checkpoint(good)
    for kind, path in damaged_copies(good, tmp_path).items():
        with pytest.raises(ckpt.CheckpointError, match=rf"{path}.*damaged"):
            ckpt.load_checkpoint(path)
        assert main(["export", str(path), "-o", str(tmp_path / f"{kind}.pth")]) == 2, kind
        errors = error_lines(capsys)
        assert len(errors) == 1 and str(path) in errors[0], (kind, errors)
        # without its checksum file (as written before checksums) the reader still catches the zip damage
        if kind != "tensor_bytes":
            (path.parent / (path.name + ".sha256")).unlink()
            with pytest.raises(ckpt.CheckpointError, match="damaged or truncated"):
                ckpt.load_checkpoint(path)


def test_the_tensor_byte_flip_is_one_that_torch_alone_loads_silently(tmp_path):
    """The control for the test above: the flipped bytes are tensor data, which the zip reader accepts."""
    model = {"w": torch.arange(4096.0)}
    good = ckpt.save_checkpoint(tmp_path / "run", 1, {"model": model})
    path = damaged_copies(good, tmp_path)["tensor_bytes"]
    loaded = torch.load(path, weights_only=True)["model"]["w"]
    assert not torch.equal(loaded, model["w"])  # silently different weights


def dcp_folder(tmp_path: Path) -> Path:
    model = InfMAE(tiny_config(tmp_path).model).state_dict()
    extra = {"step": 5, "config": tiny_config(tmp_path).to_dict(), "world_size": 1}
    return ckpt.save_distributed_checkpoint(tmp_path / "dist", 5, {"model": model}, extra, {"rng": rng_state()})


@pytest.mark.parametrize("damage", ["truncated_shard", "flipped_shard", "missing_shard", "missing_metadata"])
def test_damaged_distributed_checkpoints_are_refused_naming_the_file(tmp_path, damage):
    folder = dcp_folder(tmp_path)
    assert (folder / ckpt.SUMS).is_file() and ckpt.verify_checkpoint(folder)
    assert ckpt.load_checkpoint(folder)["step"] == 5
    shard = max(folder.glob("*.distcp"), key=lambda p: p.stat().st_size)
    if damage == "truncated_shard":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "flipped_shard":
        flip_byte(shard, shard.stat().st_size // 2)
    elif damage == "missing_shard":
        shard.unlink()
    else:
        (folder / ".metadata").unlink()
    named = ".metadata" if damage == "missing_metadata" else shard.name
    with pytest.raises((ckpt.CheckpointError, FileNotFoundError), match=named):
        ckpt.load_checkpoint(folder)
    if damage != "missing_metadata":  # (a folder without .metadata is no checkpoint at all)
        with pytest.raises(ckpt.CheckpointError, match=r"only damaged ones \(step_00000005"):
            ckpt.open_newest_intact(tmp_path / "dist", load=False)
        assert (folder.parent / "step_00000005.damaged" / named).exists() or damage == "missing_shard"


# ----------------------------------------------------------------------------------------------
# resume falls back to the newest intact checkpoint
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "tensor_bytes", "missing"])
def test_resume_falls_back_to_the_newest_intact_checkpoint_and_stays_exact(tmp_path, data, whole, damage, caplog):
    run = tmp_path / "run"
    Trainer(tiny_config(data, max_steps=4), run).fit()  # checkpoints at steps 2 and 4
    latest = ckpt.latest_checkpoint(run)
    assert latest.name == "step_00000004.pt"
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:1000])
    elif damage == "tensor_bytes":
        flip_byte(latest, tensor_data_offset(latest))
    else:
        latest.unlink()
    caplog.set_level(logging.WARNING)
    trainer = Trainer(tiny_config(data, max_steps=6), run, resume=True)
    assert trainer.step == 2
    if damage != "missing":
        assert "step_00000004.pt" in caplog.text and "resuming from step_00000002.pt" in caplog.text
        assert (run / "checkpoints" / "step_00000004.pt.damaged").is_file()  # kept for inspection
    trainer.fit()
    assert losses(run) == losses(whole)  # bitwise
    assert same_weights(run, whole)


@pytest.mark.slow
def test_resume_with_only_damaged_checkpoints_is_an_error(tmp_path, data):
    run = tmp_path / "run"
    Trainer(tiny_config(data, max_steps=2), run).fit()
    latest = ckpt.latest_checkpoint(run)
    latest.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="only damaged ones"):
        Trainer(tiny_config(data, max_steps=4), run, resume=True)


# ----------------------------------------------------------------------------------------------
# --resume on a folder without a checkpoint
# ----------------------------------------------------------------------------------------------
def test_resume_of_a_folder_without_a_checkpoint_is_an_error(tmp_path, capsys):
    typo = tmp_path / "runs" / "paper_bsae"
    assert main(["pretrain", "--output", str(typo), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(typo) in err and "no such folder" in err and "--resume=auto" in err
    assert not typo.exists()  # nothing was created
    started = tmp_path / "started"
    started.mkdir()
    (started / "train.log").write_text("")
    assert main(["pretrain", "--output", str(started), "--resume"]) == 2
    assert "train.log but no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_auto_starts_a_new_run_then_continues_it(tmp_path, data, whole):
    run = tmp_path / "run"
    first = Trainer(tiny_config(data, max_steps=4), run, resume="auto")
    assert first.step == 0
    first.fit()
    second = Trainer(tiny_config(data, max_steps=6), run, resume="auto")
    assert second.step == 4
    second.fit()
    assert losses(run) == losses(whole)


# ----------------------------------------------------------------------------------------------
# disk full
# ----------------------------------------------------------------------------------------------
class FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def writable(self):
        return True

    def write(self, data):
        if self.room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()


def fill_disk_after(monkeypatch, room: int) -> None:
    real_save = torch.save
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, handle: real_save(obj, FullDisk(handle, room)))


def test_disk_full_names_the_file_and_keeps_latest(tmp_path, monkeypatch):
    first = ckpt.save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(1000)}})
    fill_disk_after(monkeypatch, 2000)
    with pytest.raises(ckpt.CheckpointWriteError) as raised:
        ckpt.save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(100_000)}})
    message = str(raised.value)
    assert "step_00000002.pt: No space left on device; step_00000001.pt is still `latest`" in message
    assert "\n" not in message
    assert_latest_alone(tmp_path, first)


@pytest.mark.slow
def test_disk_full_during_training_ends_in_one_line_also_in_train_log(tmp_path, data, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save = torch.save
    saves = []

    def second_save_fails(obj, handle):
        saves.append(1)
        real_save(obj, FullDisk(handle, 4096) if len(saves) == 2 else handle)

    monkeypatch.setattr(ckpt.torch, "save", second_save_fails)
    small = ["--set", "model.img_size=32,32", "--set", "model.embed_dims=8,16,32", "--set", "model.depths=1,1,1"]
    small += ["--set", "model.num_heads=2", "--set", "model.decoder_embed_dim=16", "--set", "model.decoder_depth=1"]
    small += ["--set", "model.decoder_num_heads=2", "--set", "train.batch_size=4", "--set", "train.max_steps=6"]
    small += ["--set", "train.checkpoint_every=2", "--set", "data.num_workers=0", "--set", "train.tensorboard=false"]
    code = main(["pretrain", "--preset", "demo", "--data", str(data), "--output", str(run), *small])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failure = [line for line in err.splitlines() if "ERROR" in line]
    assert len(failure) == 1 and "step_00000004.pt: No space left on device" in failure[0], err
    assert "step_00000002.pt is still `latest`" in failure[0]
    log_text = (run / "train.log").read_text()
    assert "No space left on device" in log_text and "Traceback" in log_text
    assert ckpt.latest_checkpoint(run).name == "step_00000002.pt"


@pytest.mark.slow
def test_a_killed_single_process_save_leaves_no_temporary_file_behind(tmp_path, data):
    run = tmp_path / "run"
    Trainer(tiny_config(data, max_steps=2), run).fit()
    left = run / "checkpoints" / ".step_00000004.pt.tmp-12345"  # what kill -9 during a write leaves
    left.write_bytes(b"partial")
    Trainer(tiny_config(data, max_steps=4), run, resume=True).fit()
    assert not left.exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
