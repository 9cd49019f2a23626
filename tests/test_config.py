"""Configs: presets, overrides, and errors that name the field, the value and the fix."""

import json

import pytest

from infmae.config import PRESETS, Config, ModelConfig, TrainConfig, apply_overrides, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip_as_plain_data(name):
    config = preset(name)
    again = Config.from_dict(json.loads(config.to_json()))
    assert again == config


def test_the_two_recipes():
    paper, official = preset("paper_base"), preset("official_base")
    assert (paper.model.score, paper.model.order, paper.train.blr) == ("intensity", "descending", 1.5e-4)
    assert (official.model.score, official.model.order, official.train.blr) == ("official", "ascending", 1e-3)
    for c in (paper, official):
        assert (c.train.epochs, c.train.warmup_epochs, c.train.betas, c.train.weight_decay) == (
            400,
            40,
            (0.9, 0.95),
            0.05,
        )
        assert c.train.batch_size * c.train.accum_steps == 256 and c.train.grad_clip == 0
        assert c.model == ModelConfig(score=c.model.score, order=c.model.order)


def test_overrides_parse_types():
    config = apply_overrides(
        preset("demo"),
        [
            "train.blr=2e-3",
            "model.img_size=96,160",
            "model.norm_pix_loss=true",
            "data.path=/data/x",
            "model.score=official",
        ],
    )
    assert config.train.blr == 2e-3 and config.model.img_size == (96, 160)
    assert config.model.norm_pix_loss is True and config.data.path == "/data/x" and config.model.score == "official"


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("train.lr=1e-3", r"got 'train.lr'; did you mean 'train.min_lr'|did you mean 'train.blr'"),
        ("model.scroe=official", r"did you mean 'model.score'"),
        ("blr=1e-3", r"did you mean 'train.blr'"),
    ],
)
def test_unknown_keys_get_a_suggestion(override, pattern):
    with pytest.raises(ValueError, match=pattern):
        apply_overrides(preset("demo"), [override])


@pytest.mark.parametrize(
    "make,field,value",
    [
        (lambda: ModelConfig(order="random"), "model.order", "'random'"),
        (lambda: ModelConfig(mask_stride=0), "model.mask_stride", "0"),
        (lambda: ModelConfig(img_size=(224, 100)), "model.img_size", r"\(224, 100\)"),
        (lambda: TrainConfig(blr=-1.0), "train.blr", "-1.0"),
        (lambda: TrainConfig(warmup_epochs=50, epochs=10), "train.warmup_epochs", "50"),
        (lambda: apply_overrides(preset("demo"), ["train.batch_size=abc"]), "train.batch_size", "'abc'"),
    ],
)
def test_bad_values_name_field_value_and_fix(make, field, value):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert field in message
    assert __import__("re").search(value, message)
    assert ";" in message and message.split(";", 1)[1].strip()  # a hint follows


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'paper_base'"):
        preset("paper-base")
