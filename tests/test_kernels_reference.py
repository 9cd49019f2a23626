"""The eager twins in kernels/reference.py against independent computations."""

import pytest
import torch
import torch.nn.functional as F

from kernels import reference as ref
from tests.tolerances import tol

SHAPES = [(1, 3, 16, 16), (2, 3, 64, 160), (3, 1, 224, 224), (2, 3, 48, 80)]


def _python_mask(scores_row, stride, descending):
    """Independent spec: a stable sort written with Python's sorted() (stable by definition)."""
    order = sorted(range(len(scores_row)), key=lambda i: -scores_row[i] if descending else scores_row[i])
    keep = order[::stride]
    restore = [0] * len(order)
    for rank, idx in enumerate(order):
        restore[idx] = rank
    mask = [0.0 if i in set(keep) else 1.0 for i in range(len(order))]
    return keep, restore, mask


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("contiguous", [True, False])
def test_intensity_pool_matches_strided_conv(shape, dtype, contiguous, generator):
    B, C, H, W = shape
    imgs = torch.randn(B, C, H, 2 * W, generator=generator).to(dtype)
    imgs = imgs[..., ::2] if not contiguous else imgs[..., :W].contiguous()
    assert imgs.is_contiguous() == contiguous
    filt = torch.randn(C, 16, 16, generator=generator)
    bias = 0.37
    scores = ref.intensity_pool(imgs, filt, bias)
    expected = F.conv2d(imgs.float(), filt.unsqueeze(0), torch.tensor([bias]), stride=16).flatten(1)
    assert scores.dtype == torch.float32 and scores.shape == (B, (H // 16) * (W // 16))
    torch.testing.assert_close(scores, expected, **tol("intensity_pool", dtype))


def test_intensity_filter_gives_patch_mean(generator):
    imgs = torch.rand(2, 3, 32, 48, generator=generator)
    scores = ref.intensity_pool(imgs, ref.intensity_filter(3))
    means = imgs.unfold(2, 16, 16).unfold(3, 16, 16).mean(dim=(1, 4, 5)).flatten(1)
    torch.testing.assert_close(scores, means, **tol("intensity_pool"))


@pytest.mark.parametrize("L,grid", [(196, (14, 14)), (40, (4, 10)), (4096, (64, 64)), (1, (1, 1)), (7, (1, 7))])
@pytest.mark.parametrize("order", ["descending", "ascending"])
@pytest.mark.parametrize("stride", [4, 3, 1])
def test_sort_stride_mask_matches_python_with_ties(L, grid, order, stride, generator):
    B = 2
    # few distinct values -> many planted ties
    scores = torch.randint(0, 5, (B, L), generator=generator).float()
    out = ref.sort_stride_mask(scores, stride, order, grid)
    K = ref.num_visible(L, stride)
    assert out.ids_keep.shape == (B, K) and out.ids_keep.dtype == torch.int64
    rows = scores.tolist() if L <= 196 else scores[:, :300].tolist()  # python spec on a prefix for L=4096
    for b in range(B):
        if L <= 196:
            keep, restore, mask = _python_mask(rows[b], stride, order == "descending")
            assert out.ids_keep[b].tolist() == keep
            assert out.ids_restore[b].tolist() == restore
            assert out.mask[b].tolist() == mask
    # structural checks for every size: restore inverts the sort, the mask marks exactly the kept ids
    ids_shuffle = torch.argsort(out.ids_restore, dim=1)
    assert torch.equal(torch.gather(out.ids_restore, 1, ids_shuffle), torch.arange(L).expand(B, L))
    assert torch.equal(ids_shuffle[:, ::stride], out.ids_keep)
    assert torch.equal(out.mask.sum(1), torch.full((B,), float(L - K)))
    assert torch.equal(out.mask.gather(1, out.ids_keep), torch.zeros(B, K))
    sorted_scores = scores.gather(1, ids_shuffle)
    diffs = sorted_scores[:, 1:] - sorted_scores[:, :-1]
    assert bool((diffs <= 0).all() if order == "descending" else (diffs >= 0).all())
    # stability: within equal scores, raster indices increase
    same = diffs == 0
    assert bool(((ids_shuffle[:, 1:] - ids_shuffle[:, :-1]) > 0)[same].all())


def test_all_equal_scores_keep_every_fourth_patch():
    out = ref.sort_stride_mask(torch.zeros(3, 196), 4, "descending", (14, 14))
    assert out.ids_keep.tolist() == [list(range(0, 196, 4))] * 3


def test_visibility_maps_are_nearest_upsampling(generator):
    scores = torch.randn(2, 40, generator=generator)
    out = ref.sort_stride_mask(scores, 4, "descending", (4, 10))
    visible = (1 - out.mask).reshape(2, 1, 4, 10)
    assert torch.equal(out.visible_x4, F.interpolate(visible, scale_factor=4, mode="nearest"))
    assert torch.equal(out.visible_x2, F.interpolate(visible, scale_factor=2, mode="nearest"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_token_gather_forward_backward(dtype, generator):
    B, L, D, K = 3, 37, 24, 10
    tokens = torch.randn(B, L, D, generator=generator).to(dtype).requires_grad_()
    ids = torch.stack([torch.randperm(L, generator=generator)[:K] for _ in range(B)])
    out = ref.token_gather(tokens, ids)
    for b in range(B):
        assert torch.equal(out[b], tokens[b, ids[b]])
    grad = torch.randn(B, K, D, generator=generator).to(dtype)
    out.backward(grad)
    expected = torch.zeros(B, L, D, dtype=dtype)
    for b in range(B):
        expected[b, ids[b]] = grad[b]
    assert torch.equal(tokens.grad, expected)


def test_token_gather_many_equals_separate_gathers(generator):
    ids = torch.stack([torch.randperm(20, generator=generator)[:5] for _ in range(2)])
    tensors = [torch.randn(2, 20, d, generator=generator) for d in (8, 16, 4)]
    for got, t in zip(ref.token_gather_many(tensors, ids), tensors):
        assert torch.equal(got, ref.token_gather(t, ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_restore_forward_backward(dtype, generator):
    B, L, D, K = 2, 30, 16, 8
    visible = torch.randn(B, K, D, generator=generator).to(dtype).requires_grad_()
    mask_token = torch.randn(1, 1, D, generator=generator).requires_grad_()
    ids = torch.stack([torch.randperm(L, generator=generator)[:K] for _ in range(B)])
    out = ref.token_restore(visible, mask_token, ids, L)
    assert out.shape == (B, L, D) and out.dtype == dtype
    masked = torch.ones(B, L, dtype=torch.bool)
    for b in range(B):
        masked[b, ids[b]] = False
        assert torch.equal(out[b, ids[b]], visible[b])
    assert torch.equal(out[masked], mask_token.reshape(D).to(dtype).expand(int(masked.sum()), D))
    grad = torch.randn(B, L, D, generator=generator).to(dtype)
    out.backward(grad)
    assert torch.equal(visible.grad, torch.stack([grad[b, ids[b]] for b in range(B)]))
    torch.testing.assert_close(
        mask_token.grad.reshape(D), grad[masked].float().sum(0), **tol("token_restore_grad", dtype)
    )


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: ref.intensity_pool(torch.zeros(1, 3, 20, 32), ref.intensity_filter(3)), "multiples of 16"),
        (lambda: ref.intensity_pool(torch.zeros(3, 32, 32), ref.intensity_filter(3)), r"\[B,C,H,W\]"),
        (lambda: ref.intensity_pool(torch.zeros(1, 1, 32, 32), ref.intensity_filter(3)), r"\[1,16,16\]"),
        (lambda: ref.intensity_pool(torch.zeros(1, 3, 32, 32, dtype=torch.int32), ref.intensity_filter(3)), "dtype"),
        (lambda: ref.sort_stride_mask(torch.zeros(2, 10), 0), "stride"),
        (lambda: ref.sort_stride_mask(torch.zeros(2, 10), 4, "random"), "order"),
        (lambda: ref.token_gather(torch.zeros(2, 10, 4), torch.zeros(2, 3, dtype=torch.int32)), "int64"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
