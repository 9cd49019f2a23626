"""The sparse encoder: InfMAE's conv stages evaluated on the visible patches only, exactly.

Legend: B batch, C image channels, h x w patch grid, L = h*w, K visible patches (rank order of
``ids_keep``), d1 / d2 / D the widths of stage 1 (H/4), stage 2 (H/8) and the ViT stage (H/16).

Why it is exact. Inside a CBlock the visibility map multiplies the token mixer's input after conv1 and
before the depthwise 5x5 conv, and every downsampling conv (patch_embed1 k4s4, patch_embed2 k2s2,
patch_embed3 k2s2, the skips k4s4 / k2s2) is non-overlapping and aligned with the 16-px patch grid. So a
visible patch's values depend on visible patches only: a visible patch is a 4x4 tile at stage 1 and a 2x2
tile at stage 2; the 1x1 convs, LayerNorms and MLPs are per-pixel matrix products on the tiles; the
depthwise conv reads a 2-pixel halo from the 8 neighbouring tiles, zero where a neighbour is masked or
outside the image (``depthwise_conv5x5_tiles`` with the neighbour table of ``tile_neighbours``). The
masked patches' values in the dense model never reach the latent, so they are not computed.

Layout: channels-last tiles [B,K,T,T,d] (T = 4, then 2), so every per-pixel op of a CBlock is a plain
matrix product over the last axis; the downsampling convs read the same memory as a channels_last batch of
B*K small images. The parameters are the dense model's own modules (same state-dict keys).
"""

from __future__ import annotations

import torch

from infmae.model.patchify import PATCH
from kernels import reference
from kernels.reference import MaskOutputs


def _gather_rows(x_BL_: torch.Tensor, ids_keep_BK: torch.Tensor) -> torch.Tensor:
    """x[b, ids_keep[b, k]] for a tensor whose dim 1 is the patch index: -> [B,K,...]."""
    batch = torch.arange(x_BL_.shape[0], device=x_BL_.device)[:, None]
    return x_BL_[batch, ids_keep_BK]


def _as_images(x_BKTTd: torch.Tensor) -> torch.Tensor:
    """Channels-last tiles [B,K,T,T,d] as a batch of B*K small images [B*K,d,T,T] (a view: channels_last
    memory format, which the convs read in place)."""
    B, K, T, _, d = x_BKTTd.shape
    return x_BKTTd.reshape(B * K, T, T, d).permute(0, 3, 1, 2)


def _as_tiles(x_NdTT: torch.Tensor, B: int, K: int) -> torch.Tensor:
    """[B*K,d,T,T] -> channels-last tiles [B,K,T,T,d]."""
    _, d, T, _ = x_NdTT.shape
    return x_NdTT.permute(0, 2, 3, 1).reshape(B, K, T, T, d)


def sparse_encoder(model, imgs_BCHW: torch.Tensor, masking: MaskOutputs) -> torch.Tensor:
    """The latent [B,K,D] of ``model.forward_encoder`` (an ``InfMAE``), from the visible patches only.

    The downsampling convs run as the model's own modules (``patch_embed1..3``, the skips) on the visible
    patches seen as a batch of B*K small images (16x16 pixels, then 4x4 and 2x2 tiles): the same ops as
    the dense path on less data, and module calls, so that hooks on them (FSDP2's unshard / reshard, per
    module compile) run as in the dense path: each conv stage starts with ``patch_embedN`` and ends with
    ``stageN_output_decode``, as the dense path does. The CBlocks run as per-pixel matrix products plus
    ``depthwise_conv5x5_tiles`` on channels-last tiles (``CBlock`` in tile mode, called as a module so
    that per-block activation checkpointing and compile apply as in the dense path).
    """
    B, C, H, W = imgs_BCHW.shape
    h, w = H // PATCH, W // PATCH
    ids_keep = masking.ids_keep
    K = ids_keep.shape[1]
    neighbours = reference.tile_neighbours(ids_keep, (h, w))  # [B,K,9], shared by every CBlock
    depthwise = model.ops.depthwise_conv5x5_tiles  # the kernel switch's choice (infmae/model/kernel_switch.py)

    # stage 1: the visible patches as B*K images of 16x16 pixels -> tiles [B,K,4,4,d1]
    patches = imgs_BCHW.reshape(B, C, h, PATCH, w, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C, PATCH, PATCH)
    patches = _gather_rows(patches, ids_keep).reshape(B * K, C, PATCH, PATCH)
    x = _as_tiles(model.patch_embed1(patches), B, K)
    for block in model.blocks1:
        x = block(x, neighbours_BK9=neighbours, depthwise=depthwise)
    skip1 = model.stage1_output_decode(_as_images(x)).reshape(B, K, -1)  # [B,K,D]

    # stage 2: tiles [B,K,2,2,d2]
    x = _as_tiles(model.patch_embed2(_as_images(x)), B, K)
    for block in model.blocks2:
        x = block(x, neighbours_BK9=neighbours, depthwise=depthwise)
    skip2 = model.stage2_output_decode(_as_images(x)).reshape(B, K, -1)  # [B,K,D]

    # stage 3: one token per visible patch, [B,K,D]
    x = model.patch_embed3(_as_images(x)).reshape(B, K, -1)
    pos = model._position_embedding(model.pos_embed, (h, w))  # [1,L,D]
    x = model.patch_embed4(x) + _gather_rows(pos.expand(B, -1, -1), ids_keep)
    for block in model.blocks3:
        x = block(x)
    return model.norm(x + skip1 + skip2)
