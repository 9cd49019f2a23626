"""Triton sort-and-stride mask: information-aware masking from patch scores (docs/specification.md, 'Kernels').

Shape legend: B batch, L = h*w patches in raster order, S the mask stride, K = ceil(L / S) visible
patches, h x w the patch grid.

``sort_stride_mask(scores_BL, stride, order="descending", grid_hw=None) -> MaskOutputs`` has the
signature and the outputs of its eager twin ``kernels.reference.sort_stride_mask``, the specification:
sort the patches by score (stable: ties go to the lower raster index, in both orders), keep ranks 0, S,
2S, ...; ``ids_keep`` [B,K] int64 in rank order, ``ids_restore`` [B,L] int64 (the inverse permutation),
``mask`` [B,L] float32 (1 = masked), and, when ``grid_hw`` is given, the visibility maps ``visible_x4``
[B,1,4h,4w] and ``visible_x2`` [B,1,2h,2w] (1 = visible), else None.
All five are bit-exact against the twin on the same scores, ties included.

Keys: a score (float32, or bfloat16/float16 widened exactly to float32) becomes an order-preserving
int32: -0.0 is first made +0.0 (torch.sort holds them equal, so ties between them break by index),
negative numbers get their low 31 bits flipped, and every NaN (of either sign, any payload) gets the
largest key, as torch.sort treats NaN as larger than +inf and NaNs as equal to each other. For
``descending`` the key is inverted (``~key``), so NaNs come first there, as in torch.sort. The int64
``(key << 32) | raster_index`` is sorted with ``tl.sort`` (values only): equal keys order by index,
which is the stable tie-break in both orders. Lanes past L get INT64_MAX and sort last.

Launch: one program per batch row, BLOCK = next_pow2(L) lanes (L = 1 ... 4096 tested); the sort is a
bitonic network in registers and shared memory, num_warps = clamp(BLOCK / 128, 4, 32). Rows longer
than ``MAX_TRITON_L`` = 4096 go to the eager twin (torch.sort on the same device, the same outputs by
definition): compiled for sm_90, BLOCK 4096 fits in 64 registers a thread (32 bytes spilled), while 8192
and 16384 spill 1.3 and 5.3 KB a thread to local memory (ptxas -v, Triton 3.7.1), unmeasured. The program
writes all outputs from the sorted lanes: ``ids_keep`` at rank // S, and scatters ``ids_restore``,
``mask`` and the 4x4 / 2x2 blocks of the maps to the lane's raster position (every output element is
written exactly once, since the sort is a permutation). One launch, no second kernel.

Which path runs (``_use_triton``): the Triton kernel for a CUDA tensor, or for a CPU tensor while
``TRITON_INTERPRET=1`` (tests); otherwise (a CPU tensor, no interpreter) the eager twin, so that
``torch.compile`` on a CPU machine traces and runs it. The op is the torch.library custom op
``infmae::sort_stride_mask``; it has no gradient (its outputs are integers and 0/1 maps). ``_write`` (that
rule, into given tensors) also serves ``kernels.testing.sort_stride_mask_out``, which writes into poisoned
outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from ._common import check_float, check_tensor, fail
from ._launch import use_triton
from .reference import MaskOutputs

__all__ = ["sort_stride_mask", "MaskOutputs"]

_OP = "sort_stride_mask"
MAX_TRITON_L = 4096  # longer rows: the eager twin (see the module docstring)


# ---------------------------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------------------------
@triton.jit
def _store_map_blocks(map_ptr, stride_b, stride_h, stride_w, b, row, col, visible, valid, SCALE: tl.constexpr):
    """Write ``visible`` into the SCALE x SCALE block of each lane's patch (row, col) of a visibility map."""
    for dy in tl.static_range(SCALE):
        for dx in tl.static_range(SCALE):
            offsets = b * stride_b + (SCALE * row + dy) * stride_h + (SCALE * col + dx) * stride_w
            tl.store(map_ptr + offsets, visible, mask=valid)


@triton.jit
def _sort_stride_mask_kernel(
    scores_ptr,
    keep_ptr,
    restore_ptr,
    mask_ptr,
    x4_ptr,
    x2_ptr,
    L,
    S,
    w,
    s_stride_b,
    s_stride_l,
    keep_stride_b,
    keep_stride_k,
    restore_stride_b,
    restore_stride_l,
    mask_stride_b,
    mask_stride_l,
    x4_stride_b,
    x4_stride_h,
    x4_stride_w,
    x2_stride_b,
    x2_stride_h,
    x2_stride_w,
    BLOCK: tl.constexpr,
    DESCENDING: tl.constexpr,
    HAS_MAPS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    valid = lane < L
    x = tl.load(scores_ptr + b * s_stride_b + lane.to(tl.int64) * s_stride_l, mask=valid, other=0.0)
    bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    bits = tl.where((bits & 0x7FFFFFFF) == 0, 0, bits)  # -0.0 -> +0.0 (in integers: no float folding)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # order-preserving int32
    key = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FFFFFFF, key)  # any NaN: the largest key
    if DESCENDING:
        key = ~key
    packed = (key.to(tl.int64) << 32) | lane.to(tl.int64)
    packed = tl.where(valid, packed, 0x7FFFFFFFFFFFFFFF)  # padding lanes sort last
    packed = tl.sort(packed)

    rank = lane  # after the sort, lane r holds rank r
    idx = (packed - ((packed >> 32) << 32)).to(tl.int32)  # the low 32 bits: raster index of rank r
    kept = (rank % S) == 0
    tl.store(
        keep_ptr + b * keep_stride_b + (rank // S).to(tl.int64) * keep_stride_k, idx.to(tl.int64), mask=valid & kept
    )
    idx64 = idx.to(tl.int64)
    tl.store(restore_ptr + b * restore_stride_b + idx64 * restore_stride_l, rank.to(tl.int64), mask=valid)
    tl.store(mask_ptr + b * mask_stride_b + idx64 * mask_stride_l, tl.where(kept, 0.0, 1.0), mask=valid)
    if HAS_MAPS:
        visible = tl.where(kept, 1.0, 0.0)
        row = (idx // w).to(tl.int64)
        col = (idx % w).to(tl.int64)
        _store_map_blocks(x4_ptr, x4_stride_b, x4_stride_h, x4_stride_w, b, row, col, visible, valid, 4)
        _store_map_blocks(x2_ptr, x2_stride_b, x2_stride_h, x2_stride_w, b, row, col, visible, valid, 2)


def _num_warps(block: int) -> int:
    """About 4 sort lanes per thread: ptxas (sm_90) then needs <= 102 registers and no spill up to BLOCK 2048,
    and spills 32 bytes at 4096 (32 warps)."""
    return min(32, max(4, block // 128))


def _launch(scores: torch.Tensor, stride: int, descending: bool, grid_w: int, outs: tuple) -> None:
    """Write every output of one sort-and-stride mask into ``outs`` = (ids_keep, ids_restore, mask,
    visible_x4, visible_x2) (any strides; the maps None without a grid)."""
    keep, restore, mask, x4, x2 = outs
    B, L = scores.shape
    if B == 0 or L == 0:
        return
    has_maps = x4 is not None
    if has_maps:
        x4_strides = (x4.stride(0), x4.stride(2), x4.stride(3))
        x2_strides = (x2.stride(0), x2.stride(2), x2.stride(3))
    else:  # unused pointers and strides
        x4, x2 = mask, mask
        x4_strides = x2_strides = (0, 0, 0)
    block = triton.next_power_of_2(L)
    _sort_stride_mask_kernel[(B,)](
        scores,
        keep,
        restore,
        mask,
        x4,
        x2,
        L,
        stride,
        max(grid_w, 1),
        *scores.stride(),
        *keep.stride(),
        *restore.stride(),
        *mask.stride(),
        *x4_strides,
        *x2_strides,
        BLOCK=block,
        DESCENDING=descending,
        HAS_MAPS=has_maps,
        num_warps=_num_warps(block),
    )


def _use_triton(t: torch.Tensor) -> bool:
    """The shared launch rule (kernels/_launch.py)."""
    return use_triton(t, _sort_stride_mask_kernel)


def _write(scores: torch.Tensor, stride: int, order: str, grid_hw: tuple[int, int] | None, outs: tuple) -> None:
    """The launch rule into ``outs`` (ids_keep, ids_restore, mask, visible_x4, visible_x2; the maps None
    without a grid): the kernel, or for rows longer than ``MAX_TRITON_L`` or off the Triton path, the
    twin's outputs copied."""
    if _use_triton(scores) and scores.shape[1] <= MAX_TRITON_L:
        grid_w = grid_hw[1] if grid_hw is not None else 0
        _launch(scores, stride, order == "descending", grid_w, outs)
        return
    twin = reference.sort_stride_mask(scores, stride, order, grid_hw)
    for dst, src in zip(outs, twin):
        if dst is not None:
            dst.copy_(src)


# ---------------------------------------------------------------------------------------------
# custom op. It always returns five tensors; without a grid the maps are empty [B,1,0,0] tensors,
# which the public function turns into None.
# ---------------------------------------------------------------------------------------------
def _empty_outputs(scores: torch.Tensor, stride: int, grid_h: int, grid_w: int):
    B, L = scores.shape
    dev = scores.device
    K = reference.num_visible(L, stride)
    return (
        torch.empty(B, K, dtype=torch.int64, device=dev),
        torch.empty(B, L, dtype=torch.int64, device=dev),
        torch.empty(B, L, dtype=torch.float32, device=dev),
        torch.empty(B, 1, 4 * grid_h, 4 * grid_w, dtype=torch.float32, device=dev),
        torch.empty(B, 1, 2 * grid_h, 2 * grid_w, dtype=torch.float32, device=dev),
    )


@torch.library.custom_op("infmae::sort_stride_mask", mutates_args=())
def _sort_stride_mask_op(
    scores: torch.Tensor, stride: int, order: str, grid_h: int, grid_w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    outs = _empty_outputs(scores, stride, grid_h, grid_w)
    if grid_h > 0:
        _write(scores, stride, order, (grid_h, grid_w), outs)
    else:
        _write(scores, stride, order, None, (*outs[:3], None, None))
    return outs


@_sort_stride_mask_op.register_fake
def _(scores, stride, order, grid_h, grid_w):
    return _empty_outputs(scores, stride, grid_h, grid_w)


# ---------------------------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------------------------
def _validate(scores, stride, order, grid_hw) -> None:
    check_tensor(_OP, "scores", scores, "pass the [B,L] output of intensity_pool")
    if scores.dim() != 2:
        fail(
            _OP,
            "scores of shape [B,L]",
            f"shape {tuple(scores.shape)}",
            "score the patches first (intensity_pool) and pass its [B,L] output",
        )
    check_float(_OP, "scores", scores)
    L = scores.shape[1]
    if L >= 2**31:
        fail(_OP, "fewer than 2**31 patches per row", str(L), "the raster index is packed into 32 bits")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        fail(_OP, "an integer stride >= 1", repr(stride), "the default stride is 4 (25 % visible)")
    if order not in reference.ORDERS:
        fail(
            _OP, f"order in {reference.ORDERS}", repr(order), "use 'descending' (paper) or 'ascending' (released code)"
        )
    if grid_hw is not None:
        ok = (
            isinstance(grid_hw, (tuple, list))
            and len(grid_hw) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid_hw)
        )
        if not ok or grid_hw[0] * grid_hw[1] != L:
            fail(_OP, f"grid_hw (h, w) of positive ints with h*w == L == {L}", repr(grid_hw), "pass (H // 16, W // 16)")


def sort_stride_mask(
    scores_BL: torch.Tensor, stride: int, order: str = "descending", grid_hw: tuple[int, int] | None = None
) -> MaskOutputs:
    """Information-aware mask: sort patches by score, keep every ``stride``-th rank (offset 0).

    scores_BL: [B,L] float32/bfloat16/float16 (any strides). order: "descending" (highest score is
    rank 0) or "ascending". Ties break by lower raster index first in both orders; -0.0 equals +0.0;
    NaN sorts as the largest value (as torch.sort). grid_hw: (h, w) with h*w == L; when given, the x4
    and x2 visibility maps are returned too, else they are None.
    Raises ValueError (TypeError for a non-tensor) on a bad input, with the expected value and a fix.
    """
    _validate(scores_BL, stride, order, grid_hw)
    h, w = grid_hw if grid_hw is not None else (0, 0)
    ids_keep, ids_restore, mask, x4, x2 = torch.ops.infmae.sort_stride_mask(scores_BL.detach(), stride, order, h, w)
    if grid_hw is None:
        x4 = x2 = None
    return MaskOutputs(ids_keep, ids_restore, mask, x4, x2)
