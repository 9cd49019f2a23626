"""Triton depthwise 5x5 conv over visible tiles: the token mixer of the sparse encoder, with its gradients.

Shape legend: B batch, K visible tiles per image, T tile side (4 at stage 1, 2 at stage 2), C channels.
``tiles_BKTTC`` [B,K,T,T,C] channels-last; ``neighbours_BK9`` [B,K,9] int64 from
``reference.tile_neighbours`` (slot ``3*(dy+1) + (dx+1)``: the tile at patch offset (dy, dx), an index into
the K tiles of the same image, -1 where that patch is masked or outside the image).

Public op (same signature, output and gradients as its eager twin ``reference.depthwise_conv5x5_tiles``):
``depthwise_conv5x5_tiles(tiles, neighbours, weight [C,1,5,5], bias [C] | None) -> [B,K,T,T,C]`` in the
tiles' dtype: the dense ``conv2d(padding=2, groups=C)`` of the map in which only the visible tiles are
non-zero, evaluated on those tiles; the 2-pixel halo comes from the 8 neighbours, zero for -1.

Layering (as kernels/tokens.py): private ``@triton.jit`` kernels; private launchers
(``_depthwise_conv5x5_tiles_forward`` / ``_backward``) that validate, check the neighbour table (the
``HOST_SYNC_GUARDS.check_neighbours`` guard), allocate their outputs (or write into ``out=``: the
poisoned-output tests, through ``kernels.testing``) and launch; custom ops
``infmae::depthwise_tiles_fwd`` / ``_bwd`` with fake implementations (single graph nodes for
``torch.compile``); a ``torch.autograd.Function``.

Design notes:
- Forward: one program per (tile, block of channels): T*T output pixels x BLOCK_C channels, 25 taps; each
  tap's source pixel lies in one of the 9 neighbourhood tiles, whose index is read from the table (masked
  load, zero for -1). fp32 accumulation, one rounding at the store.
- Input gradient: the same kernel on the output gradient with the weight flipped (``FLIP``):
  ``grad_in(p) = sum_e grad_out(p + e - 2) * w[4 - e]``. The neighbour relation is symmetric, and masked
  tiles have neither inputs nor outputs, so the table serves both directions.
- Weight and bias gradients: no atomics. Each program sums ``grad_out * shifted input`` over a fixed chunk of
  tiles (one tensor dimension, no loop), for one kernel row of taps and its channel block, into fp32 partials
  [P,26,C] (25 taps + the bias); the partials are then summed over P by ``torch.sum`` in a fixed order:
  bitwise deterministic. At most 128 registers per thread at sm_90 for every variant (a compile test).
- One config, from T and C (no autotune). Under the Triton interpreter (CPU tests) bf16 arithmetic and
  fp32->bf16 conversion are wrong, so every load is converted to fp32 and stores round by integer ops
  (``to_dtype_rtne``, kernels/_launch.py).
- Written for torch 2.11-2.13 and Triton 3.6-3.7: no block pointers, no tensor descriptors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels._common import (
    FLOAT_DTYPES,
    HOST_SYNC_GUARDS,
    check_float,
    fail,
    out_list,
    out_or_new,
)
from kernels._launch import to_dtype_rtne, use_triton

__all__ = ["depthwise_conv5x5_tiles"]

OP = "depthwise_conv5x5_tiles"
_TAP_SLOTS = 32  # the 25 taps padded to a power of two
_WGRAD_ROWS = 64  # weight gradient: pixel rows per program (TILES tiles of BLOCK_P pixels)
_WGRAD_BLOCK_C = 16  # weight gradient: channels per program (32 bytes of bf16, one sector)


def _use_triton(t: torch.Tensor) -> bool:
    """The shared launch rule (kernels/_launch.py)."""
    return use_triton(t, _depthwise_tiles_kernel)


def _config(T: int, C: int) -> tuple[int, int, int]:
    """Forward / input gradient: (BLOCK_P, BLOCK_C, num_warps): all T*T pixels of a tile x 32 tap slots (25
    used) x BLOCK_C channels (T=4: 16 channels, 8192 elements on 8 warps; T=2: 32 channels, 4096 elements on 4
    warps; fewer for narrow C). T=2 used 64 channels (8192 elements): 106-128 registers per thread at sm_90,
    at the limit; 32 needs 56-64."""
    block_p = triton.next_power_of_2(T * T)
    block_c = min(triton.next_power_of_2(max(C, 1)), max(16, 4096 // (block_p * _TAP_SLOTS)))
    return block_p, block_c, _warps(block_p * _TAP_SLOTS * block_c)


def _warps(elements: int) -> int:
    """8 warps for the 8192-element programs: half the registers per thread of 4 (sm_90 compile: 124 -> ~70)."""
    return 8 if elements >= 8192 else 4


def _wgrad_config(T: int, C: int) -> tuple[int, int, int, int]:
    """Weight gradient: (BLOCK_P, TILES, BLOCK_C, num_warps): TILES whole tiles (64 pixel rows) x 8 tap slots
    (one kernel row) x 16 channels = 8192 elements per program, fewer for narrow C."""
    block_p = triton.next_power_of_2(T * T)
    tiles = max(1, _WGRAD_ROWS // block_p)
    block_c = min(triton.next_power_of_2(max(C, 1)), _WGRAD_BLOCK_C)
    return block_p, tiles, block_c, _warps(tiles * block_p * 8 * block_c)


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _gather_window(src_rows, s_k, s_y, s_x, s_c, nb_rows, s_slot, pixels, row_ok, taps, tap_ok, cols, col_ok, T):
    """For every row (a pixel p of a tile) and tap t (dy, dx) = (t // 5, t % 5): src at pixel (p + (dy, dx) - 2),
    read from the neighbourhood tile it falls in (zero for a -1 neighbour): [R, G, BLOCK_C] fp32.
    src_rows / nb_rows [R]: each row's image in src and its tile's row of the neighbour table; pixels [R];
    taps [G]. All taps in one tensor: one gather per program (the interpreter's cost is per operation)."""
    yy = (pixels // T)[:, None] + (taps // 5)[None, :] + (T - 2)  # row in the 3T x 3T neighbourhood
    xx = (pixels % T)[:, None] + (taps % 5)[None, :] + (T - 2)
    ny = yy // T
    nx = xx // T
    ok = row_ok[:, None] & tap_ok[None, :]
    neighbour = tl.load(nb_rows[:, None] + (ny * 3 + nx) * s_slot, mask=ok, other=-1)  # [R, G] int64
    ok = ok & (neighbour >= 0)
    base = src_rows[:, None] + neighbour * s_k + (yy - ny * T) * s_y + (xx - nx * T) * s_x
    values = tl.load(
        base[:, :, None] + cols[None, None, :] * s_c, mask=ok[:, :, None] & col_ok[None, None, :], other=0.0
    )
    return values.to(tl.float32)


@triton.jit
def _depthwise_tiles_kernel(
    src_ptr,
    s_b,
    s_k,
    s_y,
    s_x,
    s_c,
    nb_ptr,
    nb_b,
    nb_k,
    nb_s,
    w_ptr,
    w_c,
    w_y,
    w_x,
    bias_ptr,
    bias_s,
    out_ptr,
    o_b,
    o_k,
    o_y,
    o_x,
    o_c,
    K,
    C,
    T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TAPS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    FLIP: tl.constexpr,
):
    """out[b,k,p,c] = sum_taps w[c, tap] * src[pixel p + tap - 2 of the neighbourhood] (+ bias[c]).
    FLIP: the weight read as w[c, 4-dy, 4-dx] (the input gradient). Grid (B*K, cdiv(C, BLOCK_C))."""
    tile = tl.program_id(0).to(tl.int64)
    batch = tile // K
    k = tile % K
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    pixels = tl.arange(0, BLOCK_P)
    pixel_ok = pixels < T * T
    same = tl.zeros([BLOCK_P], dtype=tl.int64)  # every row (pixel) in the same tile
    src_rows = src_ptr + (same + batch * s_b)
    nb_rows = nb_ptr + (same + batch * nb_b + k * nb_k)
    taps = tl.arange(0, TAPS)
    tap_ok = taps < 25
    values = _gather_window(
        src_rows, s_k, s_y, s_x, s_c, nb_rows, nb_s, pixels, pixel_ok, taps, tap_ok, cols, col_ok, T
    )
    if FLIP:
        taps = 24 - taps  # w[4 - dy, 4 - dx]
    w = tl.load(
        w_ptr + cols[None, :] * w_c + (taps // 5)[:, None] * w_y + (taps % 5)[:, None] * w_x,
        mask=tap_ok[:, None] & col_ok[None, :],
        other=0.0,
    ).to(tl.float32)  # [TAPS, BLOCK_C]
    acc = tl.sum(values * w[None, :, :], axis=1)  # [BLOCK_P, BLOCK_C]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols * bias_s, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    dst = out_ptr + batch * o_b + k * o_k + (pixels // T) * o_y + (pixels % T) * o_x
    tl.store(
        dst[:, None] + cols[None, :] * o_c,
        to_dtype_rtne(acc, out_ptr.dtype.element_ty),
        mask=pixel_ok[:, None] & col_ok[None, :],
    )


@triton.jit
def _depthwise_tiles_wgrad_kernel(
    x_ptr,
    x_b,
    x_k,
    x_y,
    x_x,
    x_c,
    g_ptr,
    g_b,
    g_k,
    g_y,
    g_x,
    g_c,
    nb_ptr,
    nb_b,
    nb_k,
    nb_s,
    partial_ptr,
    num_tiles,
    K,
    C,
    T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    TILES: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """partial[p, 5*dy + dx, c] = sum over the TILES tiles of chunk p and their pixels of grad * x[pixel + (dy, dx)
    - 2]; partial[p, 25, c] = the sum of grad (the bias), written by the dy = 0 programs.
    Grid (P = cdiv(num_tiles, TILES), 5 kernel rows dy, cdiv(C, BLOCK_C)); partial [P,26,C] fp32 contiguous.

    Why this shape (it replaced one program per chunk of ~25 tiles looping over them with all 32 tap slots
    live, 229 registers per thread at sm_90 for T=2): the chunk's tiles are one tensor dimension (TILES *
    BLOCK_P rows, reduced by ``tl.sum``: no serial loop), and a program owns one kernel row of taps (5 of 8
    slots) so only an [8, BLOCK_C] accumulator is live; the more, smaller partial rows are summed afterwards in
    a fixed order (``torch.sum``: still bitwise deterministic, no atomics). The price: more partial rows, at
    the training shape (12,544 visible tiles) 3,136 x 26 x 256 fp32 at T=4 (83 MB) and 784 x 26 x 384 at T=2
    (31 MB), against 512 rows before; not yet timed on a GPU."""
    chunk = tl.program_id(0).to(tl.int64)
    dy = tl.program_id(1)
    cols = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    rows = tl.arange(0, TILES * BLOCK_P)
    tile = chunk * TILES + rows // BLOCK_P  # [R]: row r is pixel r % BLOCK_P of the chunk's tile r // BLOCK_P
    pixels = rows % BLOCK_P
    row_ok = (pixels < T * T) & (tile < num_tiles)
    batch = tile // K
    k = tile % K
    grad_src = g_ptr + batch * g_b + k * g_k + (pixels // T) * g_y + (pixels % T) * g_x
    grad = tl.load(grad_src[:, None] + cols[None, :] * g_c, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(
        tl.float32
    )  # [R, BLOCK_C]
    slots = tl.arange(0, 8)
    tap_ok = slots < 5
    taps = dy * 5 + slots
    nb_rows = nb_ptr + batch * nb_b + k * nb_k
    values = _gather_window(
        x_ptr + batch * x_b, x_k, x_y, x_x, x_c, nb_rows, nb_s, pixels, row_ok, taps, tap_ok, cols, col_ok, T
    )
    acc = tl.sum(grad[:, None, :] * values, axis=0)  # [8, BLOCK_C]
    row = partial_ptr + chunk * 26 * C
    tl.store(row + taps[:, None] * C + cols[None, :], acc, mask=tap_ok[:, None] & col_ok[None, :])
    tl.store(row + 25 * C + cols, tl.sum(grad, axis=0), mask=col_ok & (dy == 0))


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _validate(tiles, neighbours, weight, bias) -> None:
    reference.check_depthwise_tiles_inputs(OP, tiles, neighbours, weight, bias, dtypes=FLOAT_DTYPES)


def _check_neighbour_values(neighbours: torch.Tensor, K: int) -> None:
    """The ``check_neighbours`` guard: every index in [-1, K). Syncs with the host (two .item())."""
    if HOST_SYNC_GUARDS.check_neighbours and neighbours.numel() and neighbours.device.type != "meta":
        low, high = int(neighbours.min()), int(neighbours.max())
        if low < -1 or high >= K:
            fail(
                OP,
                f"neighbour indices in [-1, {K})",
                f"values in [{low}, {high}]",
                "build the table with reference.tile_neighbours(ids_keep, grid_hw)",
            )


def _weight_view(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], 5, 5)  # a view for the usual contiguous [C,1,5,5]


def _launch(src, neighbours, weight, bias, out, flip: bool) -> None:
    B, K, T, _, C = src.shape
    if B * K * C == 0:
        return
    w = _weight_view(weight)
    block_p, block_c, num_warps = _config(T, C)
    _depthwise_tiles_kernel[(B * K, triton.cdiv(C, block_c))](
        src,
        *src.stride(),
        neighbours,
        *neighbours.stride(),
        w,
        *w.stride(),
        bias if bias is not None else w,
        bias.stride(0) if bias is not None else 0,
        out,
        *out.stride(),
        K,
        C,
        T=T,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        TAPS=_TAP_SLOTS,
        HAS_BIAS=bias is not None,
        FLIP=flip,
        num_warps=num_warps,
    )


def _depthwise_conv5x5_tiles_forward(
    tiles_BKTTC: torch.Tensor,
    neighbours_BK9: torch.Tensor,
    weight_C155: torch.Tensor,
    bias_C: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One launch: [B,K,T,T,C] in the tiles' dtype, the fp32 twin's output rounded once (fp32 accumulation);
    for 16-bit tiles the eager twin, which rounds the weights to the tiles' dtype first, may differ by more."""
    _validate(tiles_BKTTC, neighbours_BK9, weight_C155, bias_C)
    out = out_or_new(OP, "out", out, tiles_BKTTC.shape, tiles_BKTTC.dtype, tiles_BKTTC.device)
    _check_neighbour_values(neighbours_BK9, tiles_BKTTC.shape[1])
    if not _use_triton(tiles_BKTTC):
        return out.copy_(reference.depthwise_conv5x5_tiles(tiles_BKTTC, neighbours_BK9, weight_C155, bias_C))
    _launch(tiles_BKTTC, neighbours_BK9, weight_C155, bias_C, out, flip=False)
    return out


def _depthwise_conv5x5_tiles_backward(
    grad_BKTTC: torch.Tensor,
    tiles_BKTTC: torch.Tensor,
    neighbours_BK9: torch.Tensor,
    weight_C155: torch.Tensor,
    has_bias: bool = True,
    out: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """-> (tiles gradient [B,K,T,T,C] in the tiles' dtype, weight gradient in the weight's shape and dtype,
    bias gradient [C] in the weight's dtype, or None without a bias). ``out``: optional tensors for them.

    Input gradient: one launch of the forward kernel with the flipped weight. Weight and bias gradients: one
    launch writing fp32 partials per chunk of tiles, then a fixed-order ``torch.sum`` (no atomics)."""
    _validate(tiles_BKTTC, neighbours_BK9, weight_C155, None)
    if not isinstance(grad_BKTTC, torch.Tensor) or grad_BKTTC.shape != tiles_BKTTC.shape:
        got = f"shape {tuple(grad_BKTTC.shape)}" if isinstance(grad_BKTTC, torch.Tensor) else type(grad_BKTTC).__name__
        fail(OP, f"grad of shape {tuple(tiles_BKTTC.shape)}", got, "pass the gradient of the output")
    check_float(OP, "grad", grad_BKTTC)
    B, K, T, _, C = tiles_BKTTC.shape
    out_tiles, out_weight, out_bias = out_list(OP, out, 3)
    grad_tiles = out_or_new(OP, "out[0]", out_tiles, tiles_BKTTC.shape, tiles_BKTTC.dtype, tiles_BKTTC.device)
    grad_weight = out_or_new(OP, "out[1]", out_weight, weight_C155.shape, weight_C155.dtype, weight_C155.device)
    grad_bias = out_or_new(OP, "out[2]", out_bias, (C,), weight_C155.dtype, weight_C155.device) if has_bias else None
    if not _use_triton(tiles_BKTTC):
        with torch.enable_grad():
            leaves = [tiles_BKTTC.detach().requires_grad_(), weight_C155.detach().requires_grad_()]
            bias = torch.zeros(C, dtype=weight_C155.dtype, device=weight_C155.device, requires_grad=True)
            result = reference.depthwise_conv5x5_tiles(leaves[0], neighbours_BK9, leaves[1], bias if has_bias else None)
            grads = torch.autograd.grad(result, leaves + ([bias] if has_bias else []), grad_BKTTC)
        grad_tiles.copy_(grads[0])
        grad_weight.copy_(grads[1])
        if has_bias:
            grad_bias.copy_(grads[2])
        return grad_tiles, grad_weight, grad_bias
    _launch(grad_BKTTC, neighbours_BK9, weight_C155, None, grad_tiles, flip=True)
    num_tiles = B * K
    if num_tiles * C == 0:
        grad_weight.zero_()
        if has_bias:
            grad_bias.zero_()
        return grad_tiles, grad_weight, grad_bias
    block_p, tiles, block_c, num_warps = _wgrad_config(T, C)
    num_partials = triton.cdiv(num_tiles, tiles)
    partial = torch.empty(num_partials, 26, C, dtype=torch.float32, device=tiles_BKTTC.device)
    _depthwise_tiles_wgrad_kernel[(num_partials, 5, triton.cdiv(C, block_c))](
        tiles_BKTTC,
        *tiles_BKTTC.stride(),
        grad_BKTTC,
        *grad_BKTTC.stride(),
        neighbours_BK9,
        *neighbours_BK9.stride(),
        partial,
        num_tiles,
        K,
        C,
        T=T,
        BLOCK_P=block_p,
        TILES=tiles,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )
    totals = partial.sum(dim=0)  # [26, C] fp32, a fixed-order reduction
    grad_weight.copy_(totals[:25].t().reshape(grad_weight.shape))
    if has_bias:
        grad_bias.copy_(totals[25])
    return grad_tiles, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------
# torch.library custom ops: single graph nodes for torch.compile
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("infmae::depthwise_tiles_fwd", mutates_args=())
def _fwd_op(
    tiles: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _depthwise_conv5x5_tiles_forward(tiles, neighbours, weight, bias)


@_fwd_op.register_fake
def _(tiles, neighbours, weight, bias):
    return torch.empty_like(tiles, memory_format=torch.contiguous_format)


@torch.library.custom_op("infmae::depthwise_tiles_bwd", mutates_args=())
def _bwd_op(
    grad: torch.Tensor, tiles: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_tiles, grad_weight, grad_bias = _depthwise_conv5x5_tiles_backward(grad, tiles, neighbours, weight, has_bias)
    if grad_bias is None:  # a custom op returns tensors only
        grad_bias = weight.new_zeros(0)
    return grad_tiles, grad_weight, grad_bias


@_bwd_op.register_fake
def _(grad, tiles, neighbours, weight, has_bias):
    return (
        torch.empty_like(tiles, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        weight.new_empty(weight.shape[0] if has_bias else 0),
    )


# ---------------------------------------------------------------------------------------------
# autograd and the public op
# ---------------------------------------------------------------------------------------------
class _DepthwiseTiles(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tiles, neighbours, weight, bias):
        ctx.save_for_backward(tiles, neighbours, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return _fwd_op(tiles, neighbours, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        tiles, neighbours, weight = ctx.saved_tensors
        grad_tiles, grad_weight, grad_bias = _bwd_op(grad.contiguous(), tiles, neighbours, weight, ctx.has_bias)
        return (
            grad_tiles if ctx.needs_input_grad[0] else None,
            None,
            grad_weight if ctx.needs_input_grad[2] else None,
            grad_bias.to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None,
        )


def depthwise_conv5x5_tiles(tiles_BKTTC, neighbours_BK9, weight_C155, bias_C=None) -> torch.Tensor:
    """The twin's op (``reference.depthwise_conv5x5_tiles``: the same arguments, types and shapes, documented
    there) by Triton kernels, forward and backward."""
    _validate(tiles_BKTTC, neighbours_BK9, weight_C155, bias_C)
    return _DepthwiseTiles.apply(tiles_BKTTC, neighbours_BK9, weight_C155, bias_C)
