"""The engine: device-dependent defaults resolved in one place (``resolve_for_device``) and shown by
``infmae config show --device``; channels-last conv stages, the bf16 residual stream and per-block
``torch.compile`` equal the eager fp32 reference within the tolerance table; no recompiles after warm-up."""

import json

import pytest
import torch

from infmae import cli
from infmae import config as config_module
from infmae.config import Config, TrainConfig, apply_overrides, preset, resolve_for_device
from infmae.data import generate_dataset
from infmae.training import checkpoint as ckpt
from infmae.training.engine import compile_options, prepare_model, to_model_input
from infmae.training.parallel import apply_compile
from infmae.training.trainer import Trainer
from tests.engine_cases import demo_model, images, step_grads
from tests.test_training import losses, tiny_config
from tests.tolerances import TOLERANCES, tol


def _show(capsys, *args) -> dict:
    assert cli.main(["config", "show", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def no_dali(monkeypatch):
    monkeypatch.setattr(config_module, "dali_importable", lambda: False)
    monkeypatch.setattr(config_module, "loader_workers_per_rank", lambda: 15)


def test_config_show_paper_base_cuda_is_the_engine(capsys, no_dali):
    shown = _show(capsys, "--preset", "paper_base", "--device", "cuda")
    train, data = shown["train"], shown["data"]
    assert shown["preset"] == "paper_base"
    assert (train["engine"], train["compile"], train["channels_last"], train["bf16_residual"]) == (
        "engine",
        True,
        True,
        True,
    )
    assert (train["precision"], train["cuda_graphs"], train["wire_uint16"]) == ("bf16", False, True)
    assert (data["loader"], data["num_workers"]) == ("reference", 15)  # no DALI here: workers per core
    assert shown["model"]["encoder"] == "dense"
    # exactly what a run writes to config.json
    assert shown == json.loads(resolve_for_device(preset("paper_base"), "cuda").to_json())


def test_config_show_paper_base_cpu_is_the_reference(capsys, no_dali):
    shown = _show(capsys, "--preset", "paper_base", "--device", "cpu")
    reference = json.loads(preset("paper_base").to_json())
    reference["train"]["engine"] = "reference"  # 'auto' made explicit; nothing else changes on the CPU
    assert shown == reference
    assert (shown["train"]["compile"], shown["train"]["channels_last"], shown["data"]["num_workers"]) == (
        False,
        False,
        2,
    )


def test_dali_is_picked_on_cuda_when_importable(monkeypatch):
    monkeypatch.setattr(config_module, "dali_importable", lambda: True)
    assert resolve_for_device(preset("official_base"), "cuda").data.loader == "dali"
    assert resolve_for_device(preset("official_base"), "cpu").data.loader == "reference"


def test_loader_workers_are_the_cores_per_local_rank_less_one():
    assert config_module.loader_workers_per_rank(cores=128, local_ranks=8) == 15
    assert config_module.loader_workers_per_rank(cores=16, local_ranks=8) == 2  # never under the CPU default
    assert config_module.loader_workers_per_rank(cores=32, local_ranks=1) == 31


def test_reference_is_one_switch_away_and_resolution_is_idempotent(capsys, no_dali):
    shown = _show(capsys, "--preset", "paper_base", "--device", "cuda", "--set", "train.engine=reference")
    assert (shown["train"]["engine"], shown["train"]["compile"], shown["train"]["channels_last"]) == (
        "reference",
        False,
        False,
    )
    once = resolve_for_device(preset("paper_base"), "cuda")
    assert resolve_for_device(once, "cuda") == once
    assert resolve_for_device(Config.from_dict(json.loads(once.to_json())), "cuda") == once  # a resumed run
    assert preset("paper_base").train.engine == "auto"  # the input is not modified


def test_engine_field_is_validated():
    with pytest.raises(ValueError, match="train.engine"):
        apply_overrides(preset("demo"), ["train.engine=fast"])
    with pytest.raises(ValueError, match="device 'cpu' or 'cuda'"):
        resolve_for_device(preset("demo"), "tpu")


def test_cuda_graphs_switch_picks_the_compile_mode():
    assert compile_options(TrainConfig(), "cpu") == {"dynamic": False, "mode": None}
    assert compile_options(TrainConfig(), "cuda")["mode"] == "max-autotune-no-cudagraphs"
    assert compile_options(TrainConfig(cuda_graphs=True), "cuda")["mode"] == "reduce-overhead"


def _assert_grads_close(grads, reference, name):
    assert grads.keys() == reference.keys()
    atol_scale = TOLERANCES[(name, torch.float32)][0]
    for key, expected in reference.items():
        atol = atol_scale * float(expected.abs().max())
        torch.testing.assert_close(grads[key], expected, atol=atol, rtol=0.0, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("encoder", ["dense", "sparse"])
def test_channels_last_step_equals_the_reference(encoder):
    """fp32, CPU: the channels-last model (its own strides in every conv stage) gives the reference's loss
    and gradients; its state dict loads into the reference model strictly and unchanged."""
    reference, engine_model = demo_model(encoder), demo_model(encoder)
    prepare_model(engine_model, TrainConfig(engine="engine", channels_last=True), torch.device("cpu"))
    # NHWC weights for the dense stages' convs; the sparse encoder runs no conv on a map and keeps them
    nhwc = engine_model.patch_embed1.proj.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc == (encoder == "dense")
    imgs = images(4, seed=1)
    loss, grads = step_grads(reference, imgs)
    engine_imgs = to_model_input(imgs, TrainConfig(channels_last=True), engine_model)
    assert engine_imgs.is_contiguous(memory_format=torch.channels_last) == (encoder == "dense")
    engine_loss, engine_grads = step_grads(engine_model, engine_imgs)
    torch.testing.assert_close(engine_loss, loss, **tol("channels_last_loss"))
    _assert_grads_close(engine_grads, grads, "channels_last_grad")
    state = engine_model.state_dict()
    fresh = demo_model(encoder, seed=5)
    fresh.load_state_dict(state, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_channels_last_layer_norm_makes_no_copy():
    """In channels-last memory the NHWC view LayerNorm reads is the tensor's own layout, and the result is a
    channels-last map again (so the next conv needs no conversion)."""
    model = demo_model().to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 24, 24).contiguous(memory_format=torch.channels_last)
    out = model.blocks1[0](x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert x.permute(0, 2, 3, 1).is_contiguous()  # the view LayerNorm normalises: no copy


@pytest.mark.parametrize("encoder", ["dense", "sparse"])
def test_bf16_engine_stages_equal_the_reference_within_bf16(encoder):
    """Under bf16 autocast with channels-last stages and the bf16 residual stream, the latent is within the
    bf16 tolerance of the fp32 reference; the masking (fp32 score and sort) is identical."""
    reference, engine_model = demo_model(encoder), demo_model(encoder)
    engine = TrainConfig(engine="engine", channels_last=True, precision="bf16", bf16_residual=True)
    prepare_model(engine_model, engine, torch.device("cpu"))
    engine_model.residual_dtype = torch.bfloat16  # prepare_model sets it on CUDA only
    # the stage inputs pass through `residual` (2: stages 1 and 2), in either encoder, and come out bf16
    # (on the CPU autocast's LayerNorm returns bf16 anyway, so the dtype of a block's output proves nothing)
    stage_inputs = []
    original = engine_model.residual
    engine_model.residual = lambda x: stage_inputs.append(original(x.float())) or stage_inputs[-1]
    imgs = images(4, seed=2)
    with torch.no_grad():
        latent, masking = reference.forward_encoder(imgs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            engine_latent, engine_masking = engine_model.forward_encoder(to_model_input(imgs, engine, engine_model))
    assert [x.dtype for x in stage_inputs] == [torch.bfloat16, torch.bfloat16]
    for got, expected in zip(engine_masking, masking):
        assert torch.equal(got, expected)
    torch.testing.assert_close(engine_latent.float(), latent, **tol("engine_bf16_latent", torch.bfloat16))


def test_residual_dtype_changes_nothing_without_autocast():
    reference, engine_model = demo_model(), demo_model()
    engine_model.residual_dtype = torch.bfloat16
    imgs = images(2, seed=3)
    with torch.no_grad():
        assert torch.equal(engine_model(imgs).loss, reference(imgs).loss)


@pytest.mark.slow  # inductor compiles 4 block graphs forward and backward: ~45 s on a 2-core CPU
@pytest.mark.parametrize("encoder", ["dense", "sparse"])
def test_compiled_step_equals_eager_and_never_recompiles(encoder):
    """The engine's CPU model (channels-last where it applies, per-block torch.compile with the engine's
    options, inductor) vs the eager reference step: loss and every gradient within the table; then 20 steps
    on different images compile nothing new (dynamo counters)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    engine = TrainConfig(engine="engine", compile=True, channels_last=True)  # resolve_for_device's CPU engine
    eager, compiled = demo_model(encoder), demo_model(encoder)
    prepare_model(compiled, engine, torch.device("cpu"))
    apply_compile(compiled, **compile_options(engine, "cpu"))
    imgs = images(4, seed=4)
    loss, grads = step_grads(eager, imgs)
    compiled_loss, compiled_grads = step_grads(compiled, to_model_input(imgs, engine, compiled))
    torch.testing.assert_close(compiled_loss, loss, **tol("compiled_step_loss"))
    _assert_grads_close(compiled_grads, grads, "compiled_step_grad")

    graphs_after_warm_up = counters["stats"]["unique_graphs"]
    assert graphs_after_warm_up > 0  # the blocks did compile
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises, naming its guard
        for seed in range(20):
            step_grads(compiled, to_model_input(images(4, seed=100 + seed), engine, compiled))
    assert counters["stats"]["unique_graphs"] == graphs_after_warm_up


def test_a_config_written_before_the_engine_resumes_as_the_reference():
    saved = json.loads(preset("paper_base").to_json())
    del saved["train"]["engine"]
    old = Config.from_dict(saved)
    assert old.train.engine == "reference"
    assert resolve_for_device(old, "cuda").train.compile is False


def test_a_pre_engine_checkpoint_refuses_a_resume_under_the_engine():
    """Resuming with --preset (not the saved config.json) on CUDA resolves to the engine; the check reads the
    saved config as a config, so the fields it predates count as their old values and the change is refused."""
    from infmae.training.run_state import check_config

    saved = json.loads(preset("paper_base").to_json())
    for field in ("engine", "channels_last", "bf16_residual", "wire_uint16", "cuda_graphs"):
        del saved["train"][field]
    check_config(Config.from_dict(saved), saved)  # the same run resumes
    with pytest.raises(ValueError, match="train.bf16_residual.*train.wire_uint16"):
        check_config(resolve_for_device(preset("paper_base"), "cuda"), saved)


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    generate_dataset(root, 20, seed=3, include_bad=False)
    return root


def test_trainer_resolves_and_runs_channels_last_like_the_reference(tmp_path, clean_data):
    """The trainer resolves the config once (config.json = resolve_for_device's result) and, with the
    engine's channels-last stages, trains to the reference's losses and weights (fp32, CPU)."""
    reference_run, engine_run = tmp_path / "reference", tmp_path / "channels_last"
    Trainer(tiny_config(clean_data, max_steps=3), reference_run).fit()
    Trainer(tiny_config(clean_data, max_steps=3, channels_last=True), engine_run).fit()
    written = json.loads((reference_run / "config.json").read_text())
    assert written == json.loads(resolve_for_device(tiny_config(clean_data, max_steps=3), "cpu").to_json())
    assert written["train"]["engine"] == "reference"
    rtol = TOLERANCES[("channels_last_loss", torch.float32)][1]
    assert losses(engine_run) == pytest.approx(losses(reference_run), rel=max(rtol, 1e-7))
    final = ckpt.load_checkpoint(engine_run)["model"]
    expected = ckpt.load_checkpoint(reference_run)["model"]
    assert final.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, **tol("channels_last_params"), msg=lambda m, k=key: f"{k}: {m}")
