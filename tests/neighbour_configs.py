"""A patch grid on which every neighbour configuration of a visible patch occurs (sparse encoder tests)."""

import torch


def all_neighbour_configurations() -> torch.Tensor:
    """[1, 48*48] bool, True = visible: 256 blocks of 3x3 patches, block i's centre visible and its 8
    neighbours visible where bit j of i is set."""
    grid = torch.zeros(48, 48, dtype=torch.bool)
    others = [s for s in range(9) if s != 4]
    for i in range(256):
        top, left = 3 * (i // 16), 3 * (i % 16)
        grid[top + 1, left + 1] = True
        for bit, s in enumerate(others):
            if i >> bit & 1:
                grid[top + s // 3, left + s % 3] = True
    return grid.flatten()[None]
