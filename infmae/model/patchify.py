"""Images <-> per-patch vectors for any channel count and any H, W that are multiples of 16.

A patch vector is ordered (row p, column q, channel c) with c fastest, as in the released code, so a
decoder head trained there predicts the same layout here.
"""

from __future__ import annotations

import torch

PATCH = 16


def grid_size(height: int, width: int, op: str = "patchify") -> tuple[int, int]:
    if height % PATCH or width % PATCH or height <= 0 or width <= 0:
        raise ValueError(
            f"{op}: expected an image size that is a multiple of 16, got {height}x{width}; "
            f"crop or resize to e.g. {max(PATCH, height // PATCH * PATCH)}x{max(PATCH, width // PATCH * PATCH)}"
        )
    return height // PATCH, width // PATCH


def patchify(imgs_BCHW: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> [B,L,256*C] with L = (H/16)*(W/16) in raster order."""
    B, C, H, W = imgs_BCHW.shape
    h, w = grid_size(H, W)
    x = imgs_BCHW.reshape(B, C, h, PATCH, w, PATCH)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(B, h * w, PATCH * PATCH * C)


def unpatchify(patches_BLP: torch.Tensor, grid_hw: tuple[int, int], channels: int) -> torch.Tensor:
    """[B,L,256*C] -> [B,C,16h,16w], the inverse of :func:`patchify`."""
    B, L, P = patches_BLP.shape
    h, w = grid_hw
    if L != h * w or P != PATCH * PATCH * channels:
        raise ValueError(
            f"unpatchify: expected [B,{h * w},{PATCH * PATCH * channels}] for grid {h}x{w} and "
            f"{channels} channels, got {list(patches_BLP.shape)}; pass the grid of the images"
        )
    x = patches_BLP.reshape(B, h, w, PATCH, PATCH, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(B, channels, h * PATCH, w * PATCH)
