"""infmae_base against the numbers of docs/specification.md, 'The model' (read off the released code)."""

import math

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from infmae.config import ModelConfig
from infmae.model import flops
from infmae.model.infmae import InfMAE, encoder_state_dict
from infmae.model.pos_embed import sincos_2d


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return InfMAE(ModelConfig())


def released_key_names(depths=(2, 2, 11), decoder_depth=2):
    """The released state-dict names, written from the naming rules of docs/specification.md, 'The model'."""
    names = ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in (1, 2, 3):
        names += [
            f"patch_embed{i}.proj.weight",
            f"patch_embed{i}.proj.bias",
            f"patch_embed{i}.norm.weight",
            f"patch_embed{i}.norm.bias",
        ]
    names += [
        "patch_embed4.weight",
        "patch_embed4.bias",
        "stage1_output_decode.weight",
        "stage1_output_decode.bias",
        "stage2_output_decode.weight",
        "stage2_output_decode.bias",
        "pos_embed",
    ]
    for stage, depth in (("blocks1", depths[0]), ("blocks2", depths[1])):
        for i in range(depth):
            for part in ("norm1", "conv1", "attn", "conv2", "norm2", "mlp.fc1", "mlp.fc2"):
                names += [f"{stage}.{i}.{part}.weight", f"{stage}.{i}.{part}.bias"]
    vit = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for i in range(depths[2]):
        names += [f"blocks3.{i}.{part}.{t}" for part in vit for t in ("weight", "bias")]
    names += [
        "norm.weight",
        "norm.bias",
        "mask_token",
        "decoder_embed.weight",
        "decoder_embed.bias",
        "decoder_pos_embed",
    ]
    for i in range(decoder_depth):
        names += [f"decoder_blocks.{i}.{part}.{t}" for part in vit for t in ("weight", "bias")]
    names += ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]
    return names


def test_state_dict_size_and_names(base):
    state = base.state_dict()
    assert len(state) == 243
    assert sum(v.numel() for v in state.values()) == 96_717_696
    assert sorted(state) == sorted(released_key_names())
    assert sum(v.numel() for v in encoder_state_dict(base).values()) == 84_605_824
    assert state["patch_embed.proj.weight"].shape == (768, 3, 16, 16)


@pytest.mark.slow
def test_released_layout_loads_strictly_and_score_conv_is_frozen(base):
    # a checkpoint as the released trainer saves it: {'model': state_dict, 'optimizer': ..., 'epoch': ...}
    torch.manual_seed(1)
    other = InfMAE(ModelConfig())
    checkpoint = {"model": {k: v.clone() for k, v in other.state_dict().items()}, "epoch": 399}
    fresh = InfMAE(ModelConfig())
    fresh.load_state_dict(checkpoint["model"], strict=True)
    for key, value in checkpoint["model"].items():
        assert torch.equal(fresh.state_dict()[key], value), key
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert not any(n.startswith("patch_embed.") for n in trainable)
    assert "pos_embed" not in trainable and "decoder_pos_embed" not in trainable


def test_flops_per_image_and_parts(base):
    assert base.flops_per_image() == 26_565_633_024
    parts = flops.forward_flops_by_part(base.config, (224, 224))
    total = sum(parts.values())
    shares = {k: round(100 * v / total) for k, v in parts.items()}
    assert shares == {"stage1": 36, "stage2": 22, "vit": 32, "decoder": 11}
    # the released model's count = ours + its 768-channel score conv (196 patches x 768 x 768 x 2)
    assert base.flops_per_image() + 196 * 768 * 768 * 2 == 26_796_844_032


def test_flop_counter_matches_analytical_count(base):
    counter = FlopCounterMode(display=False)
    imgs = torch.randn(1, 3, 224, 224)
    # the math SDPA backend decomposes into counted matmuls; CPU's fused kernel is not in the counter
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        base(imgs)
    counted = counter.get_total_flops()
    score_filter = flops.score_filter_flops(base.config, (224, 224))
    assert score_filter == 301_056
    assert base.flops_per_image() <= counted <= base.flops_per_image() + score_filter


@pytest.mark.slow
def test_flops_scale_with_non_square_images():
    config = ModelConfig(img_size=(96, 160))
    model = InfMAE(config)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.randn(1, 3, 96, 160))
    expected = model.flops_per_image()
    assert expected <= counter.get_total_flops() <= expected + flops.score_filter_flops(config, (96, 160))


def test_initialisation_follows_the_release(base):
    for name, module in base.named_modules():
        if isinstance(module, nn.Linear):
            bound = math.sqrt(6 / (module.in_features + module.out_features))
            assert module.weight.abs().max() <= bound + 1e-7, name
            assert module.weight.abs().max() > 0.9 * bound, name  # really xavier, not a small default
            assert torch.count_nonzero(module.bias) == 0, name
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.count_nonzero(module.bias) == 0, name
    w = base.patch_embed3.proj.weight
    bound = math.sqrt(6 / (768 + 384 * 4))
    assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.9 * bound
    assert 0.015 < base.mask_token.std() < 0.025
    assert base.blocks1[0].norm1.eps == 1e-5 and base.patch_embed1.norm.eps == 1e-5
    assert base.blocks3[0].norm1.eps == 1e-6 and base.norm.eps == 1e-6 and base.decoder_norm.eps == 1e-6


def test_pos_embed_is_the_released_sincos(base):
    pe = base.pos_embed[0]
    D, quarter = 768, 192
    k = torch.arange(quarter, dtype=torch.float64)
    omega = 10000.0 ** (-k / quarter)
    for index in (0, 15, 100, 195):
        row, col = divmod(index, 14)
        expected = torch.cat(
            [torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)]
        ).float()
        torch.testing.assert_close(pe[index], expected, atol=1e-6, rtol=0)
    assert pe.shape == (196, D)
    assert torch.equal(sincos_2d(512, (14, 14)), base.decoder_pos_embed[0])


def test_forward_shapes_and_loss_on_masked_patches_only(base):
    imgs = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = base(imgs)
        latent, masking = base.forward_encoder(imgs)
    assert out.pred.shape == (2, 196, 768) and out.mask.shape == (2, 196)
    assert latent.shape == (2, 49, 768)
    # the loss is the MSE of the masked patches only: recompute by hand
    from infmae.model.patchify import patchify

    per_patch = ((out.pred - patchify(imgs)) ** 2).mean(-1)
    expected = per_patch[out.mask.bool()].mean()
    torch.testing.assert_close(out.loss, expected)
