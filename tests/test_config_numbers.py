"""Numbers in configs: inf, -inf and nan are refused in every numeric field (also inside tuple fields), by
``--set`` overrides, ``Config.from_dict`` and the constructors; an override is parsed as the field's
declared type, so a float field takes 2.5 even when its default is a whole number, and an int field
still refuses it."""

import json
import re

import pytest

from infmae.cli import main
from infmae.config import Config, DataConfig, ModelConfig, TrainConfig, apply_overrides, preset

# "field=value" overrides of scalar fields: the error quotes the value as it was written
SCALAR_CASES = """
    train.blr=inf  train.blr=-inf  train.min_lr=nan  train.epochs=inf  train.warmup_epochs=nan
    train.weight_decay=inf  train.grad_clip=nan  train.collective_timeout_s=inf
    data.mean=nan  data.std=inf  data.hflip_prob=nan  data.low_percentile=nan  data.val_fraction=nan
    model.mlp_ratio=inf
""".split()
# (override, field, the value as the error quotes it): tuple fields are quoted as tuples
NON_FINITE = [(case, *case.split("=")) for case in SCALAR_CASES] + [
    ("train.betas=0.9,-inf", "train.betas", r"\(0.9, -inf\)"),
    ("data.scale=0.2,inf", "data.scale", r"\(0.2, inf\)"),
    ("data.ratio=nan,1.0", "data.ratio", r"\(nan, 1.0\)"),
]


def _check_message(message: str, field: str, value: str) -> None:
    assert message.startswith("config: expected ") and field in message, message
    assert re.search(rf"got {value}(?![\w.])", message), message
    assert ";" in message and message.split(";", 1)[1].strip(), message  # a hint follows
    assert "\n" not in message


@pytest.mark.parametrize("override,field,value", NON_FINITE)
def test_non_finite_overrides_are_refused(override, field, value):
    with pytest.raises(ValueError) as info:
        apply_overrides(preset("demo"), [override])
    _check_message(str(info.value), field, value)


@pytest.mark.parametrize(
    "section,name,value,shown",
    [
        ("train", "blr", "Infinity", "inf"),
        ("train", "epochs", "NaN", "nan"),
        ("data", "mean", "NaN", "nan"),
        ("data", "std", "-Infinity", "-inf"),
        ("data", "scale", "[0.2, NaN]", r"\[0.2, nan\]"),
        ("train", "betas", "[Infinity, 0.95]", r"\[inf, 0.95\]"),
        ("model", "img_size", "[Infinity, 96]", r"\[inf, 96\]"),  # an int tuple: no OverflowError
        ("train", "batch_size", "Infinity", "inf"),
    ],
)
def test_non_finite_values_in_a_saved_config_are_refused(section, name, value, shown):
    saved = json.loads(preset("demo").to_json())
    saved[section][name] = json.loads(value)  # what json.loads makes of a config.json with Infinity/NaN
    with pytest.raises(ValueError) as info:
        Config.from_dict(saved)
    _check_message(str(info.value), f"{section}.{name}", shown)


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: TrainConfig(blr=float("inf")), "train.blr"),
        (lambda: TrainConfig(epochs=float("nan")), "train.epochs"),
        (lambda: DataConfig(mean=float("nan")), "data.mean"),
        (lambda: DataConfig(ratio=(0.75, float("inf"))), "data.ratio"),
        (lambda: ModelConfig(mlp_ratio=float("nan")), "model.mlp_ratio"),
    ],
)
def test_non_finite_values_are_refused_on_construction(make, field):
    with pytest.raises(ValueError, match=rf"config: expected {re.escape(field)} .*finite"):
        make()


def test_float_fields_take_fractions_whatever_their_default():
    config = apply_overrides(
        preset("paper_base"),  # epochs=400 and warmup_epochs=40 are whole numbers there
        ["train.epochs=2.5", "train.warmup_epochs=0.5", "train.collective_timeout_s=30", "data.scale=0.25,1"],
    )
    assert config.train.epochs == 2.5 and config.train.warmup_epochs == 0.5
    assert config.train.collective_timeout_s == 30.0 and config.data.scale == (0.25, 1.0)
    assert Config.from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize(
    "override,field",
    [
        ("train.batch_size=2.5", "train.batch_size"),
        ("train.max_steps=1e3", "train.max_steps"),
        ("data.min_size=2.5", "data.min_size"),
        ("model.img_size=96.5,96", "model.img_size"),
    ],
)
def test_int_fields_still_refuse_fractions(override, field):
    with pytest.raises(ValueError, match=rf"config: expected {re.escape(field)} an integer, got '[0-9.e]+'"):
        apply_overrides(preset("demo"), [override])


def test_cli_refuses_a_non_finite_override_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--output", str(run), "--set", "train.blr=inf"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    _check_message(lines[0].removeprefix("error: "), "train.blr", "inf")
    assert not run.exists()


def test_cli_takes_a_fractional_epoch_count(tmp_path, capsys):
    # the warmup check quotes the parsed epochs: 2.5 got through the parser (before: "expected an integer")
    code = main(
        ["pretrain", "--output", str(tmp_path / "run"), "--set", "train.epochs=2.5", "--set", "train.warmup_epochs=3"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "train.warmup_epochs" in err and "train.epochs=2.5" in err and "an integer" not in err, err
