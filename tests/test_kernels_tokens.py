"""The Triton token gather / restore kernels (kernels/tokens.py) against their eager twins (kernels/reference.py).

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1); where
CUDA is there and the interpreter is off, the same tests run on the GPU. Copies (both forwards, the
visible / token gradients) are compared bit for bit; only the mask token's gradient, a sum, has a
tolerance. Outputs handed to the launchers are filled with NaN first, so an unwritten element shows.
"""

import re

import pytest
import torch

import kernels
from kernels import reference as ref
from kernels import testing, tokens
from tests.device import KERNEL_DEVICE as DEVICE
from tests.device import cpu_dispatch_only
from tests.sm90 import GPU_TARGETS, assert_compiles_for
from tests.tolerances import TOLERANCES as TABLE

pytestmark = pytest.mark.kernel_device  # tensors on the GPU when one runs the suite there

# (atol, rtol) of the mask token's gradient, the one result that is not a copy: tests/tolerances.py
TOLERANCES = {
    dtype: TABLE[("triton_mask_token_grad", dtype)] for dtype in (torch.float32, torch.bfloat16, torch.float16)
}

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, L, K, D): B=1 and K=1; L not a power of two; K > 64 (several id blocks in the position lookup);
# D from 24 to 1000, powers of two or not. The model's size (L=196, K=49, D=768) runs for two of the
# (dtype, layout) pairs only (restore: the model's own, bf16 strided): under the interpreter every program
# costs milliseconds.
SMALL_SHAPES = [(1, 37, 1, 24), (2, 37, 10, 96), (2, 196, 98, 24), (2, 37, 9, 1000)]
CASES = [(s, dt, contiguous) for s in SMALL_SHAPES for dt in DTYPES for contiguous in (True, False)] + [
    ((2, 196, 49, 768), torch.bfloat16, False),  # the model: bf16 autocast, skips as transposed views
    ((2, 196, 49, 768), torch.float32, True),
]
MASK_LAYOUTS = ["mask[1,1,D]-fp32", "mask[D]-strided-visible-dtype"]
# restore: every mask token layout on the narrow rows; wide rows (D >= 768) with the model's mask token and
# 16-bit tokens only (the restore runs four kernels per case)
RESTORE_CASES = [
    (case, layout)
    for case in CASES
    for layout in MASK_LAYOUTS
    if case[0][3] < 768 or (layout == MASK_LAYOUTS[0] and case[1] != torch.float32)
]


def _wide_is_slow(case):
    """Wide rows (D >= 768, the model's size among them) run in the full suite only (marked slow): under the
    interpreter they cost seconds; every dtype and layout still runs on the narrow rows in the fast loop."""
    return [pytest.mark.slow] if case[0][3] >= 768 else []


def _case_id(case):
    (B, L, K, D), dtype, contiguous = case
    return f"B{B}-L{L}-K{K}-D{D}-{str(dtype)[6:]}-{'contig' if contiguous else 'strided'}"


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern (NaN-safe, tells -0 from +0), for exact comparisons."""
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(_bits(actual), _bits(expected))


def _ids(B, L, K, generator):
    """[B,K] distinct raster indices per row, in a random (rank-like) order."""
    return torch.stack([torch.randperm(L, generator=generator)[:K] for _ in range(B)]).to(DEVICE)


def _tokens(B, L, D, dtype, contiguous, generator):
    """[B,L,D] random tokens; the strided layout is the model's x.flatten(2).transpose(1, 2) of [B,D,L]."""
    if contiguous:
        return torch.randn(B, L, D, generator=generator).to(DEVICE, dtype)
    return torch.randn(B, D, L, generator=generator).to(DEVICE, dtype).transpose(1, 2)


def _poisoned(*shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def _twin_grads(fn, inputs, grad_out):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return out.detach(), torch.autograd.grad(out, inputs, grad_out)


# ---------------------------------------------------------------------------------------------
# token_gather
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c), marks=_wide_is_slow(c)) for c in CASES])
def test_token_gather_matches_twin_bitwise(case, generator):
    (B, L, K, D), dtype, contiguous = case
    tokens_BLD = _tokens(B, L, D, dtype, contiguous, generator)
    assert tokens_BLD.is_contiguous() == contiguous
    ids = _ids(B, L, K, generator)
    grad_BKD = torch.randn(B, K, D, generator=generator).to(DEVICE, dtype)
    expected, (expected_grad,) = _twin_grads(lambda t: ref.token_gather(t, ids), [tokens_BLD], grad_BKD)

    # launchers, every output poisoned first
    (out,) = testing.token_gather_forward([tokens_BLD], ids, out=[_poisoned(B, K, D, dtype=dtype)])
    assert_bitwise_equal(out, expected)
    (grad,) = testing.token_gather_backward([grad_BKD], ids, L, out=[_poisoned(B, L, D, dtype=dtype)])
    assert_bitwise_equal(grad, expected_grad)  # exact zeros where nothing was kept

    # the autograd op: a second run of the same kernels, bitwise equal to the first
    leaf = tokens_BLD.detach().requires_grad_()
    gathered = tokens.token_gather(leaf, ids)
    gathered.backward(grad_BKD)
    assert_bitwise_equal(gathered.detach(), out)
    assert_bitwise_equal(leaf.grad, grad)


def test_token_gather_takes_a_stride_zero_gradient(generator):
    """``out.sum().backward()`` hands the backward an expanded (all strides 0) gradient."""
    B, L, K, D = 2, 37, 10, 96
    x = torch.randn(B, L, D, generator=generator, device=DEVICE).requires_grad_()
    ids = _ids(B, L, K, generator)
    tokens.token_gather(x, ids).sum().backward()
    expected = torch.zeros(B, L, D, device=DEVICE)
    expected.scatter_(1, ids.unsqueeze(-1).expand(-1, -1, D), 1.0)
    assert_bitwise_equal(x.grad, expected)


# ---------------------------------------------------------------------------------------------
# token_gather_many
# ---------------------------------------------------------------------------------------------
class _CountLaunches:
    """Stands in for a @triton.jit kernel and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.fixture
def launches(monkeypatch):
    counters = {
        name: _CountLaunches(getattr(tokens, name))
        for name in ("_gather_rows_kernel", "_place_rows_kernel", "_restore_backward_kernel", "_sum_partials_kernel")
    }
    for name, counter in counters.items():
        monkeypatch.setattr(tokens, name, counter)
    return counters


@pytest.mark.parametrize(
    "shape,dtype",
    [((2, 196, 49, 768), torch.bfloat16), ((1, 37, 1, 24), torch.float32), ((2, 37, 9, 1000), torch.float16)],
)
def test_token_gather_many_is_one_launch_each_way(shape, dtype, launches, generator):
    """The model's three gathers: stage-3 tokens (contiguous) and two skips (transposed views)."""
    B, L, K, D = shape
    inputs = [_tokens(B, L, D, dtype, contiguous, generator) for contiguous in (True, False, False)]
    ids = _ids(B, L, K, generator)
    grads = [torch.randn(B, K, D, generator=generator).to(DEVICE, dtype) for _ in inputs]
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = tokens.token_gather_many(leaves, ids)
    torch.autograd.backward(outs, grads)
    assert launches["_gather_rows_kernel"].launches == 1 and launches["_place_rows_kernel"].launches == 1
    for out, leaf, t, grad in zip(outs, leaves, inputs, grads):
        expected, (expected_grad,) = _twin_grads(lambda x: ref.token_gather(x, ids), [t], grad)
        assert_bitwise_equal(out.detach(), expected)
        assert_bitwise_equal(leaf.grad, expected_grad)
    # launchers with poisoned outputs
    poisoned = testing.token_gather_forward(inputs, ids, out=[_poisoned(B, K, D, dtype=dtype) for _ in inputs])
    for got, out in zip(poisoned, outs):
        assert_bitwise_equal(got, out.detach())
    poisoned = testing.token_gather_backward(grads, ids, L, out=[_poisoned(B, L, D, dtype=dtype) for _ in inputs])
    for got, leaf in zip(poisoned, leaves):
        assert_bitwise_equal(got, leaf.grad)


def test_token_gather_many_falls_back_per_group(launches, generator):
    """Shapes or dtypes that differ get launches of their own; equal tensors still share one; order is kept."""
    B, L, K = 2, 37, 10
    ids = _ids(B, L, K, generator)
    widths_dtypes = [(8, torch.float32), (16, torch.float32), (8, torch.bfloat16), (8, torch.float32)] + [
        (4, torch.float32)
    ] * 4  # four equal tensors: a launch of 3, then one of 1
    inputs = [torch.randn(B, L, D, generator=generator).to(DEVICE, dtype) for D, dtype in widths_dtypes]
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = tokens.token_gather_many(leaves, ids)
    assert launches["_gather_rows_kernel"].launches == 5  # {0,3}, {1}, {2}, {4,5,6}, {7}
    expected = ref.token_gather_many(inputs, ids)
    assert len(outs) == len(expected)
    for got, want in zip(outs, expected):
        assert_bitwise_equal(got.detach(), want)
    sum(o.float().sum() for o in outs).backward()
    assert launches["_place_rows_kernel"].launches == 5
    for leaf in leaves:
        assert torch.equal(
            leaf.grad.sum(dim=2) != 0, torch.zeros(B, L, dtype=torch.bool, device=DEVICE).scatter_(1, ids, True)
        )
    assert tokens.token_gather_many([], ids) == ()


# ---------------------------------------------------------------------------------------------
# token_restore
# ---------------------------------------------------------------------------------------------
def _mask_token(D, dtype, layout, generator):
    if layout == MASK_LAYOUTS[0]:  # the model's parameter, visible tokens under autocast
        return torch.randn(1, 1, D, generator=generator).to(DEVICE)
    # [D] in the visible dtype (FSDP2 bf16 parameters), read through a stride-2 view
    return torch.randn(D, 2, generator=generator).to(DEVICE, dtype)[:, 0]


@pytest.mark.parametrize(
    "case,mask_layout",
    [pytest.param(c, layout, id=f"{_case_id(c)}-{layout}", marks=_wide_is_slow(c)) for c, layout in RESTORE_CASES],
)
def test_token_restore_matches_twin(case, mask_layout, generator):
    (B, L, K, D), dtype, contiguous = case
    visible = _tokens(B, K, D, dtype, contiguous, generator)
    mask_token = _mask_token(D, dtype, mask_layout, generator)
    ids = _ids(B, L, K, generator)
    grad_BLD = torch.randn(B, L, D, generator=generator).to(DEVICE, dtype)
    expected, (expected_visible_grad, expected_mask_grad) = _twin_grads(
        lambda v, m: ref.token_restore(v, m, ids, L), [visible, mask_token], grad_BLD
    )

    out = testing.token_restore_forward(visible, mask_token, ids, L, out=_poisoned(B, L, D, dtype=dtype))
    assert_bitwise_equal(out, expected)  # mask token rounded exactly as tensor.to(dtype) does
    visible_grad, mask_grad = testing.token_restore_backward(
        grad_BLD, ids, mask_token.dtype, out=(_poisoned(B, K, D, dtype=dtype), _poisoned(D, dtype=mask_token.dtype))
    )
    assert_bitwise_equal(visible_grad, expected_visible_grad)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(mask_grad, expected_mask_grad.reshape(D), atol=atol, rtol=rtol)
    # the fp32 sum itself, computed independently in fp64
    masked = torch.ones(B, L, dtype=torch.bool, device=DEVICE).scatter_(1, ids, False)
    exact = grad_BLD[masked].double().sum(0)
    torch.testing.assert_close(mask_grad.double(), exact.to(mask_token.dtype).double(), atol=atol, rtol=rtol)

    # the autograd op: a second run of the same kernels, bitwise equal; gradients shaped like the inputs
    visible_leaf, mask_leaf = visible.detach().requires_grad_(), mask_token.detach().requires_grad_()
    restored = tokens.token_restore(visible_leaf, mask_leaf, ids, L)
    restored.backward(grad_BLD)
    assert_bitwise_equal(restored.detach(), out)
    assert_bitwise_equal(visible_leaf.grad, visible_grad)
    assert mask_leaf.grad.shape == mask_token.shape
    assert_bitwise_equal(mask_leaf.grad.reshape(D), mask_grad)


@pytest.mark.parametrize("target_partials,block_partials", [(3, 64), (1024, 2)])
def test_token_restore_mask_grad_two_stages(target_partials, block_partials, monkeypatch, generator):
    """Stage 1 with chunks of several position blocks (3 blocks per chunk: chunks of 3 and 1 + 2 empty),
    stage 2 over more partial rows than one block (8 rows, 2 per step)."""
    monkeypatch.setattr(tokens, "_TARGET_PARTIALS", target_partials)
    monkeypatch.setattr(tokens, "_BLOCK_PARTIALS", block_partials)
    B, L, K, D = 2, 196, 49, 24  # D=24: 64 positions per block, 4 blocks per row (the last one of 4)
    grad_BLD = torch.randn(B, L, D, generator=generator, device=DEVICE)
    ids = _ids(B, L, K, generator)
    visible_grad, mask_grad = testing.token_restore_backward(grad_BLD, ids, torch.float32)
    assert_bitwise_equal(visible_grad, ref.token_gather(grad_BLD, ids))
    masked = torch.ones(B, L, dtype=torch.bool, device=DEVICE).scatter_(1, ids, False)
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(mask_grad.double(), grad_BLD[masked].double().sum(0), atol=atol, rtol=rtol)


def test_token_restore_frozen_mask_token_and_stride_zero_gradient(generator):
    B, L, K, D = 2, 37, 10, 96
    visible = torch.randn(B, K, D, generator=generator, device=DEVICE).requires_grad_()
    mask_token = torch.randn(1, 1, D, generator=generator, device=DEVICE)  # no gradient wanted
    ids = _ids(B, L, K, generator)
    tokens.token_restore(visible, mask_token, ids, L).sum().backward()
    assert_bitwise_equal(visible.grad, torch.ones(B, K, D, device=DEVICE))
    mask_token.requires_grad_()
    tokens.token_restore(visible.detach(), mask_token, ids, L).sum().backward()
    assert_bitwise_equal(mask_token.grad, torch.full((1, 1, D), float(B * (L - K)), device=DEVICE))


# ---------------------------------------------------------------------------------------------
# determinism, launch rule, torch.compile
# ---------------------------------------------------------------------------------------------
def test_two_runs_are_bitwise_equal_gradients_included(generator):
    """No atomics: the gathers, the scatters and the mask token's fixed-order reduction repeat exactly."""
    B, L, K, D = 2, 37, 10, 1000
    inputs = [_tokens(B, L, D, torch.bfloat16, contiguous, generator) for contiguous in (True, False, False)]
    mask_token = torch.randn(1, 1, D, generator=generator, device=DEVICE)
    ids = _ids(B, L, K, generator)
    grad_BLD = torch.randn(B, L, D, generator=generator).to(DEVICE, torch.bfloat16)

    def run():
        leaves = [t.detach().requires_grad_() for t in inputs]
        mask_leaf = mask_token.detach().requires_grad_()
        x, skip1, skip2 = tokens.token_gather_many(leaves, ids)
        out = tokens.token_restore(x + skip1 + skip2, mask_leaf, ids, L)
        out.backward(grad_BLD)
        return [out.detach(), mask_leaf.grad] + [leaf.grad for leaf in leaves]

    for first, second in zip(run(), run()):
        assert_bitwise_equal(first, second)


def test_launch_rule(monkeypatch):
    cpu = torch.zeros(1, device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tokens._use_triton(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not tokens._use_triton(cpu)
    assert not tokens._use_triton(torch.zeros(1, device="meta"))


@cpu_dispatch_only
def test_without_the_interpreter_a_cpu_tensor_takes_the_twin(monkeypatch, launches, generator):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    B, L, K, D = 2, 37, 10, 24
    x = torch.randn(B, L, D, generator=generator).requires_grad_()
    visible = torch.randn(B, K, D, generator=generator).requires_grad_()
    mask_token = torch.randn(1, 1, D, generator=generator).requires_grad_()
    ids = _ids(B, L, K, generator).cpu()
    out = tokens.token_restore(visible + tokens.token_gather(x, ids), mask_token, ids, L)
    grad = torch.randn(B, L, D, generator=generator)
    got = torch.autograd.grad(out, (x, visible, mask_token), grad)
    expected_out, expected = _twin_grads(
        lambda a, v, m: ref.token_restore(v + ref.token_gather(a, ids), m, ids, L), [x, visible, mask_token], grad
    )
    assert sum(counter.launches for counter in launches.values()) == 0
    assert_bitwise_equal(out.detach(), expected_out)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=TOLERANCES[torch.float32][0], rtol=TOLERANCES[torch.float32][1])
    # the launchers still honour out= on this path
    poisoned = testing.token_restore_backward(grad, ids, torch.float32, out=(_poisoned(B, K, D), _poisoned(D)))
    assert not any(bool(t.isnan().any()) for t in poisoned)
    assert not testing.token_gather_backward([visible.detach()], ids, L, out=[_poisoned(B, L, D)])[0].isnan().any()


def test_torch_compile_fullgraph_forward_and_backward(generator):
    """The custom ops are single graph nodes: no graph break, forward and gradients equal to the twins."""
    torch._dynamo.reset()
    B, L, K, D = 2, 37, 10, 24

    def encoder_decoder(gather_many, restore, x, skip1, skip2, mask_token, ids):
        x, skip1, skip2 = gather_many((x, skip1, skip2), ids)
        return restore(x + skip1 + skip2, mask_token, ids, L)

    inputs = [_tokens(B, L, D, torch.float32, contiguous, generator) for contiguous in (True, False, False)]
    inputs.append(torch.randn(1, 1, D, generator=generator, device=DEVICE))
    ids = _ids(B, L, K, generator)
    grad = torch.randn(B, L, D, generator=generator, device=DEVICE)
    compiled = torch.compile(
        lambda *args: encoder_decoder(tokens.token_gather_many, tokens.token_restore, *args),
        fullgraph=True,
        backend="aot_eager",
    )
    got_out, got_grads = _twin_grads(lambda *args: compiled(*args, ids), inputs, grad)
    expected_out, expected_grads = _twin_grads(
        lambda *args: encoder_decoder(ref.token_gather_many, ref.token_restore, *args, ids), inputs, grad
    )
    assert_bitwise_equal(got_out, expected_out)
    for got, expected in zip(got_grads[:3], expected_grads[:3]):
        assert_bitwise_equal(got, expected)
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(got_grads[3], expected_grads[3], atol=atol, rtol=rtol)

    single = torch.compile(tokens.token_gather, fullgraph=True, backend="aot_eager")
    leaf = inputs[1].detach().requires_grad_()
    single(leaf, ids).backward(grad[:, :K])
    assert_bitwise_equal(
        leaf.grad, torch.zeros(B, L, D, device=DEVICE).scatter_(1, ids.unsqueeze(-1).expand(-1, -1, D), grad[:, :K])
    )


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def _bad_inputs():
    x = torch.randn(2, 10, 4)
    ids = torch.tensor([[3, 1, 7], [0, 9, 2]])
    visible, mask_token = torch.randn(2, 3, 4), torch.randn(1, 1, 4)
    meta_ids = torch.zeros(2, 3, dtype=torch.int64, device="meta")
    return [
        # (call, error class, op, text of the "expected" part)
        (lambda: tokens.token_gather(x, ids.int()), TypeError, "token_gather", "int64"),
        (lambda: tokens.token_gather(x.int(), ids), TypeError, "token_gather", "float32, bfloat16 or float16"),
        (lambda: tokens.token_gather(x[0], ids), ValueError, "token_gather", r"\[B,L,D\]"),
        (lambda: tokens.token_gather(x, ids[0]), ValueError, "token_gather", r"\[2,K\]"),
        (lambda: tokens.token_gather(x, ids[:1]), ValueError, "token_gather", "one row per batch element"),
        (lambda: tokens.token_gather(x, meta_ids), ValueError, "token_gather", "device"),
        (lambda: tokens.token_gather(x[:, :2], ids), ValueError, "token_gather", "at least K = 3 tokens"),
        (lambda: tokens.token_gather(x.tolist(), ids), TypeError, "token_gather", "torch.Tensor"),
        (lambda: tokens.token_gather_many(x, ids), TypeError, "token_gather_many", "list or tuple"),
        (lambda: tokens.token_gather_many([x, x.to("meta")], ids), ValueError, "token_gather_many", "one device"),
        (lambda: tokens.token_gather_many([x, x[:1]], ids), ValueError, "token_gather_many", "batch size 2"),
        (lambda: testing.token_gather_forward([x] * 4, ids), ValueError, "token_gather", "1 to 3 tensors"),
        (lambda: testing.token_gather_forward([x, x.half()], ids), ValueError, "token_gather", "one shape and dtype"),
        (
            lambda: testing.token_gather_forward([x], ids, out=[torch.empty(2, 3, 5)]),
            ValueError,
            "token_gather",
            r"out of shape \(2, 3, 4\)",
        ),
        (lambda: tokens.token_restore(visible, mask_token, ids, 2), ValueError, "token_restore", "num_patches >= K"),
        (
            lambda: tokens.token_restore(visible, mask_token, ids, 10.0),
            TypeError,
            "token_restore",
            "num_patches as an int",
        ),
        (lambda: tokens.token_restore(visible, torch.randn(5), ids, 10), ValueError, "token_restore", "D = 4 elements"),
        (
            lambda: tokens.token_restore(visible, mask_token.long(), ids, 10),
            TypeError,
            "token_restore",
            "mask_token of dtype",
        ),
        (
            lambda: tokens.token_restore(visible.double(), mask_token, ids, 10),
            TypeError,
            "token_restore",
            "visible of dtype",
        ),
        (lambda: tokens.token_restore(visible, mask_token.to("meta"), ids, 10), ValueError, "token_restore", "device"),
        (
            lambda: tokens.token_restore(visible, mask_token, ids[:, :2], 10),
            ValueError,
            "token_restore",
            "one id per visible token",
        ),
        (lambda: tokens.token_restore(visible[0], mask_token, ids, 10), ValueError, "token_restore", r"\[B,K,D\]"),
        (
            lambda: testing.token_restore_backward(x, ids, torch.int32),
            TypeError,
            "token_restore_backward",
            "mask_dtype",
        ),
        # the check_ids guard: ids out of [0, L), repeated ids
        (
            lambda: tokens.token_gather(x, torch.tensor([[3, 1, 10], [0, 9, 2]])),
            ValueError,
            "token_gather",
            r"values in \[0, 10\)",
        ),
        (
            lambda: tokens.token_gather(x, torch.tensor([[3, 1, 7], [0, -1, 2]])),
            ValueError,
            "token_gather",
            r"values in \[0, 10\)",
        ),
        (lambda: tokens.token_restore(visible, mask_token, ids, 9), ValueError, "token_restore", r"values in \[0, 9\)"),
        (lambda: tokens.token_gather(x, torch.tensor([[3, 1, 3], [0, 9, 2]])), ValueError, "token_gather", "distinct"),
        (
            lambda: testing.token_gather_backward([visible], ids, 8),
            ValueError,
            "token_gather_backward",
            r"values in \[0, 8\)",
        ),
    ]


@pytest.mark.parametrize("index", range(len(_bad_inputs())))
def test_bad_input_gets_a_clear_error(index):
    call, error, op, expected = _bad_inputs()[index]
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert re.fullmatch(rf"{op}: expected .+, got .+; .+", message, flags=re.DOTALL), message
    assert re.search(expected, message.split(", got ")[0]), message
    if error is TypeError and "dtype" in message:
        assert isinstance(info.value, ValueError)  # like the twins, which raise ValueError for a wrong dtype


def test_check_ids_is_a_guard_the_trainer_can_turn_off(monkeypatch, generator):
    B, L, K, D = 2, 10, 3, 4
    visible, mask_token = torch.randn(B, K, D, generator=generator), torch.randn(D, generator=generator)
    out_of_range = torch.tensor([[3, 1, L], [0, 9, 2]])
    with pytest.raises(ValueError, match="values in"):
        tokens.token_restore(visible, mask_token, out_of_range, L)
    monkeypatch.setattr(kernels.HOST_SYNC_GUARDS, "check_ids", False)
    # unchecked: no host sync and no error; an id that matches no position leaves its row out
    out = tokens.token_restore(visible, mask_token, out_of_range, L)
    assert torch.equal(out[0, 3], visible[0, 0]) and torch.equal(out[0, 1], visible[0, 1])
    assert int((out == mask_token).all(dim=2).sum()) == B * L - (2 * K - 1)


# ---------------------------------------------------------------------------------------------
# the real compiler
# ---------------------------------------------------------------------------------------------
COMPILE_SCRIPT = r"""
from kernels import tokens
ids = dict(ids_ptr="*i64")
for D in (768, 24):
    block_rows, block_d, num_warps = tokens._config(D)
    for dtypes in (("*bf16",) * 3, ("*fp32",) * 3, ("*fp16", "*fp32", "*bf16")):
        rows = dict(BLOCK_ROWS=block_rows, BLOCK_D=block_d)
        for n in (1, 3):  # Triton tuples: n pointers and n (stride, stride, stride) per side
            strides = (("i32",) * 3,) * n
            data = dict(srcs=dtypes[:n], dsts=dtypes[:n], src_strides=strides, dst_strides=strides)
            compile_kernel(tokens._gather_rows_kernel, dict(ids, **data), dict(rows, NUM_TENSORS=n), num_warps)
            for fill in (False, True):  # gather backward; restore forward with the mask token (fp32 or not)
                pointers = dict(ids, **data, fill_ptr="*fp32" if fill else dtypes[0])
                compile_kernel(tokens._place_rows_kernel, pointers,
                             dict(rows, NUM_TENSORS=n, HAS_FILL=fill, BLOCK_K=tokens._BLOCK_K), num_warps)
        compile_kernel(tokens._restore_backward_kernel,
                     dict(ids, grad_ptr=dtypes[0], visible_grad_ptr=dtypes[0], partial_ptr="*fp32"),
                     dict(rows, BLOCK_K=tokens._BLOCK_K), num_warps)
        compile_kernel(tokens._sum_partials_kernel, dict(partial_ptr="*fp32", out_ptr=dtypes[1]),
                     dict(BLOCK_P=tokens._BLOCK_PARTIALS, BLOCK_D=min(block_d, 64)))
print("compiled")
"""


@pytest.mark.slow  # a real Triton compile in a subprocess
@pytest.mark.parametrize("target", sorted(GPU_TARGETS))
def test_kernels_compile_for(target, tmp_path):
    """Every token kernel compiles for an A100 and an H100/H200 with the real Triton compiler (see tests/sm90.py)."""
    assert_compiles_for(COMPILE_SCRIPT, tmp_path, GPU_TARGETS[target])
