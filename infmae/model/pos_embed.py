"""Fixed 2-D sine-cosine position embeddings (MAE / MoCo v3 convention, no cls token).

For a grid of h x w patches in raster order, the first D/2 channels encode the column index and the last
D/2 the row index; each half is [sin(p * w_k) for k < D/4] followed by [cos(p * w_k)], with
w_k = 10000 ** (-k / (D/4)). Computed in float64 and rounded once to float32, as the released numpy code.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions [M] -> [M, dim]: sin then cos of ``positions * 10000 ** (-k / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sincos_1d: expected an even width, got {dim}; use a width divisible by 4")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """-> [h*w, dim] float32: column-index half first, row-index half second, raster order."""
    if dim % 4:
        raise ValueError(f"sincos_2d: expected a width divisible by 4, got {dim}; pick e.g. 768 or 512")
    h, w = grid_hw
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return emb.float()
