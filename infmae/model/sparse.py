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
matrix product over the last axis. The downsampling convs (kernel = stride = k, aligned with the tiles) are
matrix products too: each k x k block of a tile, flattened (ky, kx, channel), times the conv weight permuted
to [out, ky, kx, in] (``conv_as_linear``): one GEMM over all visible tiles instead of a conv over B*K tiny
images. The parameters are the dense model's own modules (same state-dict keys, checkpoints load unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def conv_as_linear(conv: torch.nn.Conv2d, x_BKTTd: torch.Tensor, k: int) -> torch.Tensor:
    """A conv with kernel = stride = k (no padding) on channels-last tiles [B,K,T,T,d] (T a multiple of k) as
    one matrix product with the conv's own weight and bias: -> [B,K,T/k,T/k,out] (the conv's output, tile by
    tile, channels-last)."""
    B, K, T, _, d = x_BKTTd.shape
    n = T // k
    blocks = x_BKTTd.reshape(B, K, n, k, n, k, d).transpose(3, 4).reshape(B, K, n, n, k * k * d)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, k * k * d)  # (ky, kx, in) as the blocks
    return F.linear(blocks, weight, conv.bias)


def _hooked(module: torch.nn.Module) -> bool:
    """Whether something runs around the module's forward (FSDP2's unshard / reshard and backward
    preparation, a user's hook): then it is called as a module, on the tiles seen as B*K small images."""
    return bool(module._forward_pre_hooks or module._forward_hooks)


def _downsample(conv: torch.nn.Conv2d, x_BKTTd: torch.Tensor, k: int) -> torch.Tensor:
    """A stage decoder (kernel = stride = k) on the tiles: -> [B,K,T/k,T/k,out]."""
    B, K = x_BKTTd.shape[:2]
    if _hooked(conv):
        return _as_tiles(conv(_as_images(x_BKTTd)), B, K)
    return conv_as_linear(conv, x_BKTTd, k)


def _patch_embed(embed, x_BKTTd: torch.Tensor, k: int) -> torch.Tensor:
    """A ``PatchEmbed`` (conv kernel = stride = k, LayerNorm over channels, GELU) on the tiles: the LayerNorm
    over the last axis of the channels-last result is the dense path's LayerNorm over channels."""
    B, K = x_BKTTd.shape[:2]
    if _hooked(embed):
        return _as_tiles(embed(_as_images(x_BKTTd)), B, K)
    return embed.act(embed.norm(conv_as_linear(embed.proj, x_BKTTd, k)))


def sparse_encoder(model, imgs_BCHW: torch.Tensor, masking: MaskOutputs) -> torch.Tensor:
    """The latent [B,K,D] of ``model.forward_encoder`` (an ``InfMAE``), from the visible patches only.

    The downsampling convs (``patch_embed1..3``, the stage decoders) run as matrix products on the visible
    tiles with the modules' own parameters (``conv_as_linear``); a module that something hooks (FSDP2's
    unshard / reshard) is called as a module instead, as the dense path calls it, on the tiles seen as B*K
    small images. The CBlocks run as per-pixel matrix products plus ``depthwise_conv5x5_tiles`` on
    channels-last tiles (``CBlock`` in tile mode, called as a module so that per-block activation
    checkpointing and compile apply as in the dense path). Each stage's input is in the model's
    ``residual_dtype`` under autocast, as in the dense path. Compiled blocks get one static graph per tile
    size (4, then 2): the engine compiles with ``dynamic=False`` (``infmae.training.engine``).
    """
    B, C, H, W = imgs_BCHW.shape
    h, w = H // PATCH, W // PATCH
    ids_keep = masking.ids_keep
    K = ids_keep.shape[1]
    neighbours = reference.tile_neighbours(ids_keep, (h, w))  # [B,K,9], shared by every CBlock
    depthwise = model.ops.depthwise_conv5x5_tiles  # the kernel switch's choice (infmae/model/kernel_switch.py)

    # stage 1: the visible patches as channels-last 16x16 tiles [B,K,16,16,C] -> tiles [B,K,4,4,d1]
    patches = imgs_BCHW.reshape(B, C, h, PATCH, w, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, PATCH, PATCH, C)
    x = model.residual(_patch_embed(model.patch_embed1, _gather_rows(patches, ids_keep), 4))
    for block in model.blocks1:
        x = block(x, neighbours_BK9=neighbours, depthwise=depthwise)
    skip1 = _downsample(model.stage1_output_decode, x, 4).reshape(B, K, -1)  # [B,K,D]

    # stage 2: tiles [B,K,2,2,d2]
    x = model.residual(_patch_embed(model.patch_embed2, x, 2))
    for block in model.blocks2:
        x = block(x, neighbours_BK9=neighbours, depthwise=depthwise)
    skip2 = _downsample(model.stage2_output_decode, x, 2).reshape(B, K, -1)  # [B,K,D]

    # stage 3: one token per visible patch, [B,K,D]
    x = _patch_embed(model.patch_embed3, x, 2).reshape(B, K, -1)
    pos = model.position_embedding(model.pos_embed, (h, w))  # [1,L,D]
    x = model.patch_embed4(x) + _gather_rows(pos.expand(B, -1, -1), ids_keep)
    for block in model.blocks3:
        x = block(x)
    return model.norm(x + skip1 + skip2)
