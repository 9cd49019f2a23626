"""Single-process pieces of the distributed trainer: config fields, optional Apex, the log line,
parallelize without a process group, a DCP checkpoint folder written and read in one process."""

import pytest
import torch

from infmae.config import TrainConfig, apply_overrides, preset
from infmae.model.infmae import InfMAE
from infmae.training import checkpoint as ckpt
from infmae.training.metrics import format_line
from infmae.training.optim import build_optimizer
from infmae.training.parallel import parallelize
from tests.helpers import tiny_model


def test_new_train_fields_are_validated():
    config = apply_overrides(
        preset("demo"),
        [
            "train.parallel=ddp",
            "train.activation_checkpointing=true",
            "train.fsdp_group=3",
            "train.optimizer=apex_lamb",
        ],
    )
    assert (config.train.parallel, config.train.activation_checkpointing, config.train.fsdp_group) == ("ddp", True, 3)
    with pytest.raises(ValueError, match="train.parallel"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="train.optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="train.fsdp_group"):
        TrainConfig(fsdp_group=0)


def test_apex_optimizers_fail_clearly_where_they_cannot_run():
    model = torch.nn.Linear(4, 4)
    for name in ("apex_adam", "apex_lamb"):
        with pytest.raises(ValueError, match="optimizer: expected a CUDA device .*use train.optimizer=adamw"):
            build_optimizer(model, TrainConfig(optimizer=name), 1e-3, torch.device("cpu"))


def test_log_line_shows_per_device_and_total_rate_and_mfu():
    record = {
        "step": 10,
        "total_steps": 20,
        "epoch": 1,
        "loss": 0.5,
        "lr": 1e-3,
        "grad_norm": 0.2,
        "img_per_s": 50.0,
        "img_per_s_total": 100.0,
        "world_size": 2,
        "data_wait_pct": 3.0,
        "mem_gib": 1.0,
        "eta_s": 61,
        "mfu": None,
    }
    line = format_line(record)
    assert "img/s 50.0/gpu 100.0 total" in line and line.endswith("mfu n/a")
    assert format_line({**record, "world_size": 1, "mfu": 0.42}).endswith("mfu 42.0%")


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", None),
    ],
)
def test_mfu_peak_follows_the_board(name, peak, monkeypatch):
    from infmae.training import metrics

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert metrics.peak_tflops(torch.device("cuda", 0)) == peak
    assert metrics.peak_tflops(torch.device("cpu")) is None


def test_parallelize_without_a_mesh_keeps_names_and_results():
    config = tiny_model(depths=(1, 1, 2))
    torch.manual_seed(0)
    plain = InfMAE(config)
    torch.manual_seed(0)
    wrapped = parallelize(InfMAE(config), TrainConfig(activation_checkpointing=True), None, torch.device("cpu"))
    assert plain.state_dict().keys() == wrapped.state_dict().keys()
    images = torch.randn(2, 3, 32, 32)
    a, b = plain(images), wrapped(images)
    a.loss.backward()
    b.loss.backward()
    assert torch.equal(a.loss, b.loss)
    grads = dict(wrapped.named_parameters())
    for name, p in plain.named_parameters():
        if p.grad is not None:
            key = next(k for k in grads if k.replace("_checkpoint_wrapped_module.", "") == name)
            torch.testing.assert_close(grads[key].grad, p.grad, atol=0, rtol=0)


def test_a_dcp_folder_is_listed_loaded_and_pruned_in_one_process(tmp_path):
    for step in (1, 2, 3):
        tensors = {"model": {"w": torch.full((3,), float(step))}, "optimizer": {}}
        ckpt.save_distributed_checkpoint(
            tmp_path, step, tensors, {"step": step, "world_size": 1}, {"rng": step}, keep_last=2
        )
    stale = tmp_path / "checkpoints" / ".step_00000009.tmp"
    stale.mkdir()  # a save killed half-way: never listed
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.full((3,), 3.0))


@pytest.mark.slow
@pytest.mark.dali
def test_bench_train_runs_its_default_variants_on_both_inputs(tmp_path, caplog):
    from bench import bench_train
    from infmae.data import generate_dataset

    generate_dataset(tmp_path / "images", 6, seed=0, sizes=[(64, 80)], include_bad=False)
    caplog.set_level("INFO", logger="bench_train")
    argv = [
        "--quick",
        "--batch-sizes",
        "2",
        "--reps",
        "1",
        "--no-write",
        "--data",
        str(tmp_path / "images"),
        "--threads",
        "1",
    ]
    assert bench_train.main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if "img/s" in r.getMessage()]
    assert len(lines) == 6 and all("MFU n/a" in line for line in lines)  # reference, engine_default, engine
    for source in ("synthetic", "dali"):
        assert sum(line.startswith(source) for line in lines) == 3
        assert any(line.startswith(source) and "engine/reference" in line for line in lines)
        assert any(line.startswith(source) and "engine_default/reference" in line for line in lines)


def test_other_ranks_log_errors_only_and_tagged(capsys):
    import logging

    from infmae.logging_utils import setup_logging

    root = logging.getLogger()
    level = root.level
    try:
        setup_logging(rank=1)
        logging.getLogger("infmae.data.folder").warning("dropping tiny.png: too_small")  # rank 0 says it too
        logging.getLogger("infmae.training.trainer").error("non-finite loss")
        err = capsys.readouterr().err
        assert "too_small" not in err and "[rank 1]" in err and "non-finite loss" in err
        setup_logging(rank=0)
        logging.getLogger("infmae.data.folder").warning("dropping tiny.png: too_small")
        err = capsys.readouterr().err
        assert "too_small" in err and "[rank" not in err
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_infmae", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
