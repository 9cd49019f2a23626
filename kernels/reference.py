"""Eager twins of the InfMAE kernels: the specification every fast kernel must match.

Shape legend: B batch, C channels, H x W image (multiples of 16), h x w = H/16 x W/16 the patch grid,
L = h*w patches in raster order (row-major), S the mask stride, K = ceil(L / S) visible patches,
D a token width.

Conventions (facebookresearch/mae's masking contract; docs/specification.md, 'Information-aware masking' and 'Kernels'):
- ``ids_keep`` [B,K] int64: raster indices of the visible patches in *rank* order (rank 0 first),
- ``ids_restore`` [B,L] int64: the inverse of the sort permutation (``ids_restore[ids_shuffle] = arange``),
- ``mask`` [B,L] float32 in raster order: 1 = masked (removed), 0 = visible,
- visibility maps [B,1,4h,4w] and [B,1,2h,2w]: ``1 - mask`` upsampled by nearest repetition.

This module depends on torch only (never on ``infmae``), so kernels and their twins can be tested alone;
its input checks and errors are the kernels' own (kernels/_common.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from kernels._common import FLOAT_DTYPES, check, check_float, check_tensor

PATCH = 16
ORDERS = ("descending", "ascending")


# ---------------------------------------------------------------------------------------------
# 1. intensity pooling
# ---------------------------------------------------------------------------------------------
def intensity_filter(channels: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The paper's score filter: every weight 1/(C*256), so the score is the patch's mean intensity."""
    return torch.full((channels, PATCH, PATCH), 1.0 / (channels * PATCH * PATCH), dtype=dtype, device=device)


def check_intensity_pool_inputs(op: str, imgs_BCHW: torch.Tensor, filter_C1616: torch.Tensor) -> None:
    """The input contract of ``intensity_pool`` shared by the twin and the Triton op (which also checks the
    filter's dtype, the devices and the bias)."""
    check_tensor(op, "imgs", imgs_BCHW, "pass a [B,C,H,W] tensor")
    check_tensor(op, "filter", filter_C1616, "pass a [C,16,16] tensor")
    check(
        imgs_BCHW.dim() == 4,
        op,
        "imgs of shape [B,C,H,W]",
        f"shape {tuple(imgs_BCHW.shape)}",
        "pass a batch of images, e.g. imgs.unsqueeze(0) for a single image",
    )
    check_float(op, "imgs", imgs_BCHW)
    _, C, H, W = imgs_BCHW.shape
    check(
        H % PATCH == 0 and W % PATCH == 0,
        op,
        "H and W multiples of 16",
        f"{H}x{W}",
        "resize or crop the images to a multiple of 16",
    )
    check(
        tuple(filter_C1616.shape) == (C, PATCH, PATCH),
        op,
        f"a filter of shape [{C},16,16]",
        f"shape {tuple(filter_C1616.shape)}",
        "the filter needs one 16x16 plane per image channel",
    )


def intensity_pool(
    imgs_BCHW: torch.Tensor, filter_C1616: torch.Tensor, bias: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Score every 16x16 patch with one linear filter: ``scores[b, l] = <F, imgs[b, :, patch l]> + bias``.

    imgs_BCHW: [B,C,H,W] float32/bfloat16/float16, any strides; H and W multiples of 16.
    filter_C1616: [C,16,16] (any float dtype; used in fp32). bias: a float or a 0-d tensor.
    Returns scores [B,L] float32, patches in raster order. Accumulation is in fp32.
    """
    check_intensity_pool_inputs("intensity_pool", imgs_BCHW, filter_C1616)
    B, C, H, W = imgs_BCHW.shape
    h, w = H // PATCH, W // PATCH
    patches = imgs_BCHW.float().reshape(B, C, h, PATCH, w, PATCH)
    scores = torch.einsum("bchpwq,cpq->bhw", patches, filter_C1616.float())
    return scores.reshape(B, h * w) + torch.as_tensor(bias, dtype=torch.float32, device=scores.device)


# ---------------------------------------------------------------------------------------------
# 2. sort-and-stride mask
# ---------------------------------------------------------------------------------------------
class MaskOutputs(NamedTuple):
    ids_keep: torch.Tensor  # [B,K] int64, rank order
    ids_restore: torch.Tensor  # [B,L] int64
    mask: torch.Tensor  # [B,L] float32, 1 = masked
    visible_x4: torch.Tensor | None  # [B,1,4h,4w] float32, 1 = visible (stage 1, H/4)
    visible_x2: torch.Tensor | None  # [B,1,2h,2w] float32, 1 = visible (stage 2, H/8)


def num_visible(num_patches: int, stride: int) -> int:
    """K = ceil(L / S): ranks 0, S, 2S, ... stay visible."""
    return -(-num_patches // stride)


def sort_stride_mask(
    scores_BL: torch.Tensor, stride: int, order: str = "descending", grid_hw: tuple[int, int] | None = None
) -> MaskOutputs:
    """Information-aware mask: sort patches by score, keep every ``stride``-th rank (offset 0).

    scores_BL: [B,L] float. order: "descending" (highest score is rank 0) or "ascending".
    Ties break by lower raster index first in both orders (a stable sort).
    grid_hw: (h, w) with h*w == L; when given, the x4 and x2 visibility maps are returned too.
    """
    op = "sort_stride_mask"
    check(
        scores_BL.dim() == 2,
        op,
        "scores of shape [B,L]",
        f"shape {tuple(scores_BL.shape)}",
        "score the patches first (intensity_pool) and pass its [B,L] output",
    )
    check(
        isinstance(stride, int) and stride >= 1,
        op,
        "an integer stride >= 1",
        repr(stride),
        "the default stride is 4 (25 % visible)",
    )
    check(
        order in ORDERS,
        op,
        f"order in {ORDERS}",
        repr(order),
        "use 'descending' (paper) or 'ascending' (released code)",
    )
    B, L = scores_BL.shape
    if grid_hw is not None:
        check(
            grid_hw[0] * grid_hw[1] == L, op, f"grid_hw with h*w == L == {L}", repr(grid_hw), "pass (H // 16, W // 16)"
        )
    ids_shuffle = torch.sort(scores_BL, dim=1, descending=(order == "descending"), stable=True).indices
    ids_keep = ids_shuffle[:, ::stride].contiguous()
    ranks = torch.arange(L, device=scores_BL.device).expand(B, L)
    ids_restore = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, ranks)
    mask = torch.ones(B, L, dtype=torch.float32, device=scores_BL.device)
    mask.scatter_(1, ids_keep, 0.0)
    visible_x4 = visible_x2 = None
    if grid_hw is not None:
        visible_x4, visible_x2 = visibility_maps(mask, grid_hw)
    return MaskOutputs(ids_keep, ids_restore, mask, visible_x4, visible_x2)


def visibility_maps(mask_BL: torch.Tensor, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 - mask`` on the h x w grid, upsampled by nearest repetition: ([B,1,4h,4w], [B,1,2h,2w])."""
    h, w = grid_hw
    visible = (1.0 - mask_BL).reshape(-1, 1, h, w)
    x4 = visible.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    x2 = visible.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return x4, x2


# ---------------------------------------------------------------------------------------------
# 3. token gather, 4. token restore
# ---------------------------------------------------------------------------------------------
def _check_ids(op: str, tokens: torch.Tensor, ids_BK: torch.Tensor) -> None:
    check(
        tokens.dim() == 3,
        op,
        "tokens of shape [B,L,D]",
        f"shape {tuple(tokens.shape)}",
        "flatten the spatial grid first: x.flatten(2).transpose(1, 2)",
    )
    check(
        ids_BK.dim() == 2 and ids_BK.shape[0] == tokens.shape[0],
        op,
        f"ids of shape [{tokens.shape[0]},K]",
        f"shape {tuple(ids_BK.shape)}",
        "pass ids_keep from sort_stride_mask for the same batch",
    )
    check(ids_BK.dtype == torch.int64, op, "int64 ids", str(ids_BK.dtype), "use ids.long()")


def token_gather(tokens_BLD: torch.Tensor, ids_keep_BK: torch.Tensor) -> torch.Tensor:
    """[B,L,D] -> [B,K,D]: ``out[b, k] = tokens[b, ids_keep[b, k]]``. Backward scatters the gradient."""
    _check_ids("token_gather", tokens_BLD, ids_keep_BK)
    index = ids_keep_BK.unsqueeze(-1).expand(-1, -1, tokens_BLD.shape[-1])
    return torch.gather(tokens_BLD, 1, index)


def token_gather_many(tensors_BLD: Sequence[torch.Tensor], ids_keep_BK: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gather several [B,L,D_i] tensors at the same ids (the stage-3 tokens and both skip features)."""
    return tuple(token_gather(t, ids_keep_BK) for t in tensors_BLD)


def token_restore(
    visible_BKD: torch.Tensor, mask_token_D: torch.Tensor, ids_keep_BK: torch.Tensor, num_patches: int
) -> torch.Tensor:
    """Place visible tokens at ``ids_keep`` and the mask token everywhere else: -> [B,L,D].

    visible_BKD: [B,K,D]; mask_token_D: [D] (any shape with D elements, e.g. [1,1,D]), cast to the
    visible dtype. Backward: the visible gradient is the gather of the output gradient at ``ids_keep``;
    the mask token's gradient is the sum of the output gradient over the masked positions.
    """
    op = "token_restore"
    _check_ids(op, visible_BKD, ids_keep_BK)
    B, K, D = visible_BKD.shape
    check(
        mask_token_D.numel() == D,
        op,
        f"a mask token with {D} elements",
        f"shape {tuple(mask_token_D.shape)}",
        "the mask token must have the decoder width",
    )
    check(num_patches >= K, op, f"num_patches >= K = {K}", str(num_patches), "pass L = h*w of the patch grid")
    filled = mask_token_D.reshape(1, 1, D).to(visible_BKD.dtype).expand(B, num_patches, D)
    index = ids_keep_BK.unsqueeze(-1).expand(-1, -1, D)
    return filled.scatter(1, index, visible_BKD)


# ---------------------------------------------------------------------------------------------
# 5. depthwise 5x5 conv over visible tiles (the sparse encoder's token mixer; docs/specification.md, 'Sparse encoder')
# ---------------------------------------------------------------------------------------------
NEIGHBOUR_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
"""Slot s of a neighbour table is the patch at (row + dy, column + dx): row-major, slot 4 is the tile itself."""


def tile_neighbours(ids_keep_BK: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The neighbour table of the visible patches: [B,K,9] int64.

    ``out[b, k, s]`` is the k' with ``ids_keep[b, k']`` the patch at offset ``NEIGHBOUR_OFFSETS[s]`` from
    patch ``ids_keep[b, k]`` on the h x w grid, or -1 where that patch is masked or outside the image.
    """
    op = "tile_neighbours"
    check(
        ids_keep_BK.dim() == 2 and ids_keep_BK.dtype == torch.int64,
        op,
        "ids_keep [B,K] int64",
        f"shape {tuple(ids_keep_BK.shape)} {ids_keep_BK.dtype}",
        "pass ids_keep from sort_stride_mask",
    )
    h, w = grid_hw
    B, K = ids_keep_BK.shape
    device = ids_keep_BK.device
    slot = torch.full((B, h * w), -1, dtype=torch.int64, device=device)
    slot.scatter_(1, ids_keep_BK, torch.arange(K, device=device).expand(B, K))
    padded = torch.nn.functional.pad(slot.view(B, h, w), (1, 1, 1, 1), value=-1)  # [B,h+2,w+2]
    rows, cols = ids_keep_BK // w + 1, ids_keep_BK % w + 1
    batch = torch.arange(B, device=device)[:, None]
    return torch.stack([padded[batch, rows + dy, cols + dx] for dy, dx in NEIGHBOUR_OFFSETS], dim=2)


def check_depthwise_tiles_inputs(
    op: str,
    tiles_BKTTC: torch.Tensor,
    neighbours_BK9: torch.Tensor,
    weight_C155: torch.Tensor,
    bias_C: torch.Tensor | None,
    dtypes: tuple = FLOAT_DTYPES + (torch.float64,),
) -> None:
    """The input contract of ``depthwise_conv5x5_tiles`` (shared by the twin and the Triton op). The twin
    also takes float64 (exactness tests of the sparse encoder); the Triton op passes ``dtypes`` without it."""
    for name, t in (("tiles", tiles_BKTTC), ("neighbours", neighbours_BK9), ("weight", weight_C155)):
        check(isinstance(t, torch.Tensor), op, f"{name} as a torch.Tensor", type(t).__name__, "pass tensors")
    check(
        tiles_BKTTC.dim() == 5 and tiles_BKTTC.shape[2] == tiles_BKTTC.shape[3],
        op,
        "tiles of shape [B,K,T,T,C]",
        f"shape {tuple(tiles_BKTTC.shape)}",
        "lay the visible tiles out channels-last: [batch, tile, row, column, channel]",
    )
    B, K, T, _, C = tiles_BKTTC.shape
    check(T >= 2, op, "tiles of at least 2x2 pixels", f"{T}x{T}", "the 2-pixel halo must come from the 8 neighbours")
    check_float(op, "tiles", tiles_BKTTC, dtypes)
    check(
        tuple(neighbours_BK9.shape) == (B, K, 9),
        op,
        f"neighbours of shape [{B},{K},9]",
        f"shape {tuple(neighbours_BK9.shape)}",
        "build the table with tile_neighbours(ids_keep, grid_hw)",
    )
    check(
        neighbours_BK9.dtype == torch.int64, op, "int64 neighbours", str(neighbours_BK9.dtype), "use neighbours.long()"
    )
    check(
        tuple(weight_C155.shape) in ((C, 1, 5, 5), (C, 5, 5)),
        op,
        f"weight of shape [{C},1,5,5]",
        f"shape {tuple(weight_C155.shape)}",
        "pass the depthwise conv's weight (groups = channels)",
    )
    check_float(op, "weight", weight_C155, dtypes)
    if bias_C is not None:
        check(
            isinstance(bias_C, torch.Tensor) and tuple(bias_C.shape) == (C,),
            op,
            f"bias of shape [{C}]",
            f"{tuple(bias_C.shape) if isinstance(bias_C, torch.Tensor) else type(bias_C).__name__}",
            "pass the conv's bias or None",
        )
        check_float(op, "bias", bias_C, dtypes)
    devices = {t.device for t in (tiles_BKTTC, neighbours_BK9, weight_C155, bias_C) if t is not None}
    check(len(devices) == 1, op, "all inputs on one device", str(sorted(map(str, devices))), "move them with .to()")


def depthwise_conv5x5_tiles(
    tiles_BKTTC: torch.Tensor,
    neighbours_BK9: torch.Tensor,
    weight_C155: torch.Tensor,
    bias_C: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise 5x5 conv (padding 2) of a map of which only the visible T x T tiles are non-zero,
    evaluated on those tiles: -> [B,K,T,T,C] in the tiles' dtype.

    tiles_BKTTC: [B,K,T,T,C], channels-last, T >= 2. neighbours_BK9: ``tile_neighbours`` (index into the K
    tiles of the same image, -1 = zero). weight_C155: [C,1,5,5] (or [C,5,5]); bias_C: [C] or None; both
    cast to the tiles' dtype. Equal to scattering the tiles into a zeroed [B,C,Th,Tw] map, running
    ``F.conv2d(padding=2, groups=C)`` and gathering the tiles back: here each tile's 3x3 neighbourhood is
    gathered (zero tiles for -1), cropped to the (T+4)^2 window the taps read, and convolved without padding.
    """
    op = "depthwise_conv5x5_tiles"
    check_depthwise_tiles_inputs(op, tiles_BKTTC, neighbours_BK9, weight_C155, bias_C)
    B, K, T, _, C = tiles_BKTTC.shape
    dtype = tiles_BKTTC.dtype
    padded = torch.cat([tiles_BKTTC, tiles_BKTTC.new_zeros(B, 1, T, T, C)], dim=1)  # tile K: zeros
    index = torch.where(neighbours_BK9 < 0, K, neighbours_BK9)
    batch = torch.arange(B, device=tiles_BKTTC.device)[:, None, None]
    hood = padded[batch, index]  # [B,K,9,T,T,C]
    hood = hood.view(B * K, 3, 3, T, T, C).permute(0, 5, 1, 3, 2, 4).reshape(B * K, C, 3 * T, 3 * T)
    window = hood[:, :, T - 2 : 2 * T + 2, T - 2 : 2 * T + 2]
    bias = None if bias_C is None else bias_C.to(dtype)
    out = torch.nn.functional.conv2d(window, weight_C155.reshape(C, 1, 5, 5).to(dtype), bias, groups=C)
    return out.view(B, K, C, T, T).permute(0, 1, 3, 4, 2)
