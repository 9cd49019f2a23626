"""Triton token gather / restore: the masked-token copies of InfMAE, with their gradients.

Shape legend: B batch, L patches (raster order), K visible patches (rank order), D token width.
``ids_keep_BK`` [B,K] int64 holds *distinct* raster indices in [0, L) per row (``sort_stride_mask``).

Public ops (same signatures, outputs and gradients as their eager twins in ``kernels.reference``):

- ``token_gather(tokens_BLD, ids_keep_BK) -> [B,K,D]``: ``out[b, k] = tokens[b, ids_keep[b, k]]``; the
  backward writes the gradient rows at ``ids_keep`` and exact zeros everywhere else.
- ``token_gather_many(tensors_BLD, ids_keep_BK) -> tuple``: the same for several tensors at the same ids.
  Tensors of one shape, dtype and device are gathered up to three per launch (the model's stage-3 tokens
  and both skip features: one launch forward, one backward); tensors that differ in shape, dtype or device
  fall back to separate launches, one per group of equal tensors.
- ``token_restore(visible_BKD, mask_token_D, ids_keep_BK, num_patches) -> [B,L,D]``: visible rows at
  ``ids_keep``, the mask token (cast to the visible dtype) everywhere else. Backward: the visible
  gradient is the gather of the output gradient at ``ids_keep`` (exact); the mask token's gradient is the
  sum of the output gradient over the masked positions, accumulated in fp32 in a fixed order and cast to
  the mask token's dtype (the twin lets autograd sum in the gradient's dtype: equal within rounding).

Layering (Liger-Kernel style): private ``@triton.jit`` kernels; private launchers
(``_token_gather_forward``, ``_token_gather_backward``, ``_token_restore_forward``,
``_token_restore_backward``) that validate their inputs, check the ids (the ``HOST_SYNC_GUARDS.check_ids``
guard, or ``check_ids=``), allocate their outputs (or write into ``out=``: the poisoned-output tests, through
``kernels.testing``) and launch one kernel (two for the restore backward: a fixed-order two-stage
reduction); ``torch.library`` custom ops (``infmae::token_gather_fwd`` / ``_bwd``,
``infmae::token_restore_fwd`` / ``_bwd``) around the launchers, with fake implementations, so that
``torch.compile(fullgraph=True)`` sees them as single graph nodes; a ``torch.autograd.Function`` per op
whose forward and backward call those custom ops.

Design notes:
- Every kernel takes the strides of every tensor, so non-contiguous inputs (e.g. the model's
  ``x.flatten(2).transpose(1, 2)`` views of [B,D,L] tensors, or a stride-0 gradient from ``.sum()``) are
  read in place: no copy is made. Outputs are allocated contiguous; an ``out=`` may have any strides.
- The position-major kernels (gather backward, restore forward and backward) find, for each output
  position ``l``, the ``k`` with ``ids_keep[b, k] == l`` by comparing a block of positions with all K ids
  (O(L*K) integer compares per batch row, from L2; negligible next to the D-wide rows for the InfMAE sizes,
  L=196, K=49). This needs no inverse-map scratch tensor and no second launch, and every output element is
  written exactly once, so no zero-fill launch and no atomics: results are bitwise deterministic.
- One config per launch, picked from D (no autotune: it needs a GPU and differs across Triton versions):
  ``BLOCK_D = min(next_pow2(D), 512)`` columns and ``BLOCK_ROWS = clamp(4096 // BLOCK_D, 1, 64)`` rows per
  program (a tile of up to 4096 elements; 8 warps for a full tile, else 4); the grid is (row blocks,
  D blocks). Large tiles also keep the interpreter (which costs per program and per op) fast.
- Under the Triton interpreter (CPU tests) bf16 arithmetic and fp32->bf16 conversion are wrong, so the
  kernels never compute in bf16: copies move the loaded values unchanged, sums run in fp32, and the
  one conversion to bf16 (mask token fill, mask-token gradient) rounds to nearest-even by integer ops
  (``to_dtype_rtne``, kernels/_launch.py), exact on both the interpreter and the GPU.
- Written for torch 2.11-2.13 and Triton 3.6-3.7: no block pointers, no tensor descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels._common import (
    FLOAT_DTYPES,
    HOST_SYNC_GUARDS,
    KernelDtypeError,
    check_float,
    check_tensor,
    dtype_names,
    fail,
    out_list,
    out_or_new,
)
from kernels._launch import to_dtype_rtne, use_triton

__all__ = ["token_gather", "token_gather_many", "token_restore"]

MAX_TENSORS_PER_LAUNCH = 3
_BLOCK_K = 64  # ids compared per step when the position-major kernels look up their positions
_TARGET_PARTIALS = 1024  # restore backward: about this many fp32 partial rows for the second stage
_BLOCK_PARTIALS = 64  # partial rows summed per step by the second stage


def _use_triton(t: torch.Tensor) -> bool:
    """The shared launch rule (kernels/_launch.py)."""
    return use_triton(t, _gather_rows_kernel)


def _config(D: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_D, num_warps) for rows of width D: tiles of up to 4096 elements, at most 512
    columns wide (D=768: 8 rows x 512 columns, two column blocks), 8 warps for a full tile."""
    block_d = min(triton.next_power_of_2(max(D, 1)), 512)
    block_rows = max(1, min(64, 4096 // block_d))
    return block_rows, block_d, 8 if block_rows * block_d >= 4096 else 4


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _lookup_positions(ids_row_ptr, ids_stride_k, positions, K, BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """For each position l of the block: the k with ids[k] == l, or -1 when l is masked ([BLOCK_ROWS] int64)."""
    slot = tl.full([BLOCK_ROWS], -1, tl.int64)
    positions64 = positions.to(tl.int64)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K).to(tl.int64)
        ids = tl.load(ids_row_ptr + ks * ids_stride_k, mask=ks < K, other=-1)
        hit = ids[None, :] == positions64[:, None]
        slot = tl.maximum(slot, tl.max(tl.where(hit, ks[None, :], -1), axis=1))
    return slot


@triton.jit
def _copy_gathered_rows(src_ptr, src_strides, dst_ptr, dst_strides, batch, ids, slots, cols, tile_mask):
    """One tensor of a gather: src_strides (b, l, d), dst_strides (b, k, d)."""
    src = src_ptr + batch * src_strides[0] + ids * src_strides[1]
    values = tl.load(src[:, None] + cols[None, :] * src_strides[2], mask=tile_mask)
    dst = dst_ptr + batch * dst_strides[0] + slots * dst_strides[1]
    tl.store(dst[:, None] + cols[None, :] * dst_strides[2], values, mask=tile_mask)


@triton.jit
def _gather_rows_kernel(
    ids_ptr,
    ids_stride_b,
    ids_stride_k,
    srcs,
    src_strides,
    dsts,
    dst_strides,
    num_rows,
    K,
    D,
    NUM_TENSORS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dst_i[b, k, :] = src_i[b, ids[b, k], :] for up to three tensors.

    Grid (cdiv(B*K, BLOCK_ROWS), cdiv(D, BLOCK_D))."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < num_rows
    batch = rows // K
    slots = rows % K
    ids = tl.load(ids_ptr + batch * ids_stride_b + slots * ids_stride_k, mask=row_ok, other=0)
    tile_mask = row_ok[:, None] & (cols < D)[None, :]
    for i in tl.static_range(NUM_TENSORS):  # tuples of NUM_TENSORS pointers and (b, l|k, d) strides
        _copy_gathered_rows(srcs[i], src_strides[i], dsts[i], dst_strides[i], batch, ids, slots, cols, tile_mask)


@triton.jit
def _place_rows(src_ptr, src_strides, dst_ptr, dst_strides, fill_ptr, fill_stride, block, HAS_FILL: tl.constexpr):
    """One tensor of a placement: src_strides (b, k, d), dst_strides (b, l, d); block: the program's
    (batch, positions, slots, cols, tile_mask, col_ok), shared by its tensors."""
    batch, positions, slots, cols, tile_mask, col_ok = block[0], block[1], block[2], block[3], block[4], block[5]
    src_stride_b, src_stride_k, src_stride_d = src_strides[0], src_strides[1], src_strides[2]
    dst_stride_b, dst_stride_l, dst_stride_d = dst_strides[0], dst_strides[1], dst_strides[2]
    kept = slots >= 0
    src = src_ptr + batch * src_stride_b + slots * src_stride_k
    values = tl.load(src[:, None] + cols[None, :] * src_stride_d, mask=tile_mask & kept[:, None], other=0.0)
    if HAS_FILL:
        fill = tl.load(fill_ptr + cols * fill_stride, mask=col_ok, other=0.0).to(tl.float32)
        fill = to_dtype_rtne(fill, dst_ptr.dtype.element_ty)
        values = tl.where(kept[:, None], values, fill[None, :])
    dst = dst_ptr + batch * dst_stride_b + positions.to(tl.int64) * dst_stride_l
    tl.store(dst[:, None] + cols[None, :] * dst_stride_d, values, mask=tile_mask)


@triton.jit
def _place_rows_kernel(
    ids_ptr,
    ids_stride_b,
    ids_stride_k,
    fill_ptr,
    fill_stride,
    srcs,
    src_strides,
    dsts,
    dst_strides,
    L,
    K,
    D,
    blocks_per_row,
    NUM_TENSORS: tl.constexpr,
    HAS_FILL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dst_i[b, l, :] = src_i[b, k, :] where ids[b, k] == l, else the fill row (or 0) — every element written.

    Gather backward (no fill) and restore forward (fill = mask token).
    Grid (B * cdiv(L, BLOCK_ROWS), cdiv(D, BLOCK_D))."""
    batch = tl.program_id(0).to(tl.int64) // blocks_per_row
    positions = (tl.program_id(0) % blocks_per_row) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    tile_mask = (positions < L)[:, None] & col_ok[None, :]
    slots = _lookup_positions(ids_ptr + batch * ids_stride_b, ids_stride_k, positions, K, BLOCK_ROWS, BLOCK_K)
    block = (batch, positions, slots, cols, tile_mask, col_ok)
    for i in tl.static_range(NUM_TENSORS):  # tuples of NUM_TENSORS pointers and (b, k|l, d) strides
        _place_rows(srcs[i], src_strides[i], dsts[i], dst_strides[i], fill_ptr, fill_stride, block, HAS_FILL)


@triton.jit
def _restore_backward_kernel(
    ids_ptr,
    ids_stride_b,
    ids_stride_k,
    grad_ptr,
    grad_stride_b,
    grad_stride_l,
    grad_stride_d,
    visible_grad_ptr,
    visible_stride_b,
    visible_stride_k,
    visible_stride_d,
    partial_ptr,
    L,
    K,
    D,
    chunks_per_row,
    blocks_per_chunk,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Stage 1 of the restore backward, one pass over the output gradient [B,L,D]:
    visible_grad[b, k] = grad[b, ids[b, k]] (exact copies), and partial[p, :] = fp32 sum of grad[b, l, :]
    over the masked positions l of chunk p (``blocks_per_chunk`` blocks of BLOCK_ROWS positions, in order).
    Grid (B * chunks_per_row, cdiv(D, BLOCK_D)); partial is [B * chunks_per_row, D] fp32, contiguous."""
    batch = tl.program_id(0).to(tl.int64) // chunks_per_row
    chunk = tl.program_id(0) % chunks_per_row
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for block in range(0, blocks_per_chunk):
        positions = (chunk * blocks_per_chunk + block) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        position_ok = positions < L
        tile_mask = position_ok[:, None] & col_ok[None, :]
        slots = _lookup_positions(ids_ptr + batch * ids_stride_b, ids_stride_k, positions, K, BLOCK_ROWS, BLOCK_K)
        kept = slots >= 0
        src = grad_ptr + batch * grad_stride_b + positions.to(tl.int64) * grad_stride_l
        values = tl.load(src[:, None] + cols[None, :] * grad_stride_d, mask=tile_mask, other=0.0)
        dst = visible_grad_ptr + batch * visible_stride_b + slots * visible_stride_k
        tl.store(dst[:, None] + cols[None, :] * visible_stride_d, values, mask=tile_mask & kept[:, None])
        masked = tile_mask & (~kept)[:, None]
        acc += tl.sum(tl.where(masked, values.to(tl.float32), 0.0), axis=0)
    partial = partial_ptr + tl.program_id(0).to(tl.int64) * D + cols
    tl.store(partial, acc, mask=col_ok)


@triton.jit
def _sum_partials_kernel(partial_ptr, out_ptr, out_stride, P, D, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Stage 2: out[d] = sum over the P partial rows, in a fixed order, fp32, cast at the store.

    Grid (cdiv(D, BLOCK_D),)."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for p_start in range(0, P, BLOCK_P):
        rows = p_start + tl.arange(0, BLOCK_P).to(tl.int64)
        tile_mask = (rows < P)[:, None] & col_ok[None, :]
        acc += tl.load(partial_ptr + rows[:, None] * D + cols[None, :], mask=tile_mask, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr + cols * out_stride, to_dtype_rtne(total, out_ptr.dtype.element_ty), mask=col_ok)


# ---------------------------------------------------------------------------------------------
# Input validation (kernels/_common.py: "<op>: expected <what>, got <actual>; <hint>")
# ---------------------------------------------------------------------------------------------
def _check_tensor(op: str, name: str, t, rank: int, shape_text: str, hint: str) -> None:
    check_tensor(op, name, t, "pass a tensor")
    if t.dim() != rank:
        fail(op, f"{name} of shape {shape_text}", f"shape {tuple(t.shape)}", hint)


def _check_ids(op: str, ids_keep_BK, batch: int, device: torch.device) -> None:
    _check_tensor(op, "ids_keep", ids_keep_BK, 2, f"[{batch},K]", "pass ids_keep [B,K] from sort_stride_mask")
    if ids_keep_BK.dtype != torch.int64:
        fail(op, "ids_keep of dtype int64", str(ids_keep_BK.dtype), "use ids_keep.long()", KernelDtypeError)
    if ids_keep_BK.shape[0] != batch:
        fail(
            op,
            f"ids_keep of shape [{batch},K] (one row per batch element)",
            f"shape {tuple(ids_keep_BK.shape)}",
            "pass ids_keep from sort_stride_mask for the same batch",
        )
    if ids_keep_BK.device != device:
        fail(
            op,
            f"ids_keep on the tokens' device {device}",
            f"device {ids_keep_BK.device}",
            "move both to one device, e.g. ids_keep.to(tokens.device)",
        )


def _check_ids_values(op: str, ids_keep_BK: torch.Tensor, num_patches: int, check_ids: bool | None) -> None:
    """The ``check_ids`` guard: distinct values in [0, L) per row. Syncs with the host (one .item()).

    ``check_ids``: None follows ``HOST_SYNC_GUARDS.check_ids``; the backward ops pass False, since the forward
    checked the same ids (autograd's version counter rejects a saved ``ids_keep`` modified in place in between)."""
    if not (HOST_SYNC_GUARDS.check_ids if check_ids is None else check_ids) or ids_keep_BK.numel() == 0:
        return
    ordered = torch.sort(ids_keep_BK, dim=1).values
    bad = (ordered[:, 0] < 0) | (ordered[:, -1] >= num_patches) | (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
    if bool(bad.any()):  # host sync: the debugging guard's cost (kernels.disable_host_sync_guards() skips it)
        row = int(bad.nonzero()[0, 0])
        values = ordered[row]
        low, high = int(values[0]), int(values[-1])
        if low < 0 or high >= num_patches:
            fail(
                op,
                f"ids_keep values in [0, {num_patches})",
                f"values in [{low}, {high}] (row {row})",
                "ids_keep must index the L patches of the grid; check num_patches and the mask",
            )
        repeated = int(values[1:][values[1:] == values[:-1]][0])
        fail(
            op,
            "distinct ids_keep values in each row",
            f"{repeated} twice in row {row}",
            "each visible patch must be kept once; use ids_keep from sort_stride_mask",
        )


def _validate_gather(op: str, tensors_BLD: Sequence[torch.Tensor], ids_keep_BK) -> None:
    """Metadata checks for a group of tensors gathered at one ``ids_keep`` (no host sync)."""
    first = tensors_BLD[0]
    for t in tensors_BLD:
        _check_tensor(op, "tokens", t, 3, "[B,L,D]", "flatten the spatial grid first: x.flatten(2).transpose(1, 2)")
        check_float(op, "tokens", t)
        if t.device != first.device:
            fail(
                op,
                f"every tensor on one device ({first.device})",
                f"device {t.device}",
                "move the tensors to one device",
            )
    _check_ids(op, ids_keep_BK, first.shape[0], first.device)
    for t in tensors_BLD:
        if t.shape[0] != first.shape[0]:
            fail(
                op,
                f"every tensor with batch size {first.shape[0]}",
                f"shape {tuple(t.shape)}",
                "gather tensors of the same batch",
            )
        if t.shape[1] < ids_keep_BK.shape[1]:
            fail(
                op,
                f"at least K = {ids_keep_BK.shape[1]} tokens per row",
                f"L = {t.shape[1]}",
                "ids_keep has more columns than the tensor has tokens",
            )


def _validate_restore(op: str, visible_BKD, mask_token_D, ids_keep_BK, num_patches) -> None:
    _check_tensor(op, "visible", visible_BKD, 3, "[B,K,D]", "pass the visible tokens [B,K,D]")
    check_float(op, "visible", visible_BKD)
    check_tensor(op, "mask_token", mask_token_D, "pass the mask token parameter")
    check_float(op, "mask_token", mask_token_D)
    B, K, D = visible_BKD.shape
    if mask_token_D.numel() != D:
        fail(
            op,
            f"a mask token with D = {D} elements",
            f"shape {tuple(mask_token_D.shape)}",
            "the mask token must have the decoder width, e.g. shape [1,1,D]",
        )
    if mask_token_D.device != visible_BKD.device:
        fail(
            op,
            f"mask_token on the visible tokens' device {visible_BKD.device}",
            f"device {mask_token_D.device}",
            "move both to one device",
        )
    _check_ids(op, ids_keep_BK, B, visible_BKD.device)
    if ids_keep_BK.shape[1] != K:
        fail(
            op,
            f"ids_keep of shape [{B},{K}] (one id per visible token)",
            f"shape {tuple(ids_keep_BK.shape)}",
            "pass the ids_keep that gathered these visible tokens",
        )
    if isinstance(num_patches, bool) or not isinstance(num_patches, int):
        fail(op, "num_patches as an int", type(num_patches).__name__, "pass L = h*w of the patch grid", TypeError)
    if num_patches < K:
        fail(op, f"num_patches >= K = {K}", str(num_patches), "pass L = h*w of the patch grid")


def _stride_args(tensors: list[torch.Tensor]) -> tuple[tuple, tuple]:
    """(the tensors, their (stride0, stride1, stride2)) as two tuples: one kernel argument each (Triton tuples)."""
    return tuple(tensors), tuple(tuple(t.stride()) for t in tensors)


def _launch_place_rows(ids_keep_BK, fill, srcs, dsts, num_patches: int) -> None:
    """One ``_place_rows_kernel`` launch: [B,K,D] srcs -> [B,L,D] dsts; fill: (mask token [D], its stride) or
    None (zeros: the gather backward)."""
    B, K, D = srcs[0].shape
    block_rows, block_d, num_warps = _config(D)
    blocks_per_row = triton.cdiv(num_patches, block_rows)
    fill_ptr, fill_stride = fill if fill is not None else (dsts[0], 0)  # no fill: unused
    _place_rows_kernel[(B * blocks_per_row, triton.cdiv(D, block_d))](
        ids_keep_BK,
        ids_keep_BK.stride(0),
        ids_keep_BK.stride(1),
        fill_ptr,
        fill_stride,
        *_stride_args(list(srcs)),
        *_stride_args(list(dsts)),
        num_patches,
        K,
        D,
        blocks_per_row,
        NUM_TENSORS=len(srcs),
        HAS_FILL=fill is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_K=_BLOCK_K,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )


# ---------------------------------------------------------------------------------------------
# Launchers (validate, allocate or check out=, launch once)
# ---------------------------------------------------------------------------------------------
def _token_gather_forward(
    tensors_BLD: Sequence[torch.Tensor],
    ids_keep_BK: torch.Tensor,
    out: Sequence[torch.Tensor] | None = None,
    *,
    check_ids: bool | None = None,
) -> tuple[torch.Tensor, ...]:
    """One launch: ``out_i[b, k] = tensors_i[b, ids_keep[b, k]]`` for 1 to 3 tensors of one shape and dtype.

    ``out``: optional outputs ([B,K,D] each, any strides); every element is written."""
    op = "token_gather"
    tensors = list(tensors_BLD)
    if not 1 <= len(tensors) <= MAX_TENSORS_PER_LAUNCH:
        fail(
            op,
            f"1 to {MAX_TENSORS_PER_LAUNCH} tensors per launch",
            str(len(tensors)),
            "use token_gather_many, which groups them",
        )
    _validate_gather(op, tensors, ids_keep_BK)
    first = tensors[0]
    if any(t.shape != first.shape or t.dtype != first.dtype for t in tensors):
        fail(
            op,
            "tensors of one shape and dtype in one launch",
            str([(tuple(t.shape), t.dtype) for t in tensors]),
            "use token_gather_many, which launches once per group of equal tensors",
        )
    B, L, D = first.shape
    K = ids_keep_BK.shape[1]
    outs = [out_or_new(op, "out", o, (B, K, D), first.dtype, first.device) for o in out_list(op, out, len(tensors))]
    _check_ids_values(op, ids_keep_BK, L, check_ids)
    if not _use_triton(first):
        for o, t in zip(outs, tensors):
            o.copy_(reference.token_gather(t, ids_keep_BK))
        return tuple(outs)
    if B * K * D == 0:
        return tuple(outs)
    block_rows, block_d, num_warps = _config(D)
    grid = (triton.cdiv(B * K, block_rows), triton.cdiv(D, block_d))
    _gather_rows_kernel[grid](
        ids_keep_BK,
        ids_keep_BK.stride(0),
        ids_keep_BK.stride(1),
        *_stride_args(tensors),
        *_stride_args(outs),
        B * K,
        K,
        D,
        NUM_TENSORS=len(tensors),
        BLOCK_ROWS=block_rows,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return tuple(outs)


def _token_gather_backward(
    grads_BKD: Sequence[torch.Tensor],
    ids_keep_BK: torch.Tensor,
    num_patches: int,
    out: Sequence[torch.Tensor] | None = None,
    *,
    check_ids: bool | None = None,
) -> tuple[torch.Tensor, ...]:
    """One launch: [B,K,D] gradients -> [B,L,D], ``out_i[b, ids_keep[b, k]] = grads_i[b, k]``, exact 0 elsewhere."""
    op = "token_gather_backward"
    grads = list(grads_BKD)
    if not 1 <= len(grads) <= MAX_TENSORS_PER_LAUNCH:
        fail(op, f"1 to {MAX_TENSORS_PER_LAUNCH} gradients per launch", str(len(grads)), "group them")
    _validate_gather(op, grads, ids_keep_BK)
    first = grads[0]
    B, K, D = first.shape
    if any(g.shape != first.shape or g.dtype != first.dtype for g in grads) or K != ids_keep_BK.shape[1]:
        fail(
            op,
            f"gradients of one shape [B,{ids_keep_BK.shape[1]},D] and dtype",
            str([(tuple(g.shape), g.dtype) for g in grads]),
            "pass the gradients of one token_gather launch",
        )
    if num_patches < K:
        fail(op, f"num_patches >= K = {K}", str(num_patches), "pass L of the gathered tensors")
    outs = [
        out_or_new(op, "out", o, (B, num_patches, D), first.dtype, first.device) for o in out_list(op, out, len(grads))
    ]
    _check_ids_values(op, ids_keep_BK, num_patches, check_ids)
    if not _use_triton(first):
        index = ids_keep_BK.unsqueeze(-1).expand(-1, -1, D)
        for o, g in zip(outs, grads):
            o.zero_().scatter_(1, index, g)
        return tuple(outs)
    if B * num_patches * D == 0:
        return tuple(outs)
    _launch_place_rows(ids_keep_BK, None, grads, outs, num_patches)
    return tuple(outs)


def _token_restore_forward(
    visible_BKD: torch.Tensor,
    mask_token_D: torch.Tensor,
    ids_keep_BK: torch.Tensor,
    num_patches: int,
    out: torch.Tensor | None = None,
    *,
    check_ids: bool | None = None,
) -> torch.Tensor:
    """One launch: [B,L,D] with the visible rows at ``ids_keep`` and the mask token (rounded to the visible
    dtype, nearest-even) everywhere else."""
    op = "token_restore"
    _validate_restore(op, visible_BKD, mask_token_D, ids_keep_BK, num_patches)
    B, K, D = visible_BKD.shape
    out = out_or_new(op, "out", out, (B, num_patches, D), visible_BKD.dtype, visible_BKD.device)
    _check_ids_values(op, ids_keep_BK, num_patches, check_ids)
    if not _use_triton(visible_BKD):
        return out.copy_(reference.token_restore(visible_BKD, mask_token_D, ids_keep_BK, num_patches))
    if B * num_patches * D == 0:
        return out
    mask_flat = mask_token_D.reshape(D)  # a view for the usual contiguous [1,1,D]; its stride is passed
    _launch_place_rows(ids_keep_BK, (mask_flat, mask_flat.stride(0)), [visible_BKD], [out], num_patches)
    return out


def _token_restore_backward(
    grad_BLD: torch.Tensor,
    ids_keep_BK: torch.Tensor,
    mask_dtype: torch.dtype,
    out: Sequence[torch.Tensor] | None = None,
    *,
    check_ids: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (visible gradient [B,K,D] in the gradient's dtype, mask token gradient [D] in ``mask_dtype``).

    The visible gradient is the exact gather at ``ids_keep``; the mask token's is the sum over the masked
    positions, in fp32: stage 1 (one pass over the gradient, which also writes the visible gradient) sums
    chunks of positions into about ``_TARGET_PARTIALS`` fp32 rows, stage 2 sums those rows in a fixed order.
    ``out``: optional (visible gradient, mask gradient) tensors."""
    op = "token_restore_backward"
    _check_tensor(op, "grad", grad_BLD, 3, "[B,L,D]", "pass the gradient of token_restore's output")
    check_float(op, "grad", grad_BLD)
    if mask_dtype not in FLOAT_DTYPES:
        fail(op, f"mask_dtype {dtype_names(FLOAT_DTYPES)}", str(mask_dtype), "pass mask_token.dtype", KernelDtypeError)
    _check_ids(op, ids_keep_BK, grad_BLD.shape[0], grad_BLD.device)
    B, L, D = grad_BLD.shape
    K = ids_keep_BK.shape[1]
    if L < K:
        fail(op, f"at least K = {K} positions", f"L = {L}", "pass the gradient of the restored [B,L,D] output")
    out_visible, out_mask = out_list(op, out, 2)
    out_visible = out_or_new(op, "out[0]", out_visible, (B, K, D), grad_BLD.dtype, grad_BLD.device)
    out_mask = out_or_new(op, "out[1]", out_mask, (D,), mask_dtype, grad_BLD.device)
    _check_ids_values(op, ids_keep_BK, L, check_ids)
    if not _use_triton(grad_BLD):
        out_visible.copy_(reference.token_gather(grad_BLD, ids_keep_BK))
        index = ids_keep_BK.unsqueeze(-1).expand(-1, -1, D)
        out_mask.copy_(grad_BLD.scatter(1, index, 0.0).sum(dim=(0, 1), dtype=torch.float32))
        return out_visible, out_mask
    if D == 0:
        return out_visible, out_mask
    if B * L == 0:
        return out_visible, out_mask.zero_()
    block_rows, block_d, num_warps = _config(D)
    blocks_per_row = triton.cdiv(L, block_rows)
    blocks_per_chunk = max(1, triton.cdiv(B * blocks_per_row, _TARGET_PARTIALS))
    chunks_per_row = triton.cdiv(blocks_per_row, blocks_per_chunk)
    num_partials = B * chunks_per_row
    partial = torch.empty(num_partials, D, dtype=torch.float32, device=grad_BLD.device)
    _restore_backward_kernel[(num_partials, triton.cdiv(D, block_d))](
        ids_keep_BK,
        ids_keep_BK.stride(0),
        ids_keep_BK.stride(1),
        grad_BLD,
        grad_BLD.stride(0),
        grad_BLD.stride(1),
        grad_BLD.stride(2),
        out_visible,
        out_visible.stride(0),
        out_visible.stride(1),
        out_visible.stride(2),
        partial,
        L,
        K,
        D,
        chunks_per_row,
        blocks_per_chunk,
        BLOCK_ROWS=block_rows,
        BLOCK_K=_BLOCK_K,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    sum_block_d = min(triton.next_power_of_2(D), 64)
    _sum_partials_kernel[(triton.cdiv(D, sum_block_d),)](
        partial,
        out_mask,
        out_mask.stride(0),
        num_partials,
        D,
        BLOCK_P=_BLOCK_PARTIALS,
        BLOCK_D=sum_block_d,
        num_warps=4,
    )
    return out_visible, out_mask


# ---------------------------------------------------------------------------------------------
# torch.library custom ops: single graph nodes for torch.compile
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("infmae::token_gather_fwd", mutates_args=())
def _gather_fwd_op(tensors: list[torch.Tensor], ids_keep: torch.Tensor) -> list[torch.Tensor]:
    return list(_token_gather_forward(tensors, ids_keep))


@_gather_fwd_op.register_fake
def _(tensors, ids_keep):
    return [t.new_empty(t.shape[0], ids_keep.shape[1], t.shape[2]) for t in tensors]


@torch.library.custom_op("infmae::token_gather_bwd", mutates_args=())
def _gather_bwd_op(grads: list[torch.Tensor], ids_keep: torch.Tensor, num_patches: int) -> list[torch.Tensor]:
    return list(_token_gather_backward(grads, ids_keep, num_patches, check_ids=False))  # checked by the forward


@_gather_bwd_op.register_fake
def _(grads, ids_keep, num_patches):
    return [g.new_empty(g.shape[0], num_patches, g.shape[2]) for g in grads]


@torch.library.custom_op("infmae::token_restore_fwd", mutates_args=())
def _restore_fwd_op(
    visible: torch.Tensor, mask_token: torch.Tensor, ids_keep: torch.Tensor, num_patches: int
) -> torch.Tensor:
    return _token_restore_forward(visible, mask_token, ids_keep, num_patches)


@_restore_fwd_op.register_fake
def _(visible, mask_token, ids_keep, num_patches):
    return visible.new_empty(visible.shape[0], num_patches, visible.shape[2])


@torch.library.custom_op("infmae::token_restore_bwd", mutates_args=())
def _restore_bwd_op(
    grad: torch.Tensor, ids_keep: torch.Tensor, mask_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return _token_restore_backward(grad, ids_keep, mask_dtype, check_ids=False)  # checked by the forward


@_restore_bwd_op.register_fake
def _(grad, ids_keep, mask_dtype):
    return (
        grad.new_empty(grad.shape[0], ids_keep.shape[1], grad.shape[2]),
        grad.new_empty(grad.shape[2], dtype=mask_dtype),
    )


# ---------------------------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------------------------
class _TokenGather(torch.autograd.Function):
    """Gather 1 to 3 tensors of one shape and dtype at ``ids_keep``: one launch forward, one backward."""

    @staticmethod
    def forward(ctx, ids_keep_BK, *tensors_BLD):
        ctx.save_for_backward(ids_keep_BK)
        ctx.num_patches = tensors_BLD[0].shape[1]
        return tuple(_gather_fwd_op(list(tensors_BLD), ids_keep_BK))

    @staticmethod
    def backward(ctx, *grads_BKD):
        (ids_keep_BK,) = ctx.saved_tensors
        grads = _gather_bwd_op(list(grads_BKD), ids_keep_BK, ctx.num_patches)
        return (None, *(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:])))


class _TokenRestore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, visible_BKD, mask_token_D, ids_keep_BK, num_patches):
        ctx.save_for_backward(ids_keep_BK)
        ctx.mask_shape = mask_token_D.shape
        ctx.mask_dtype = mask_token_D.dtype
        return _restore_fwd_op(visible_BKD, mask_token_D, ids_keep_BK, num_patches)

    @staticmethod
    def backward(ctx, grad_BLD):
        (ids_keep_BK,) = ctx.saved_tensors
        grad_visible, grad_mask = _restore_bwd_op(grad_BLD, ids_keep_BK, ctx.mask_dtype)
        return (
            grad_visible if ctx.needs_input_grad[0] else None,
            grad_mask.view(ctx.mask_shape) if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


# ---------------------------------------------------------------------------------------------
# Public ops (the twins' signatures)
# ---------------------------------------------------------------------------------------------
def token_gather(tokens_BLD: torch.Tensor, ids_keep_BK: torch.Tensor) -> torch.Tensor:
    """[B,L,D] -> [B,K,D]: ``out[b, k] = tokens[b, ids_keep[b, k]]``. Backward scatters the gradient."""
    _validate_gather("token_gather", [tokens_BLD], ids_keep_BK)
    return _TokenGather.apply(ids_keep_BK, tokens_BLD)[0]


def token_gather_many(tensors_BLD: Sequence[torch.Tensor], ids_keep_BK: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gather several [B,L,D_i] tensors at the same ids, in input order.

    Tensors of one shape, dtype and device share launches (up to three per launch, forward and backward);
    a tensor that differs from the others gets launches of its own (the documented fallback)."""
    op = "token_gather_many"
    if not isinstance(tensors_BLD, (list, tuple)):
        fail(
            op,
            "a list or tuple of [B,L,D] tensors",
            type(tensors_BLD).__name__,
            "wrap a single tensor in a list",
            TypeError,
        )
    tensors = list(tensors_BLD)
    if not tensors:
        return ()
    _validate_gather(op, tensors, ids_keep_BK)
    groups: list[list[int]] = []  # indices of equal tensors, in order of first appearance
    for i, t in enumerate(tensors):
        for group in groups:
            head = tensors[group[0]]
            if len(group) < MAX_TENSORS_PER_LAUNCH and head.shape == t.shape and head.dtype == t.dtype:
                group.append(i)
                break
        else:
            groups.append([i])
    results: list = [None] * len(tensors)
    for group in groups:
        for i, gathered in zip(group, _TokenGather.apply(ids_keep_BK, *(tensors[i] for i in group))):
            results[i] = gathered
    return tuple(results)


def token_restore(
    visible_BKD: torch.Tensor, mask_token_D: torch.Tensor, ids_keep_BK: torch.Tensor, num_patches: int
) -> torch.Tensor:
    """Place visible tokens at ``ids_keep`` and the mask token everywhere else: -> [B,L,D].

    visible_BKD: [B,K,D]; mask_token_D: any shape with D elements (e.g. [1,1,D]), cast to the visible dtype.
    Backward: the visible gradient is the gather of the output gradient at ``ids_keep`` (exact); the mask
    token's is the fp32 sum of the output gradient over the masked positions, cast to its dtype."""
    _validate_restore("token_restore", visible_BKD, mask_token_D, ids_keep_BK, num_patches)
    return _TokenRestore.apply(visible_BKD, mask_token_D, ids_keep_BK, num_patches)
