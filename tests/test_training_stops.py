"""Stopping on purpose and being stopped: SIGTERM / SIGINT / SIGUSR1 finish the step, save and exit
(1 process and 2 ranks, during a step and during a background save), a second Ctrl-C aborts at once, a
hung rank is named within the collective timeout, and kill -9 at random points of a save always leaves
a run that resumes bit-identically."""

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from infmae.cli import main
from infmae.training import checkpoint as ckpt
from infmae.training.trainer import Trainer
from tests.helpers import finished_run, image_folder, losses
from tests.test_checkpoint_safety import same_weights, tiny_config

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return image_folder(tmp_path_factory, "stop_data", 16, seed=7)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    return finished_run(tmp_path_factory, tiny_config(data, max_steps=STEPS))


class SignalAfterStep(Trainer):
    """Sends ``signum`` to its own process after optimizer step ``at`` (``times`` times)."""

    at, signum, times = 3, signal.SIGTERM, 1

    def after_step(self) -> None:
        if self.step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


# ----------------------------------------------------------------------------------------------
# one process
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "signum, background",
    [
        (signal.SIGTERM, False),
        pytest.param(signal.SIGINT, False, marks=pytest.mark.slow),
        pytest.param(signal.SIGUSR1, False, marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, True, marks=pytest.mark.slow),
    ],
)
def test_a_signal_finishes_the_step_saves_and_the_run_resumes_exactly(
    tmp_path, data, whole, signum, background, caplog
):
    run = tmp_path / "run"
    caplog.set_level(logging.INFO)
    trainer = SignalAfterStep(tiny_config(data, max_steps=STEPS, async_checkpoint=background), run)
    trainer.signum = signum
    summary = trainer.fit()
    assert summary.stopped_by == signum and summary.steps == 3
    assert ckpt.latest_checkpoint(run).name == "step_00000003.pt"
    name = signal.Signals(signum).name
    assert f"stopped at step 3 by {name}" in caplog.text
    assert f"continue with: infmae pretrain --output {run} --resume" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is not trainer  # handlers restored: the defaults are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    Trainer(tiny_config(data, max_steps=STEPS, async_checkpoint=background), run, resume=True).fit()
    assert losses(run) == losses(whole)  # bitwise
    assert same_weights(run, whole)


@pytest.mark.slow
def test_a_signal_during_a_background_save_waits_for_it_then_saves_the_step(tmp_path, data, whole, monkeypatch):
    run = tmp_path / "run"
    real_save = ckpt.save_checkpoint

    def slow_save_that_gets_a_signal(run_dir, step, state, keep_last):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while this write is in flight and the next step trains
        time.sleep(0.3)
        return real_save(run_dir, step, state, keep_last)

    monkeypatch.setattr(ckpt, "save_checkpoint", slow_save_that_gets_a_signal)
    summary = Trainer(tiny_config(data, max_steps=STEPS, async_checkpoint=True), run).fit()
    # the signal lands while step 2's save is being written: the run stops after the step in flight (2 or
    # 3, as the threads are scheduled), with step 2's save complete and the stop step saved
    assert summary.stopped_by == signal.SIGTERM and summary.steps in (2, 3)
    saved = [p.name for p in ckpt.list_checkpoints(run)]
    assert saved == ["step_00000002.pt"] + (["step_00000003.pt"] if summary.steps == 3 else []), saved
    assert ckpt.latest_checkpoint(run).name == f"step_{summary.steps:08d}.pt"
    monkeypatch.undo()
    Trainer(tiny_config(data, max_steps=STEPS), run, resume=True).fit()
    assert losses(run) == losses(whole)
    assert same_weights(run, whole)


def test_a_signal_in_the_last_step_just_finishes(tmp_path, data):
    trainer = SignalAfterStep(tiny_config(data, max_steps=3), tmp_path / "run")
    summary = trainer.fit()
    assert summary.stopped_by is None and summary.steps == 3


def cli_args(data, run, steps):
    small = [
        "model.img_size=32,32",
        "model.embed_dims=8,16,32",
        "model.depths=1,1,1",
        "model.num_heads=2",
        "model.decoder_embed_dim=16",
        "model.decoder_depth=1",
        "model.decoder_num_heads=2",
        "train.batch_size=4",
        f"train.max_steps={steps}",
        "train.log_every=1",
        "train.checkpoint_every=1000",
        "train.tensorboard=false",
    ]
    args = ["pretrain", "--preset", "demo", "--data", str(data), "--output", str(run)]
    for item in small:
        args += ["--set", item]
    return args


def test_cli_exit_codes_for_a_stop_and_for_a_second_ctrl_c(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "after_step", SignalAfterStep.after_step)
    monkeypatch.setattr(Trainer, "at", 2, raising=False)
    monkeypatch.setattr(Trainer, "times", 1, raising=False)
    monkeypatch.setattr(Trainer, "signum", signal.SIGTERM, raising=False)
    run = tmp_path / "stopped"
    assert main([*cli_args(data, run, 5), "--set", "data.num_workers=0"]) == 128 + signal.SIGTERM
    assert ckpt.latest_checkpoint(run).name == "step_00000002.pt"
    assert "stopped at step 2 by SIGTERM" in (run / "train.log").read_text()

    monkeypatch.setattr(Trainer, "signum", signal.SIGINT, raising=False)
    monkeypatch.setattr(Trainer, "times", 2, raising=False)  # Ctrl-C twice: abort at once, no save
    aborted = tmp_path / "aborted"
    assert main([*cli_args(data, aborted, 5), "--set", "data.num_workers=0"]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "Traceback" not in err and "aborted by a second Ctrl-C in step 3" in err, err
    assert ckpt.latest_checkpoint(aborted) is None


@pytest.mark.slow
def test_sigterm_to_the_whole_job_with_loader_workers_stops_cleanly(tmp_path, data):
    """What a scheduler does: SIGTERM to every process of the job, loader workers included."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "infmae", *cli_args(data, run, 10_000), "--set", "data.num_workers=2"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    assert job.poll() is None, job.communicate()
    os.killpg(job.pid, signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "stopped at step" in err, err
    step = ckpt.load_checkpoint(run)["step"]
    assert step >= 3 and ckpt.latest_checkpoint(run).name == f"step_{step:08d}.pt"
    assert f"continue with: infmae pretrain --output {run} --resume" in err
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "infmae",
            "pretrain",
            "--output",
            str(run),
            "--resume",
            "--set",
            f"train.max_steps={step + 2}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {ckpt.latest_checkpoint(run).parent / f'step_{step:08d}.pt'} at step {step}" in resumed.stderr


# ----------------------------------------------------------------------------------------------
# kill -9 at random points of a save (sync and background): always resumable, bit-identical
# ----------------------------------------------------------------------------------------------
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from infmae.training import checkpoint as ckpt
    from infmae.training.trainer import Trainer
    from tests.test_checkpoint_safety import tiny_config

    data, run, target, nth, background = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    calls = {"n": 0}

    def die_on(name, original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapper

    if target == "torch.save":  # die half-way through the bytes of a checkpoint
        real_save = torch.save
        class Dying:
            def __init__(self, handle):
                self.handle, self.written = handle, 0
            def write(self, data):
                self.written += len(data)
                if self.written > 20_000:
                    os.kill(os.getpid(), signal.SIGKILL)
                return self.handle.write(data)
            def flush(self):
                self.handle.flush()
        def save(obj, handle):
            calls["n"] += 1
            return real_save(obj, Dying(handle) if calls["n"] == nth else handle)
        ckpt.torch.save = save
    else:
        setattr(ckpt, target, die_on(target, getattr(ckpt, target)))
    Trainer(tiny_config(data, max_steps=6, checkpoint_every=1, async_checkpoint=background), Path(run)).fit()
    """
)
KILL_POINTS = ["torch.save", "_atomic_write", "sha256_of", "_point_latest", "_prune"]


@pytest.mark.slow
def test_kill_campaign_during_saves_always_resumes_bit_identically(tmp_path, data, whole):
    rng = random.Random(20261205)  # a few random kill points, the same in every run of the suite
    # each kill point runs once per save (6 saves), _atomic_write three times
    cases = [(rng.choice(KILL_POINTS), rng.randint(1, 6), background) for background in (False, True, False, True)]
    root = Path(__file__).resolve().parent.parent
    for number, (target, nth, background) in enumerate(cases):
        run = tmp_path / f"kill{number}"
        killed = subprocess.run(
            [sys.executable, "-c", KILLER, str(data), str(run), target, str(nth), "1" if background else "0"],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=300,
        )
        assert killed.returncode == -signal.SIGKILL, (target, nth, killed.stderr[-2000:])
        Trainer(tiny_config(data, max_steps=STEPS, checkpoint_every=1), run, resume="auto").fit()
        assert losses(run) == losses(whole), (target, nth, background)
        assert same_weights(run, whole), (target, nth, background)
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
        assert not leftovers, leftovers


# ----------------------------------------------------------------------------------------------
# two ranks (gloo): a signal on one rank stops both at the same step; a hung rank is named
# ----------------------------------------------------------------------------------------------
from tests.test_distributed_training import spawn  # noqa: E402

HUNG_TIMEOUT_S = 20  # the default group's and the trainer's collective timeout in the hung-rank test


def _entry_with_timeout(rank, world, store_file, job, args):
    """tests.test_distributed_training's worker entry, with a short timeout on the default group too (as
    ``infmae pretrain`` sets it from train.collective_timeout_s under torchrun)."""
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=HUNG_TIMEOUT_S),
    )
    job(rank, *args)


def _job_stop_on_one_rank(rank, data, out, background, signum):
    config = dict(max_steps=STEPS, checkpoint_every=2, async_checkpoint=background)
    Trainer(tiny_config(data, **config), out / "whole").fit()
    trainer = SignalAfterStep(tiny_config(data, **config), out / "stopped")
    trainer.signum = signum if rank == 1 else None  # only rank 1 is told to stop
    if rank != 1:
        trainer.at = -1
    summary = trainer.fit()
    torch.save({"steps": summary.steps, "stopped_by": summary.stopped_by}, out / f"stop_rank{rank}.pt")
    Trainer(tiny_config(data, **config), out / "stopped", resume=True).fit()


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("background, signum", [(False, signal.SIGTERM), (True, signal.SIGTERM), (True, signal.SIGINT)])
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, data, background, signum):
    spawn(_job_stop_on_one_rank, data, tmp_path, background, signum)
    for rank in range(2):
        assert torch.load(tmp_path / f"stop_rank{rank}.pt") == {"steps": 3, "stopped_by": signum}
    assert losses(tmp_path / "stopped") == losses(tmp_path / "whole")  # bitwise, after the resume
    assert same_weights(tmp_path / "stopped", tmp_path / "whole")


def _job_rank_one_hangs(rank, data, out):
    (out / f"pid{rank}").write_text(str(os.getpid()))
    trainer = SignalAfterStep(tiny_config(data, max_steps=STEPS, collective_timeout_s=HUNG_TIMEOUT_S), out / "hung")
    trainer.signum = signal.SIGSTOP if rank == 1 else None  # stopped, not dead: it holds its sockets open
    if rank != 1:
        trainer.at = -1
    started = time.time()
    try:
        trainer.fit()
    except RuntimeError as error:
        (out / "message").write_text(f"{time.time() - started:.1f}\n{error}")
    finally:
        if rank == 0:
            os.kill(int((out / "pid1").read_text()), signal.SIGKILL)
            logging.shutdown()
            os._exit(0)


@pytest.mark.distributed
@pytest.mark.slow
def test_a_stopped_rank_is_named_within_the_collective_timeout(tmp_path, data):
    import tempfile

    import torch.multiprocessing as mp

    store_file = os.path.join(tempfile.mkdtemp(prefix="infmae_pg_"), "store")
    with pytest.raises(mp.ProcessExitedException):  # rank 1 ends killed
        mp.spawn(_entry_with_timeout, args=(2, store_file, _job_rank_one_hangs, (data, tmp_path)), nprocs=2)
    seconds, message = (tmp_path / "message").read_text().split("\n", 1)
    assert float(seconds) < 3 * HUNG_TIMEOUT_S, message  # not the 30 minutes of torch's default
    assert f"train.collective_timeout_s={HUNG_TIMEOUT_S}" in message, message
    assert "rank 1 (last at step 2) did not reach step 3" in message, message
