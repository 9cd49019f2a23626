"""IAM masking inside the model, no leakage, channel conversion, patchify."""

import pytest
import torch
import torch.nn.functional as F

from infmae.config import ModelConfig
from infmae.model.convert import convert_in_chans
from infmae.model.infmae import InfMAE, encoder_state_dict
from infmae.model.patchify import patchify, unpatchify
from tests.tolerances import tol

SMALL = dict(
    embed_dims=(32, 48, 96), depths=(1, 1, 2), num_heads=4, decoder_embed_dim=64, decoder_num_heads=4, decoder_depth=1
)


def small(**kw):
    torch.manual_seed(0)
    return InfMAE(ModelConfig(**{**SMALL, **kw}))


def test_224_keeps_49_and_masks_147_for_every_image():
    model = small(img_size=(224, 224))
    masking = model.masking(torch.randn(5, 3, 224, 224))
    assert masking.ids_keep.shape == (5, 49)
    assert masking.mask.sum(1).tolist() == [147.0] * 5
    assert masking.visible_x4.shape == (5, 1, 56, 56) and masking.visible_x2.shape == (5, 1, 28, 28)


def test_equal_patches_keep_0_4_8():
    model = small(img_size=(64, 96))
    masking = model.masking(torch.full((2, 3, 64, 96), 0.3))
    assert masking.ids_keep.tolist() == [list(range(0, 24, 4))] * 2


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_intensity_order_keeps_the_right_extreme(order):
    model = small(img_size=(64, 64), order=order)
    imgs = torch.zeros(1, 3, 64, 64)
    brightness = torch.randperm(16).float().reshape(1, 1, 4, 4)
    imgs += F.interpolate(brightness, scale_factor=16, mode="nearest")
    masking = model.masking(imgs)
    ranks = brightness.flatten().argsort(descending=(order == "descending"))
    assert masking.ids_keep[0].tolist() == ranks[::4].tolist()


def test_official_score_is_the_averaged_768_channel_conv():
    model = small(img_size=(64, 96), score="official", order="ascending")
    imgs = torch.randn(3, 3, 64, 96)
    conv = model.patch_embed.proj
    full = F.conv2d(imgs, conv.weight, conv.bias, stride=16).mean(1).flatten(1)  # the released computation
    weight, bias = model.score_filter()
    ours = model.ops.intensity_pool(imgs, weight, bias)
    torch.testing.assert_close(ours, full, **tol("official_score"))
    # same masks unless two scores are closer than the rounding difference
    ids_released = full.argsort(dim=1, stable=True)[:, ::4]
    gaps = full.sort(dim=1).values.diff(dim=1).abs().min()
    assert gaps > 10 * (ours - full).abs().max()
    assert torch.equal(model.masking(imgs).ids_keep, ids_released)


@pytest.mark.parametrize("score", ["intensity", "official"])
def test_mask_is_computed_in_fp32_under_bf16_autocast(score):
    """The trainer runs the model under bf16 autocast: the score (an einsum in the eager twin) must stay fp32,
    or near-equal patch scores round together and the sort keeps other patches."""
    model = small(img_size=(224, 224), score=score)
    imgs = torch.rand(4, 3, 224, 224)
    expected = model.masking(imgs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.masking(imgs)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_score_modes_differ():
    imgs = torch.rand(2, 3, 64, 64)
    a = small(img_size=(64, 64), score="intensity", order="ascending").masking(imgs).ids_keep
    b = small(img_size=(64, 64), score="official", order="ascending").masking(imgs).ids_keep
    assert not torch.equal(a, b)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_no_leakage_from_masked_pixels(size):
    model = small(img_size=size).eval()
    imgs = torch.randn(2, 3, *size)
    with torch.no_grad():
        masking = model.masking(imgs)
        latent, _ = model.forward_encoder(imgs, masking)
        pixel_mask = F.interpolate(masking.mask.reshape(2, 1, size[0] // 16, size[1] // 16), scale_factor=16)
        changed = imgs + pixel_mask * torch.randn_like(imgs) * 10  # only masked pixels change
        assert not torch.equal(changed, imgs)
        latent_changed, _ = model.forward_encoder(changed, masking)
        # control: changing one visible pixel does change the latent
        visible_pixel = (pixel_mask == 0).nonzero()[0]
        poked = imgs.clone()
        poked[visible_pixel[0], :, visible_pixel[2], visible_pixel[3]] += 1.0
        latent_poked, _ = model.forward_encoder(poked, masking)
    assert torch.equal(latent_changed, latent)
    assert not torch.equal(latent_poked, latent)


@pytest.mark.parametrize("score", ["intensity", "official"])
def test_one_channel_conversion_gives_the_same_encoder_output(score):
    three = small(img_size=(64, 96), score=score)
    one = InfMAE(ModelConfig(**{**SMALL, "img_size": (64, 96), "score": score, "in_chans": 1}))
    one.load_state_dict(convert_in_chans(three.state_dict(), 1), strict=True)
    gray = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        latent3, masking3 = three.forward_encoder(gray.expand(-1, 3, -1, -1))
        latent1, masking1 = one.forward_encoder(gray)
    assert torch.equal(masking1.ids_keep, masking3.ids_keep)
    torch.testing.assert_close(latent1, latent3, **tol("in_chans_conversion"))
    # and back: 1 -> 3 reproduces the 3-channel encoder exactly on its own tensors
    back = convert_in_chans(one.state_dict(), 3)
    assert back["patch_embed1.proj.weight"].shape[1] == 3
    assert set(encoder_state_dict(back)) == set(encoder_state_dict(three))


@pytest.mark.parametrize("C,H,W", [(1, 16, 32), (3, 64, 160), (2, 48, 32)])
def test_patchify_layout_and_round_trip(C, H, W):
    imgs = torch.randn(2, C, H, W)
    patches = patchify(imgs)
    assert patches.shape == (2, (H // 16) * (W // 16), 256 * C)
    # patch 1 of the first row, pixel (p=2, q=5), channel c sits at index (2*16+5)*C + c
    for c in range(C):
        assert patches[0, 1, (2 * 16 + 5) * C + c] == imgs[0, c, 2, 16 + 5]
    assert torch.equal(unpatchify(patches, (H // 16, W // 16), C), imgs)


def test_sizes_that_are_not_multiples_of_16_get_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 16"):
        small(img_size=(64, 64))(torch.randn(1, 3, 64, 70))
    with pytest.raises(ValueError, match="img_size"):
        ModelConfig(img_size=(100, 64))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        small(img_size=(64, 64))(torch.randn(1, 1, 64, 64))


def test_other_image_sizes_run_with_their_own_position_table():
    model = small(img_size=(64, 64))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 48))
    assert out.pred.shape == (1, 18, 768) and out.mask.sum() == 18 - 5
