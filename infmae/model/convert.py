"""Checkpoint conversions: 3 <-> 1 input channels, and loading released checkpoints.

``in_chans=1`` is an exact shortcut for 3 identical channels (docs/specification.md, 'Fidelity choices'):
a convolution over 3 equal channels equals one over a single channel with the weights summed over the
channel axis. The decoder head predicts (p, q, c) with c fastest: going to 1 channel averages the
channels' predictions, going to 3 repeats them (each channel then predicts the gray value).
"""

from __future__ import annotations

import torch

# tensors whose axis 1 is the image channel axis
_INPUT_CONVS = ("patch_embed.proj.weight", "patch_embed1.proj.weight")
_HEAD = ("decoder_pred.weight", "decoder_pred.bias")


def infer_in_chans(state: dict[str, torch.Tensor]) -> int:
    return int(state["patch_embed1.proj.weight"].shape[1])


def convert_in_chans(state: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    """Return a copy of a model state dict converted to ``in_chans`` (1 or 3) input channels."""
    source = infer_in_chans(state)
    if in_chans not in (1, 3) or source not in (1, 3):
        raise ValueError(
            f"convert_in_chans: expected a conversion between 1 and 3 channels, got {source} -> "
            f"{in_chans}; only gray <-> repeated-gray checkpoints convert exactly"
        )
    out = dict(state)
    if source == in_chans:
        return out
    for key in _INPUT_CONVS:
        if key in out:
            w = out[key]
            out[key] = w.sum(dim=1, keepdim=True) if in_chans == 1 else (w / 3).repeat(1, 3, 1, 1)
    for key in _HEAD:
        if key in out:
            t = out[key]
            per_channel = t.reshape(256, source, *t.shape[1:])  # (p*q, c, ...)
            t = (
                per_channel.mean(dim=1, keepdim=True)
                if in_chans == 1
                else per_channel.repeat(1, 3, *[1] * (t.dim() - 1))
            )
            out[key] = t.reshape(256 * in_chans, *t.shape[2:])
    return out


def extract_model_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Accept a released checkpoint ``{'model': state_dict, ...}``, our own, or a bare state dict."""
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        return checkpoint["model"]
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(
        f"checkpoint: expected {{'model': state_dict}} or a state dict, got keys "
        f"{sorted(checkpoint)[:8]}; is this an InfMAE checkpoint?"
    )
