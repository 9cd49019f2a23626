"""kernels.masking.sort_stride_mask (Triton, under TRITON_INTERPRET=1 on CPU) against its eager twin.

Every output is compared exactly (ids, mask and maps are integers or 0/1 values): same dtype, shape
and values as the twin on the same scores, with planted ties, signed zeros, NaN and infinities.
"""

import numpy as np
import pytest
import torch

from kernels import masking, testing
from kernels import reference as ref
from tests.device import cpu_dispatch_only
from tests.sm90 import GPU_TARGETS, assert_compiles_for

pytestmark = pytest.mark.kernel_device  # tensors on the GPU when one runs the suite there

# (L, grid_hw): one patch, a 1x7 strip, 64x160 (4x10) and 48x80 (3x5) images, 224 px (14x14), a 64x64
# grid (1024 px images, L = 4096), and a prime L without a grid.
GRIDS = [(1, (1, 1)), (7, (1, 7)), (40, (4, 10)), (15, (3, 5)), (196, (14, 14)), (4096, (64, 64)), (37, None)]
STRIDES = [4, 3]  # the default and one that does not divide L; 1 and S >= L in test_extreme_strides
ERROR_FORMAT = r"^sort_stride_mask: expected .+, got .+; .+"
POISON_INT = -7777


@pytest.fixture(scope="module", autouse=True)
def fast_interpreted_sort():
    """Give the Triton interpreter a numpy xor reduction (the kernel itself is unchanged).

    ``tl.sort`` finds each compare-and-swap partner with ``xor_sum`` over an axis of size 2; the
    interpreter has no fast path for that reduction and runs it one element at a time in Python
    (about 12 s for one row of 4096). ``np.bitwise_xor.reduce`` computes the same integers.
    ``test_fast_sort_patch_is_exact`` checks that the patched and unpatched interpreters agree.
    """
    try:
        import triton.language as tl
        from triton.runtime import interpreter

        original = interpreter.ReduceOps.apply_impl
        xor_combine = tl.standard._xor_combine
    except (ImportError, AttributeError):  # another Triton: tests run, only slower
        yield
        return

    def apply_impl(self, inputs):
        if self.combine_fn == xor_combine and len(inputs) == 1 and self.axis is not None:
            data = np.bitwise_xor.reduce(inputs[0].handle.data, axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(data, inputs[0].dtype)
        return original(self, inputs)

    interpreter.ReduceOps.apply_impl = apply_impl
    yield original
    interpreter.ReduceOps.apply_impl = original


def _scores(kind, B, L, generator):
    """Fresh scores (never all zero): continuous, or drawn from a handful of values (planted ties)."""
    if kind == "randn":
        return torch.randn(B, L, generator=generator)
    if kind == "ties":
        return torch.randint(-2, 3, (B, L), generator=generator).float() * 0.5
    if kind == "signed_zeros":  # -0.0 and +0.0 must tie (torch.sort holds them equal), among +-1
        values = torch.tensor([-0.0, 0.0, 1.0, -1.0])
        return values[torch.randint(0, 4, (B, L), generator=generator)]
    if kind == "bf16":  # 8-bit mantissa: many exact ties among N(0,1) draws
        return torch.randn(B, L, generator=generator).to(torch.bfloat16)
    if kind == "fp16":
        return (torch.randn(B, L, generator=generator) * 4).round().to(torch.float16)
    raise AssertionError(kind)


def _assert_equal_outputs(got, expected):
    assert isinstance(got, ref.MaskOutputs)
    for name, a, b in zip(ref.MaskOutputs._fields, got, expected):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, a.shape, b.dtype, b.shape)
        assert torch.equal(a, b), name
        if a.is_floating_point():  # bitwise: no -0.0 where the twin has +0.0
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name


# The fast loop (-m "not slow") runs every kind and order on L = 1, 40 (a 4x10 grid) and 37 (no grid); the
# other rows, the model's grid (196) and the 4096 limit among them, run in the full suite (marked slow).
FAST_L = (1, 40, 37)


@pytest.mark.parametrize(
    "L,grid", [pytest.param(*g, id=f"L{g[0]}", marks=[] if g[0] in FAST_L else [pytest.mark.slow]) for g in GRIDS]
)
@pytest.mark.parametrize("order", ["descending", "ascending"])
@pytest.mark.parametrize("kind", ["randn", "ties", "signed_zeros", "bf16", "fp16"])
def test_matches_twin(L, grid, order, kind, generator):
    B = 1 if L == 4096 else 2
    scores = _scores(kind, B, L, generator)
    for stride in STRIDES:
        expected = ref.sort_stride_mask(scores, stride, order, grid)
        _assert_equal_outputs(masking.sort_stride_mask(scores, stride, order, grid), expected)


@pytest.mark.parametrize("L,grid", [(1, (1, 1)), (40, (4, 10)), (196, (14, 14))])
@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_extreme_strides(L, grid, order, generator):
    """S = 1 keeps every patch (K = L, no mask); S = L and S > L keep rank 0 only (K = 1)."""
    scores = _scores("ties", 2, L, generator)
    for stride in (1, L, L + 1000):
        expected = ref.sort_stride_mask(scores, stride, order, grid)
        _assert_equal_outputs(masking.sort_stride_mask(scores, stride, order, grid), expected)


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_nan_inf_and_zeros_sort_like_torch(order):
    nan = float("nan")
    neg_nan = torch.tensor(nan).neg().item()  # a NaN with the sign bit set
    row = [1.0, nan, -0.0, 0.0, neg_nan, float("inf"), -0.0, nan, -float("inf"), -3.5, 2.0, 0.0]
    scores = torch.tensor([row, row[::-1]])
    assert (scores.view(torch.int32) < 0).logical_and(scores.isnan()).any()  # the negative NaN is there
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for stride in (1, 2, 5):
            s = scores.to(dtype)
            _assert_equal_outputs(
                masking.sort_stride_mask(s, stride, order, (3, 4)), ref.sort_stride_mask(s, stride, order, (3, 4))
            )


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_non_contiguous_scores(layout, generator):
    if layout == "sliced":
        scores = torch.randint(0, 6, (3, 80), generator=generator).float()[:, ::2]
    else:
        scores = torch.randint(0, 6, (40, 3), generator=generator).float().t()
    assert not scores.is_contiguous()
    for order in ("descending", "ascending"):
        _assert_equal_outputs(
            masking.sort_stride_mask(scores, 4, order, (4, 10)), ref.sort_stride_mask(scores, 4, order, (4, 10))
        )


def _poisoned(B, L, K, grid, transposed):
    """Outputs filled with values the kernel never writes (-7777, NaN), optionally as strided views."""

    def alloc(shape, dtype, fill):
        if transposed and len(shape) == 2:
            return torch.full(shape[::-1], fill, dtype=dtype).t()
        return torch.full(shape, fill, dtype=dtype)

    outs = [
        alloc((B, K), torch.int64, POISON_INT),
        alloc((B, L), torch.int64, POISON_INT),
        alloc((B, L), torch.float32, float("nan")),
    ]
    if grid is not None:
        h, w = grid
        x4 = (
            torch.full((B, 1, 4 * w, 4 * h), float("nan")).transpose(2, 3)
            if transposed
            else torch.full((B, 1, 4 * h, 4 * w), float("nan"))
        )
        outs += [x4, torch.full((B, 1, 2 * h, 2 * w), float("nan"))]
    return tuple(outs)


@pytest.mark.parametrize("L,grid", [(1, (1, 1)), (40, (4, 10)), (15, None), (4096, (64, 64))])
@pytest.mark.parametrize("transposed", [False, True])
def test_out_is_fully_written(L, grid, transposed, generator):
    B, stride = (1 if L == 4096 else 2), 4
    K = ref.num_visible(L, stride)
    scores = _scores("ties", B, L, generator)
    outs = _poisoned(B, L, K, grid, transposed)
    result = testing.sort_stride_mask_out(scores, stride, "ascending", grid, out=outs)
    assert all(r is o for r, o in zip(result, outs))
    for t in outs:
        assert not (t == POISON_INT).any() and not torch.isnan(t.float()).any()
    _assert_equal_outputs(result, ref.sort_stride_mask(scores, stride, "ascending", grid))


def test_out_as_three_tensors_without_grid(generator):
    scores = _scores("randn", 2, 40, generator)
    outs = _poisoned(2, 40, 10, None, False)
    result = testing.sort_stride_mask_out(scores, 4, "descending", None, out=outs)
    assert result.visible_x4 is None and result.visible_x2 is None
    _assert_equal_outputs(result, ref.sort_stride_mask(scores, 4, "descending", None))


def test_deterministic(generator):
    scores = _scores("ties", 2, 196, generator)
    first = masking.sort_stride_mask(scores, 4, "descending", (14, 14))
    second = masking.sort_stride_mask(scores, 4, "descending", (14, 14))
    _assert_equal_outputs(first, second)


def test_scores_requiring_grad(generator):
    scores = torch.randn(2, 40, generator=generator, requires_grad=True)
    out = masking.sort_stride_mask(scores, 4, "descending", (4, 10))
    assert not any(t.requires_grad for t in out)
    _assert_equal_outputs(out, ref.sort_stride_mask(scores.detach(), 4, "descending", (4, 10)))


def test_fast_sort_patch_is_exact(fast_interpreted_sort, monkeypatch, generator):
    """The interpreter speed-up of the module fixture changes no result (checked on a small row)."""
    if fast_interpreted_sort is None:
        pytest.skip("the interpreter was not patched on this Triton")
    from triton.runtime import interpreter

    scores = _scores("ties", 2, 40, generator)
    patched = masking.sort_stride_mask(scores, 3, "descending", (4, 10))
    monkeypatch.setattr(interpreter.ReduceOps, "apply_impl", fast_interpreted_sort)
    _assert_equal_outputs(masking.sort_stride_mask(scores, 3, "descending", (4, 10)), patched)


@cpu_dispatch_only
def test_launch_rule(monkeypatch, generator):
    """CPU + TRITON_INTERPRET=1 -> the Triton kernel; CPU without it -> the eager twin."""
    scores = _scores("ties", 2, 40, generator)
    calls = []
    launch = masking._launch
    monkeypatch.setattr(masking, "_launch", lambda *a: (calls.append(1), launch(*a)))
    assert masking._use_triton(scores)
    masking.sort_stride_mask(scores, 4)
    assert calls == [1]
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not masking._use_triton(scores)
    expected = ref.sort_stride_mask(scores, 4, "ascending", (4, 10))
    _assert_equal_outputs(masking.sort_stride_mask(scores, 4, "ascending", (4, 10)), expected)
    outs = _poisoned(2, 40, 10, (4, 10), True)
    _assert_equal_outputs(testing.sort_stride_mask_out(scores, 4, "ascending", (4, 10), out=outs), expected)
    assert calls == [1]


def test_rows_longer_than_the_triton_limit_use_the_twin(monkeypatch, generator):
    monkeypatch.setattr(masking, "MAX_TRITON_L", 32)
    monkeypatch.setattr(masking, "_launch", lambda *a: pytest.fail("launched the kernel past MAX_TRITON_L"))
    scores = _scores("ties", 2, 40, generator)
    expected = ref.sort_stride_mask(scores, 4, "descending", (4, 10))
    _assert_equal_outputs(masking.sort_stride_mask(scores, 4, "descending", (4, 10)), expected)
    outs = _poisoned(2, 40, 10, (4, 10), False)
    _assert_equal_outputs(testing.sort_stride_mask_out(scores, 4, "descending", (4, 10), out=outs), expected)


def test_torch_compile_fullgraph(monkeypatch, generator):
    """Both custom ops trace without a graph break; with and without the interpreter they equal the twin."""
    scores = _scores("ties", 2, 40, generator)

    def fn(s):
        m = masking.sort_stride_mask(s * 1.0, 4, "descending", (4, 10))
        outs = (
            torch.empty(2, 14, dtype=torch.int64, device=s.device),
            torch.empty(2, 40, dtype=torch.int64, device=s.device),
            torch.empty(2, 40, device=s.device),
        )
        m3 = testing.sort_stride_mask_out(s, 3, "ascending", None, out=outs)
        return m.ids_keep, m.ids_restore, m.mask, m.visible_x4, m.visible_x2, m3.ids_keep, m3.mask

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    d = ref.sort_stride_mask(scores, 4, "descending", (4, 10))
    a = ref.sort_stride_mask(scores, 3, "ascending")
    expected = (*d, a.ids_keep, a.mask)
    for interpret in (True, False):
        if not interpret:
            monkeypatch.delenv("TRITON_INTERPRET")
        got = compiled(scores)
        assert all(torch.equal(g, e) for g, e in zip(got, expected))


def _bad_calls():
    s = torch.randn(2, 40)
    outs = _poisoned(2, 40, 10, (4, 10), False)
    return [
        ("rank 1", ValueError, lambda: masking.sort_stride_mask(s[0], 4)),
        ("rank 3", ValueError, lambda: masking.sort_stride_mask(s[None], 4)),
        ("int dtype", ValueError, lambda: masking.sort_stride_mask(s.long(), 4)),
        ("float64", ValueError, lambda: masking.sort_stride_mask(s.double(), 4)),
        ("stride 0", ValueError, lambda: masking.sort_stride_mask(s, 0)),
        ("stride float", ValueError, lambda: masking.sort_stride_mask(s, 2.0)),
        ("order", ValueError, lambda: masking.sort_stride_mask(s, 4, "desc")),
        ("grid product", ValueError, lambda: masking.sort_stride_mask(s, 4, "descending", (5, 5))),
        ("grid not ints", ValueError, lambda: masking.sort_stride_mask(s, 4, "descending", (4.0, 10.0))),
        ("scores type", TypeError, lambda: masking.sort_stride_mask(s.tolist(), 4)),
        ("out length", ValueError, lambda: testing.sort_stride_mask_out(s, 4, out=outs[:2])),
        ("out ids dtype", ValueError, lambda: testing.sort_stride_mask_out(s, 4, out=(outs[0].int(), *outs[1:3]))),
        (
            "out restore shape",
            ValueError,
            lambda: testing.sort_stride_mask_out(s, 4, out=(outs[0], outs[1][:, :39], outs[2])),
        ),
        (
            "out device",
            ValueError,
            lambda: testing.sort_stride_mask_out(s, 4, out=(outs[0], outs[1], outs[2].to("meta"))),
        ),
        ("out maps without grid", ValueError, lambda: testing.sort_stride_mask_out(s, 4, out=outs)),
        (
            "out maps missing",
            TypeError,
            lambda: testing.sort_stride_mask_out(s, 4, "descending", (4, 10), out=(*outs[:3], None, None)),
        ),
        (
            "out map shape",
            ValueError,
            lambda: testing.sort_stride_mask_out(s, 4, "descending", (4, 10), out=(*outs[:4], outs[3])),
        ),
    ]


@pytest.mark.parametrize("name,error,call", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_inputs_raise(name, error, call):
    with pytest.raises(error, match=ERROR_FORMAT):
        call()


COMPILE_SCRIPT = r"""
from kernels import masking
pointers = dict(keep_ptr="*i64", restore_ptr="*i64", mask_ptr="*fp32", x4_ptr="*fp32", x2_ptr="*fp32")
cases = ((256, True, True, "*fp32"), (4096, False, True, "*bf16"), (1, True, False, "*fp16"))
for block, descending, maps, scores in cases:
    compile_kernel(masking._sort_stride_mask_kernel, dict(pointers, scores_ptr=scores),
                 {"BLOCK": block, "DESCENDING": descending, "HAS_MAPS": maps}, num_warps=masking._num_warps(block))
print("compiled")
"""


@pytest.mark.slow  # a real Triton compile in a subprocess
@pytest.mark.parametrize("target", sorted(GPU_TARGETS))
def test_kernel_compiles_for(target, tmp_path):
    """The kernel compiles for an A100 and an H100/H200 with the real Triton compiler (see tests/sm90.py)."""
    assert_compiles_for(COMPILE_SCRIPT, tmp_path, GPU_TARGETS[target])
