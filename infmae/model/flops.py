"""Analytical FLOPs of the InfMAE forward, counted as ``torch.utils.flop_counter`` counts them:
2 per multiply-add of every convolution and matrix product (attention's two batched products included),
biases, norms and activations not counted.

These are the *model* FLOPs used for MFU: the dense-equivalent count of the released architecture (conv
stages on the full H/4 and H/8 grids), without the released 768-channel score conv, which this engine
replaces by one averaged filter. At 224 px, in_chans 3, S 4: 26,565,633,024 per forward.
"""

from __future__ import annotations

from infmae.config import ModelConfig
from kernels.reference import num_visible


def _cblock(pixels: int, dim: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    conv1_conv2 = 2 * dim * dim
    depthwise = 25 * dim
    mlp = 2 * dim * hidden
    return 2 * pixels * (conv1_conv2 + depthwise + mlp)


def _vit_block(tokens: int, dim: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    projections = 2 * tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden)
    attention = 2 * 2 * tokens * tokens * dim  # q @ k^T and attn @ v over all heads
    return projections + attention


def forward_flops_by_part(config: ModelConfig, img_size: tuple[int, int], sparse: bool = False) -> dict[str, int]:
    """FLOPs of one image's forward by part: stage1, stage2, vit, decoder. ``sparse``: the FLOPs the sparse
    encoder executes (conv stages, skips and patch_embed3/4 on the K visible patches only)."""
    d1, d2, D = config.embed_dims
    Dd, r, C = config.decoder_embed_dim, config.mlp_ratio, config.in_chans
    L = (img_size[0] // 16) * (img_size[1] // 16)
    K = num_visible(L, config.mask_stride)
    P = K if sparse else L  # patches the conv stages run on
    n1, n2 = 16 * P, 4 * P  # pixels at H/4 and H/8
    stage1 = 2 * n1 * d1 * C * 16 + config.depths[0] * _cblock(n1, d1, r) + 2 * P * D * d1 * 16
    stage2 = 2 * n2 * d2 * d1 * 4 + config.depths[1] * _cblock(n2, d2, r) + 2 * P * D * d2 * 4
    vit = 2 * P * D * d2 * 4 + 2 * P * D * D + config.depths[2] * _vit_block(K, D, r)
    decoder = 2 * K * D * Dd + config.decoder_depth * _vit_block(L, Dd, r) + 2 * L * Dd * 256 * C
    return {"stage1": stage1, "stage2": stage2, "vit": vit, "decoder": decoder}


def forward_flops(config: ModelConfig, img_size: tuple[int, int]) -> int:
    return sum(forward_flops_by_part(config, img_size).values())


def sparse_forward_flops(config: ModelConfig, img_size: tuple[int, int]) -> int:
    """FLOPs one forward of the sparse encoder executes (the model FLOPs stay ``forward_flops``)."""
    return sum(forward_flops_by_part(config, img_size, sparse=True).values())


def score_filter_flops(config: ModelConfig, img_size: tuple[int, int]) -> int:
    """The single C x 16 x 16 score filter, if counted as a 1-output conv: 2 * L * C * 256."""
    return 2 * (img_size[0] // 16) * (img_size[1] // 16) * config.in_chans * 256
