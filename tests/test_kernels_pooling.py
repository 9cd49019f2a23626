"""kernels.pooling.intensity_pool (Triton, under TRITON_INTERPRET=1 on CPU) against its eager twin.

Scores are float outputs: compared with the "intensity_pool" tolerances of tests/tolerances.py (the
kernel sums the 256*C fp32 products in another order than the twin's einsum). Everything else
(determinism, poisoned outputs, dispatch) is checked exactly.
"""

import pytest
import torch

from kernels import pooling, testing
from kernels import reference as ref
from tests.device import KERNEL_DEVICE, cpu_dispatch_only
from tests.sm90 import GPU_TARGETS, assert_compiles_for
from tests.tolerances import tol

pytestmark = pytest.mark.kernel_device  # tensors on the GPU when one runs the suite there

# (B, C, H, W): a single patch, non-square grids (4x10, 3x5), w = 17 (not a power of two: the last
# column block is partly masked), one channel, four channels.
SHAPES = [(1, 3, 16, 16), (2, 3, 64, 160), (2, 3, 48, 80), (1, 4, 32, 272), (3, 1, 32, 48)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "sliced", "channels_last", "expanded"]
ERROR_FORMAT = r"^intensity_pool: expected .+, got .+; .+"


def _images(shape, dtype, layout, generator):
    """Fresh N(0,1) images of ``shape`` in the given memory layout (values never all zero)."""
    B, C, H, W = shape
    if layout == "contiguous":
        imgs = torch.randn(B, C, H, W, generator=generator).to(dtype)
    elif layout == "sliced":  # every other column: stride_w = 2
        imgs = torch.randn(B, C, H, 2 * W, generator=generator).to(dtype)[..., ::2]
    elif layout == "channels_last":  # stride_c = 1
        imgs = torch.randn(B, H, W, C, generator=generator).to(dtype).permute(0, 3, 1, 2)
    elif layout == "expanded":  # a gray image repeated on C channels as a view: stride_c = 0
        imgs = torch.randn(B, 1, H, W, generator=generator).to(dtype).expand(B, C, H, W)
    if C > 1:  # with one channel, channels-last and expanded views are contiguous too
        assert imgs.is_contiguous() == (layout == "contiguous")
    return imgs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_twin(shape, dtype, layout, generator):
    imgs = _images(shape, dtype, layout, generator)
    if layout == "expanded" and shape[1] > 1:
        assert imgs.stride(1) == 0
    filt = torch.randn(shape[1], 16, 16, generator=generator)
    bias = 0.37
    scores = pooling.intensity_pool(imgs, filt, bias)
    expected = ref.intensity_pool(imgs, filt, bias)
    assert scores.dtype == torch.float32 and scores.shape == expected.shape
    torch.testing.assert_close(scores, expected, **tol("intensity_pool", dtype))


@pytest.mark.parametrize("filter_dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias_kind", ["float", "tensor0d", "tensor1", "int"])
def test_filter_dtypes_and_bias_forms(filter_dtype, bias_kind, generator):
    imgs = torch.randn(2, 3, 48, 80, generator=generator)
    filt = torch.randn(3, 16, 16, generator=generator).to(filter_dtype)
    bias = {
        "float": -1.25,
        "tensor0d": torch.randn((), generator=generator, dtype=torch.float64),
        "tensor1": torch.randn(1, generator=generator),
        "int": 2,
    }[bias_kind]
    expected = ref.intensity_pool(imgs, filt, bias)
    torch.testing.assert_close(pooling.intensity_pool(imgs, filt, bias), expected, **tol("intensity_pool"))


def test_official_score_filter(generator):
    """The released code's score: a 768-channel conv averaged = one filter weight.mean(0), bias.mean()."""
    conv = torch.nn.Conv2d(3, 768, 16, 16)
    imgs = torch.randn(2, 3, 64, 160, generator=generator)
    weight, bias = conv.weight.mean(0), conv.bias.mean()  # both require grad: the op detaches them
    scores = pooling.intensity_pool(imgs, weight, bias)
    torch.testing.assert_close(
        scores, ref.intensity_pool(imgs, weight.detach(), bias.detach()), **tol("intensity_pool")
    )
    torch.testing.assert_close(scores, conv(imgs).mean(1).flatten(1).detach(), **tol("official_score"))


def test_intensity_filter_gives_patch_mean(generator):
    imgs = torch.rand(1, 1, 224, 224, generator=generator)
    scores = pooling.intensity_pool(imgs, ref.intensity_filter(1))
    means = imgs.unfold(2, 16, 16).unfold(3, 16, 16).mean(dim=(1, 4, 5)).flatten(1)
    torch.testing.assert_close(scores, means, **tol("intensity_pool"))


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_out_is_fully_written(layout, generator):
    B, L = 2, 4 * 10
    imgs = torch.randn(B, 3, 64, 160, generator=generator, dtype=torch.bfloat16)
    filt = torch.randn(3, 16, 16, generator=generator)
    out = torch.full((B, L), float("nan")) if layout == "contiguous" else torch.full((L, B), float("nan")).t()
    result = testing.intensity_pool_out(imgs, filt, 0.5, out=out)
    assert result is out
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref.intensity_pool(imgs, filt, 0.5), **tol("intensity_pool", torch.bfloat16))


def test_deterministic(generator):
    imgs = _images((2, 3, 48, 80), torch.float16, "channels_last", generator)
    filt = torch.randn(3, 16, 16, generator=generator)
    first = pooling.intensity_pool(imgs, filt, 0.1)
    second = pooling.intensity_pool(imgs, filt, 0.1)
    assert torch.equal(first.view(torch.int32), second.view(torch.int32))  # bitwise


def test_no_gradient(generator):
    """The score only feeds a sort: the op is not differentiable and its result never requires grad."""
    imgs = torch.randn(1, 3, 32, 32, generator=generator, requires_grad=True)
    filt = torch.randn(3, 16, 16, generator=generator, requires_grad=True)
    scores = pooling.intensity_pool(imgs, filt, torch.tensor(0.2, requires_grad=True))
    assert not scores.requires_grad and scores.grad_fn is None


@cpu_dispatch_only
def test_launch_rule(monkeypatch, generator):
    """CPU + TRITON_INTERPRET=1 -> the Triton kernel; CPU without it -> the eager twin, bit for bit."""
    imgs = torch.randn(2, 3, 32, 48, generator=generator)
    filt = torch.randn(3, 16, 16, generator=generator)
    calls = []
    launch = pooling._launch
    monkeypatch.setattr(pooling, "_launch", lambda *a: (calls.append(1), launch(*a)))
    assert pooling._use_triton(imgs)
    pooling.intensity_pool(imgs, filt)
    assert calls == [1]
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not pooling._use_triton(imgs)
    out = torch.full((2, 6), float("nan"))
    for scores in (pooling.intensity_pool(imgs, filt, 0.5), testing.intensity_pool_out(imgs, filt, 0.5, out=out)):
        assert torch.equal(scores, ref.intensity_pool(imgs, filt, 0.5))
    assert calls == [1]


def test_torch_compile_fullgraph(monkeypatch, generator):
    """The custom op traces without a graph break; under the interpreter it runs the kernel, without it the twin."""
    imgs = torch.randn(2, 3, 48, 80, generator=generator)
    filt = torch.randn(3, 16, 16, generator=generator)
    bias = torch.tensor(0.3)

    def fn(x, f, b):
        return pooling.intensity_pool(x * 2.0, f, b) + 1.0

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected = ref.intensity_pool(imgs * 2.0, filt, bias) + 1.0
    torch.testing.assert_close(compiled(imgs, filt, bias), expected, **tol("intensity_pool"))
    if KERNEL_DEVICE == "cpu":  # a CUDA tensor launches the kernel with or without the variable
        monkeypatch.delenv("TRITON_INTERPRET")
        assert torch.equal(compiled(imgs, filt, bias), expected)


def _bad_calls():
    x = torch.randn(1, 3, 32, 32)
    f = torch.randn(3, 16, 16)
    return [
        ("rank", ValueError, lambda: pooling.intensity_pool(x[0], f)),
        ("int dtype", ValueError, lambda: pooling.intensity_pool(x.to(torch.uint8), f)),
        ("float64", ValueError, lambda: pooling.intensity_pool(x.double(), f)),
        ("H not multiple of 16", ValueError, lambda: pooling.intensity_pool(torch.randn(1, 3, 40, 32), f)),
        ("W not multiple of 16", ValueError, lambda: pooling.intensity_pool(torch.randn(1, 3, 32, 24), f)),
        ("filter channels", ValueError, lambda: pooling.intensity_pool(x, torch.randn(1, 16, 16))),
        ("filter size", ValueError, lambda: pooling.intensity_pool(x, torch.randn(3, 8, 8))),
        ("filter int", ValueError, lambda: pooling.intensity_pool(x, torch.ones(3, 16, 16, dtype=torch.int32))),
        ("filter device", ValueError, lambda: pooling.intensity_pool(x, f.to("meta"))),
        ("bias shape", ValueError, lambda: pooling.intensity_pool(x, f, torch.zeros(2))),
        ("bias device", ValueError, lambda: pooling.intensity_pool(x, f, torch.zeros((), device="meta"))),
        ("bias type", TypeError, lambda: pooling.intensity_pool(x, f, "0.5")),
        ("imgs type", TypeError, lambda: pooling.intensity_pool(x.numpy(), f)),
        ("out shape", ValueError, lambda: testing.intensity_pool_out(x, f, out=torch.empty(1, 5))),
        ("out dtype", ValueError, lambda: testing.intensity_pool_out(x, f, out=torch.empty(1, 4, dtype=torch.float16))),
        ("out device", ValueError, lambda: testing.intensity_pool_out(x, f, out=torch.empty(1, 4, device="meta"))),
    ]


@pytest.mark.parametrize("name,error,call", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_inputs_raise(name, error, call):
    with pytest.raises(error, match=ERROR_FORMAT):
        call()


COMPILE_SCRIPT = r"""
from kernels import pooling
for dtype in ("*fp32", "*bf16", "*fp16"):
    compile_kernel(pooling._intensity_pool_kernel,
                 dict(img_ptr=dtype, filt_ptr="*fp32", bias_ptr="*fp32", out_ptr="*fp32"),
                 {"BLOCK_PW": 8, "PATCH_SIZE": 16}, expect="ld.global")
print("compiled")
"""


@pytest.mark.slow  # a real Triton compile in a subprocess
@pytest.mark.parametrize("target", sorted(GPU_TARGETS))
def test_kernel_compiles_for(target, tmp_path):
    """The kernel compiles for an A100 and an H100/H200 with the real Triton compiler (see tests/sm90.py)."""
    assert_compiles_for(COMPILE_SCRIPT, tmp_path, GPU_TARGETS[target])
