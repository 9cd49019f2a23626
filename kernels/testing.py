"""Test entry points: every kernel's outputs written into given tensors (any strides).

The kernel tests fill their outputs with values no kernel writes (NaN, -7777) and hand them in here, so
that an element a kernel leaves unwritten shows. Nothing in the library calls this module and it is not
part of the public API (the public ops are those of ``kernels.triton_ops``, with the twins' signatures);
it is the kernels' test harness, so it reaches their private launchers.

- ``intensity_pool_out(imgs, filter, bias=0.0, *, out)`` and
  ``sort_stride_mask_out(scores, stride, order="descending", grid_hw=None, *, out)``: the public ops
  written into ``out``, through the mutating custom ops ``infmae_testing::intensity_pool_out`` and
  ``infmae_testing::sort_stride_mask_out`` (registered when this module is imported), so that they trace
  under ``torch.compile(fullgraph=True)`` too; same launch rule as the public ops.
- ``token_gather_forward`` / ``token_gather_backward`` / ``token_restore_forward`` /
  ``token_restore_backward`` (kernels/tokens.py) and ``depthwise_conv5x5_tiles_forward`` /
  ``depthwise_conv5x5_tiles_backward`` (kernels/depthwise.py): the launchers behind the custom ops, one
  launch (or two) each, with ``out=`` (None allocates) and, for the token launchers, ``check_ids=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernels import depthwise, masking, pooling, reference, tokens
from kernels._common import check_out, fail
from kernels.reference import MaskOutputs

__all__ = [
    "intensity_pool_out",
    "sort_stride_mask_out",
    "token_gather_forward",
    "token_gather_backward",
    "token_restore_forward",
    "token_restore_backward",
    "depthwise_conv5x5_tiles_forward",
    "depthwise_conv5x5_tiles_backward",
]

token_gather_forward = tokens._token_gather_forward
token_gather_backward = tokens._token_gather_backward
token_restore_forward = tokens._token_restore_forward
token_restore_backward = tokens._token_restore_backward
depthwise_conv5x5_tiles_forward = depthwise._depthwise_conv5x5_tiles_forward
depthwise_conv5x5_tiles_backward = depthwise._depthwise_conv5x5_tiles_backward


# ---------------------------------------------------------------------------------------------
# intensity pooling into out
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("infmae_testing::intensity_pool_out", mutates_args=("out",))
def _intensity_pool_out_op(imgs: torch.Tensor, filt: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    pooling._write(imgs, filt, bias, out)


@_intensity_pool_out_op.register_fake
def _(imgs, filt, bias, out):
    return None


def intensity_pool_out(
    imgs_BCHW: torch.Tensor, filter_C1616: torch.Tensor, bias: float | torch.Tensor = 0.0, *, out: torch.Tensor
) -> torch.Tensor:
    """``kernels.pooling.intensity_pool`` written into ``out`` ([B,L] float32, any strides); returns ``out``."""
    imgs, filt, bias_t = pooling._prepare(imgs_BCHW, filter_C1616, bias)
    B, _, H, W = imgs.shape
    num_patches = (H // reference.PATCH) * (W // reference.PATCH)
    check_out("intensity_pool", "out", out, (B, num_patches), torch.float32, imgs.device)
    torch.ops.infmae_testing.intensity_pool_out(imgs, filt, bias_t, out)
    return out


# ---------------------------------------------------------------------------------------------
# sort-and-stride mask into out
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op(
    "infmae_testing::sort_stride_mask_out",
    mutates_args=("ids_keep", "ids_restore", "mask", "visible_x4", "visible_x2"),
)
def _sort_stride_mask_out_op(
    scores: torch.Tensor,
    stride: int,
    order: str,
    grid_h: int,
    grid_w: int,
    ids_keep: torch.Tensor,
    ids_restore: torch.Tensor,
    mask: torch.Tensor,
    visible_x4: torch.Tensor | None,
    visible_x2: torch.Tensor | None,
) -> None:
    grid_hw = (grid_h, grid_w) if visible_x4 is not None else None
    masking._write(scores, stride, order, grid_hw, (ids_keep, ids_restore, mask, visible_x4, visible_x2))


@_sort_stride_mask_out_op.register_fake
def _(scores, stride, order, grid_h, grid_w, ids_keep, ids_restore, mask, visible_x4, visible_x2):
    return None


def _check_mask_outputs(scores: torch.Tensor, stride: int, grid_hw, out) -> tuple:
    """``out`` as five entries (the maps None without a grid), each checked against the result."""
    op = "sort_stride_mask"
    if not isinstance(out, (tuple, list)) or len(out) not in (3, 5):
        got = f"{len(out)} items" if isinstance(out, (tuple, list)) else type(out).__name__
        fail(
            op,
            "out as (ids_keep, ids_restore, mask[, visible_x4, visible_x2])",
            got,
            "pass a MaskOutputs or a tuple of 3 or 5 tensors",
        )
    outs = tuple(out) + (None,) * (5 - len(out))
    B, L = scores.shape
    K = reference.num_visible(L, stride)
    expected = [((B, K), torch.int64), ((B, L), torch.int64), ((B, L), torch.float32)]
    if grid_hw is None:
        if outs[3] is not None or outs[4] is not None:
            fail(
                op,
                "no visibility maps in out when grid_hw is None",
                "map tensors",
                "pass grid_hw, or None for the maps",
            )
    else:
        h, w = grid_hw
        expected += [((B, 1, 4 * h, 4 * w), torch.float32), ((B, 1, 2 * h, 2 * w), torch.float32)]
    for name, t, (shape, dtype) in zip(MaskOutputs._fields, outs, expected):
        check_out(op, f"out.{name}", t, shape, dtype, scores.device)
    return outs


def sort_stride_mask_out(
    scores_BL: torch.Tensor,
    stride: int,
    order: str = "descending",
    grid_hw: tuple[int, int] | None = None,
    *,
    out: Sequence[torch.Tensor | None],
) -> MaskOutputs:
    """``kernels.masking.sort_stride_mask`` written into ``out`` = (ids_keep, ids_restore, mask[, visible_x4,
    visible_x2]) (any strides; the maps only with ``grid_hw``); returns a MaskOutputs of those tensors."""
    masking._validate(scores_BL, stride, order, grid_hw)
    outs = _check_mask_outputs(scores_BL, stride, grid_hw, out)
    h, w = grid_hw if grid_hw is not None else (0, 0)
    torch.ops.infmae_testing.sort_stride_mask_out(scores_BL.detach(), stride, order, h, w, *outs)
    return MaskOutputs(*outs)
