"""Reconstruction grids: one row per image, columns original | masked | reconstruction | reconstruction
with the visible patches pasted back. Written as an 8-bit gray PNG a person can look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from infmae.model.patchify import unpatchify

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


@torch.no_grad()
def reconstruction_panels(
    imgs_BCHW: torch.Tensor, pred_BLP: torch.Tensor, mask_BL: torch.Tensor, mean: float, std: float
) -> torch.Tensor:
    """-> [B,4,H,W] gray images in [0,1], un-normalised (without norm_pix_loss the prediction is in the
    normalised pixel space of the input)."""
    B, C, H, W = imgs_BCHW.shape
    grid = (H // 16, W // 16)
    recon = unpatchify(pred_BLP.float(), grid, C)
    pixel_mask = mask_BL.float().reshape(B, 1, *grid).repeat_interleave(16, 2).repeat_interleave(16, 3)
    original = imgs_BCHW.float()
    masked = original * (1 - pixel_mask) + (-mean / std) * pixel_mask  # masked patches shown black
    pasted = original * (1 - pixel_mask) + recon * pixel_mask
    panels = torch.stack([original, masked, recon, pasted], dim=1)  # [B,4,C,H,W]
    return (panels.mean(dim=2) * std + mean).clamp(0, 1)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def save_grid(
    panels_B4HW: torch.Tensor,
    path: str | Path,
    max_rows: int = 8,
    min_tile: int = 128,
    row_labels: list[str] | None = None,
) -> Path:
    """Tile the panels (rows = images) with a 2-px white gutter, upscaled (nearest) so small images stay
    visible, under a header naming the columns; ``row_labels`` (e.g. file name and masked MSE, lines
    split by newlines) are written left of each row."""
    panels = panels_B4HW[:max_rows].cpu()
    rows, cols, H, W = panels.shape
    scale = max(1, -(-min_tile // max(H, W)))
    tiles = panels.repeat_interleave(scale, 2).repeat_interleave(scale, 3).numpy()
    gutter, header, line = 2, 18, 12
    label_width = 150 if row_labels else 0
    h, w = H * scale, W * scale
    canvas = np.ones((header + rows * (h + gutter) + gutter, label_width + cols * (w + gutter) + gutter), np.float32)
    for r in range(rows):
        for c in range(cols):
            top, left = header + gutter + r * (h + gutter), label_width + gutter + c * (w + gutter)
            canvas[top : top + h, left : left + w] = tiles[r, c]
    image = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for c, name in enumerate(COLUMNS):
        draw.text((label_width + gutter + c * (w + gutter) + 2, 3), _shorten(name, w // 6), fill=0, font=font)
    for r, label in enumerate((row_labels or [])[:rows]):
        top = header + gutter + r * (h + gutter) + 2
        for k, text in enumerate(label.split("\n")):
            draw.text((3, top + k * line), _shorten(text, label_width // 6), fill=0, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def row_labels(dataset, indices: torch.Tensor, errors: torch.Tensor | None = None) -> list[str]:
    """Row labels of a reconstruction grid: each image's file name (and its masked MSE)."""
    names = [dataset.path(int(i)).name for i in indices]
    if errors is None:
        return names
    return [f"{name}\nMSE {float(e):.3f}" for name, e in zip(names, errors)]


def write_reconstructions(path: Path, images_BCHW: torch.Tensor, out, mean: float, std: float, labels=None) -> Path:
    """The grid of a batch and the model's output on it (``out``: pred [B,L,P] and mask [B,L]) at ``path``."""
    panels = reconstruction_panels(images_BCHW.detach(), out.pred.detach(), out.mask, mean, std)
    return save_grid(panels, path, row_labels=labels)
