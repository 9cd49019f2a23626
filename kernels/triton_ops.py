"""The fast path behind ``kernels="triton"``: the Triton ops, each registered with its twin.

Importing this module needs Triton; the model's kernel switch imports it only where Triton can run.
"""

from __future__ import annotations

from kernels import reference
from kernels.depthwise import depthwise_conv5x5_tiles
from kernels.masking import sort_stride_mask
from kernels.pooling import intensity_pool
from kernels.registry import register
from kernels.tokens import token_gather, token_gather_many, token_restore

register("intensity_pool", intensity_pool, reference.intensity_pool, has_backward=False)
register("sort_stride_mask", sort_stride_mask, reference.sort_stride_mask, has_backward=False)
register("token_gather", token_gather, reference.token_gather, has_backward=True)
register("token_gather_many", token_gather_many, reference.token_gather_many, has_backward=True)
register("token_restore", token_restore, reference.token_restore, has_backward=True)
register("depthwise_conv5x5_tiles", depthwise_conv5x5_tiles, reference.depthwise_conv5x5_tiles, has_backward=True)

__all__ = [
    "intensity_pool",
    "sort_stride_mask",
    "token_gather",
    "token_gather_many",
    "token_restore",
    "depthwise_conv5x5_tiles",
]


def masking_path(imgs_BCHW, weight, bias, stride, order="descending", grid_hw=None):
    """The model's masking path: score every patch, then sort-and-stride mask and visibility maps."""
    return sort_stride_mask(intensity_pool(imgs_BCHW, weight, bias), stride, order, grid_hw)
