"""Two ranks on gloo (CPU), spawned with torch.multiprocessing (no torchrun): the sharded run matches one
process on the same global batch, parameters stay identical across ranks, gradient accumulation matches
a larger batch, resume on 2 ranks is bit-exact, and a rank killed during a save leaves ``latest`` on the
previous, loadable checkpoint (saves written in the calling thread, and in the background)."""

import json
import logging
import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from infmae.training import checkpoint as ckpt
from infmae.training.trainer import Trainer
from tests.helpers import image_folder, losses, tiny_model, tiny_run
from tests.tolerances import tol

pytestmark = pytest.mark.distributed
WORLD = 2
STEPS = 3  # N: 16 images / global batch 8 = 2 steps per epoch, so 2N steps cross epoch boundaries


def tiny_config(data_path, **train):
    model = tiny_model(img_size=(48, 48))
    return tiny_run(data_path, model, **{"epochs": 4, "checkpoint_every": 1000, "tensorboard": False, **train})


class RecordingTrainer(Trainer):
    """Keeps the full (unsharded) parameter vector after every optimizer step."""

    def after_step(self) -> None:
        full = [
            p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
            for _, p in sorted(self.module.named_parameters())
        ]
        self.__dict__.setdefault("params_per_step", []).append(torch.cat([t.flatten() for t in full]).clone())


def _entry(rank, world, store_file, job, args):
    torch.set_num_threads(1)
    # a file rendezvous: no free-port race between picking a port and binding it
    dist.init_process_group(
        "gloo", init_method=f"file://{store_file}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    job(rank, *args)  # an exception here reaches mp.spawn as usual
    dist.barrier()
    # Skip the C++ teardown: gloo's process-group destructor sometimes aborts a finished worker
    # ("terminate called without an active exception", SIGABRT) after its job succeeded.
    logging.shutdown()
    os._exit(0)


def spawn(job, *args):
    store_file = os.path.join(tempfile.mkdtemp(prefix="infmae_pg_"), "store")
    mp.spawn(_entry, args=(WORLD, store_file, job, args), nprocs=WORLD, join=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return image_folder(tmp_path_factory, "dist_data", 16, seed=5)


# ----------------------------------------------------------------------------------------------
# 2 ranks vs 1 process; accumulation vs a larger batch; parameters equal across ranks
# ----------------------------------------------------------------------------------------------
def _job_parallel(rank, data, out, parallel):
    runs = {"big": dict(batch_size=4, accum_steps=1), "accum": dict(batch_size=2, accum_steps=2)}
    result = {}
    for name, train in runs.items():
        trainer = RecordingTrainer(tiny_config(data, max_steps=STEPS, parallel=parallel, **train), out / f"{name}")
        trainer.fit()
        result[name] = trainer.params_per_step
    torch.save(result, out / f"params_rank{rank}.pt")


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """One process, 8 images per step: the reference for 2 ranks x 4 images."""
    run = tmp_path_factory.mktemp("single") / "run"
    trainer = RecordingTrainer(tiny_config(data, max_steps=STEPS, batch_size=8), run)
    trainer.fit()
    return losses(run), trainer.params_per_step, losses(run, "grad_norm")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_ranks_match_one_process_and_stay_identical(tmp_path, data, single, parallel):
    ref, ref_params, ref_norms = single
    spawn(_job_parallel, data, tmp_path, parallel)
    ranks = [torch.load(tmp_path / f"params_rank{r}.pt") for r in range(WORLD)]

    # identical parameters on every rank after each step (bitwise)
    for name in ("big", "accum"):
        assert len(ranks[0][name]) == STEPS
        for step in range(STEPS):
            assert torch.equal(ranks[0][name][step], ranks[1][name][step]), (name, step)

    # 2 ranks x 4 images == 1 process x 8 images (the same 8 images per step)
    two = losses(tmp_path / "big")
    assert len(ref) == len(two) == STEPS
    torch.testing.assert_close(
        torch.tensor(two, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64), **tol("distributed_loss")
    )
    for step in range(STEPS):
        torch.testing.assert_close(ranks[0]["big"][step], ref_params[step], **tol("distributed_params"))
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "big", "grad_norm"), dtype=torch.float64),
        torch.tensor(ref_norms, dtype=torch.float64),
        **tol("distributed_grad_norm"),
    )

    # accumulation: 2 micro-batches of 2 == one batch of 4 (per rank)
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "accum"), dtype=torch.float64),
        torch.tensor(two, dtype=torch.float64),
        **tol("accumulation_loss"),
    )
    for step in range(STEPS):
        torch.testing.assert_close(ranks[0]["accum"][step], ranks[0]["big"][step], **tol("accumulation_params"))


def _job_channels_last(rank, data, out, parallel):
    trainer = Trainer(tiny_config(data, max_steps=1, parallel=parallel, channels_last=True), out / parallel)
    assert trainer.fit().steps == 1
    weight = trainer.module.patch_embed1.proj.weight
    weight = weight.to_local() if hasattr(weight, "to_local") else weight
    # FSDP2 refuses non-contiguous parameters: its weights stay NCHW, DDP's take NHWC strides
    assert weight.is_contiguous(memory_format=torch.channels_last) == (parallel == "ddp")


@pytest.mark.slow
def test_the_engines_channels_last_runs_under_fsdp_and_ddp(tmp_path, data):
    """The engine sets channels_last on CUDA, and the default multi-rank mode is FSDP2: a run must start."""
    for parallel in ("fsdp", "ddp"):
        spawn(_job_channels_last, data, tmp_path, parallel)


# ----------------------------------------------------------------------------------------------
# exact resume on 2 ranks; a rank killed during a save
# ----------------------------------------------------------------------------------------------
# grad_clip exercises the sharded clipping path (a global norm over every rank's shards) on every step
def _job_first_half(rank, data, out):
    Trainer(tiny_config(data, grad_clip=0.5, max_steps=2 * STEPS), out / "whole").fit()
    Trainer(tiny_config(data, grad_clip=0.5, max_steps=STEPS), out / "split").fit()
    Trainer(tiny_config(data, grad_clip=0.5, max_steps=STEPS), out / "killed").fit()


def _job_dies_while_saving(rank, data, out):
    if rank == 1:  # rank 1 dies after writing its RNG file, inside the collective shard write

        def die(tensors, folder):
            os._exit(17)

        ckpt._write_shards = die
    Trainer(
        tiny_config(data, grad_clip=0.5, max_steps=2 * STEPS, checkpoint_every=1), out / "killed", resume=True
    ).fit()


def _job_resume(rank, data, out):
    Trainer(tiny_config(data, grad_clip=0.5, max_steps=2 * STEPS), out / "split", resume=True).fit()
    Trainer(tiny_config(data, grad_clip=0.5, max_steps=2 * STEPS), out / "killed", resume=True).fit()


@pytest.mark.slow
def test_resume_on_two_ranks_is_bit_exact_and_survives_a_killed_save(tmp_path, data):
    spawn(_job_first_half, data, tmp_path)
    first = ckpt.latest_checkpoint(tmp_path / "killed")
    assert first.name == f"step_{STEPS:08d}" and ckpt.is_distributed_checkpoint(first)

    with pytest.raises(mp.ProcessExitedException):
        spawn(_job_dies_while_saving, data, tmp_path)
    folder = tmp_path / "killed" / "checkpoints"
    assert ckpt.latest_checkpoint(tmp_path / "killed") == first  # `latest` still names the previous one
    assert (folder / "latest").read_text() == first.name
    assert (folder / f".step_{STEPS + 1:08d}.tmp").is_dir()  # the half-written save, never renamed
    state = ckpt.load_checkpoint(tmp_path / "killed")  # loadable, consolidated in this one process
    assert state["step"] == STEPS and state["world_size"] == WORLD
    assert set(state["model"]) >= {"mask_token", "blocks3.0.attn.qkv.weight"}

    spawn(_job_resume, data, tmp_path)
    whole = losses(tmp_path / "whole")
    assert len(whole) == 2 * STEPS
    assert losses(tmp_path / "split") == whole  # bitwise: floats round-trip exactly through JSON
    assert losses(tmp_path / "killed") == whole
    assert not (folder / f".step_{STEPS + 1:08d}.tmp").exists()  # cleaned by the next save
    a = ckpt.load_checkpoint(tmp_path / "whole")["model"]
    b = ckpt.load_checkpoint(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# exact resume with train.async_checkpoint: DCP writes in the background, on a gloo group of their own
# ----------------------------------------------------------------------------------------------
def _job_async_first_half(rank, data, out):
    Trainer(tiny_config(data, grad_clip=0.5, max_steps=2 * STEPS), out / "whole").fit()
    # a save after every step: each one is still being written while the next step trains
    Trainer(
        tiny_config(data, grad_clip=0.5, max_steps=STEPS, checkpoint_every=1, async_checkpoint=True), out / "async"
    ).fit()


def _job_dies_in_the_background_write(rank, data, out):
    if rank == 1:  # rank 1 dies in DCP's writer thread, while its main thread trains on
        import torch.distributed.checkpoint as dcp

        def die(*args, **kwargs):
            os._exit(17)

        dcp.FileSystemWriter.write_data = die
    Trainer(
        tiny_config(data, grad_clip=0.5, max_steps=2 * STEPS, checkpoint_every=1, async_checkpoint=True),
        out / "async",
        resume=True,
    ).fit()


def _job_async_resume(rank, data, out):
    Trainer(
        tiny_config(data, grad_clip=0.5, max_steps=2 * STEPS, checkpoint_every=2, async_checkpoint=True),
        out / "async",
        resume=True,
    ).fit()


@pytest.mark.slow
def test_async_saves_on_two_ranks_resume_exactly_and_survive_a_killed_write(tmp_path, data):
    spawn(_job_async_first_half, data, tmp_path)
    first = ckpt.latest_checkpoint(tmp_path / "async")
    assert first.name == f"step_{STEPS:08d}" and ckpt.is_distributed_checkpoint(first)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "async")] == [
        f"step_{s:08d}" for s in range(STEPS - 2, STEPS + 1)
    ]  # keep_last=3 of the saves at every step

    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        spawn(_job_dies_in_the_background_write, data, tmp_path)
    folder = tmp_path / "async" / "checkpoints"
    assert ckpt.latest_checkpoint(tmp_path / "async") == first
    assert (folder / "latest").read_text() == first.name
    assert not (folder / f"step_{STEPS + 1:08d}").exists()  # never published
    assert ckpt.load_checkpoint(tmp_path / "async")["step"] == STEPS

    spawn(_job_async_resume, data, tmp_path)
    whole = losses(tmp_path / "whole")
    assert losses(tmp_path / "async") == whole  # bitwise
    a = ckpt.load_checkpoint(tmp_path / "whole")["model"]
    b = ckpt.load_checkpoint(tmp_path / "async")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# held-out evaluation on 2 ranks: each rank evaluates its share, the sums are reduced
# ----------------------------------------------------------------------------------------------
def _job_evaluate(rank, data, out):
    config = tiny_config(data, max_steps=2, eval_every=2)
    config.data.val_fraction = 0.3
    trainer = Trainer(config, out / "val")
    trainer.fit()
    result = trainer.evaluate()  # once more after training: every rank gets the reduced numbers
    torch.save({"result": result.record(), "held_out": len(trainer.val_dataset)}, out / f"val_rank{rank}.pt")


@pytest.mark.slow
def test_validation_is_sharded_over_ranks_and_reduced(tmp_path, data):
    spawn(_job_evaluate, data, tmp_path)
    ranks = [torch.load(tmp_path / f"val_rank{r}.pt") for r in range(WORLD)]
    assert ranks[0] == ranks[1]  # the same reduced numbers on every rank
    result, held_out = ranks[0]["result"], ranks[0]["held_out"]
    assert result["val_images"] == held_out - held_out % WORLD and result["val_images"] >= WORLD
    assert 0 < result["val_loss"] < 10 and 0 < result["val_baseline_loss"] < 10
    records = [json.loads(line) for line in (tmp_path / "val" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "val_loss" in r]  # the run's evaluation at its end, then the test's
    assert [r["step"] for r in logged] == [2, 2] and logged[1]["val_loss"] == result["val_loss"]
    assert logged[0] | {"time": 0} == logged[1] | {"time": 0}  # the model did not change in between
