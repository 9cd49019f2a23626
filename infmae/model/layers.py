"""Building blocks with the released code's module and parameter names (so checkpoints load strictly).

Legend: B batch, D width, N tokens, H' x W' a stage's spatial grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def layer_norm_channels(norm: nn.LayerNorm, x_BDHW: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel axis of a [B,D,H',W'] map, normalising the last dimension of its NHWC view.

    In channels-last memory (``train.channels_last``, the engine) the NHWC view is the tensor's own layout:
    both permutes are stride changes, LayerNorm reads contiguous rows and its output is again a
    channels-last [B,D,H',W'] map, with no copy. In NCHW memory (the reference) LayerNorm copies the
    strided view, as the released code does."""
    x_BHWD = x_BDHW.permute(0, 2, 3, 1)
    return norm(x_BHWD).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping conv (kernel = stride = ``patch``) -> LayerNorm(eps 1e-5) over channels -> GELU."""

    def __init__(self, in_chans: int, embed_dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)
        self.act = nn.GELU()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.act(layer_norm_channels(self.norm, self.proj(x_BCHW)))


class FrozenConvWeights(nn.Module):
    """The released frozen score conv Conv2d(C, 768, 16, 16) as buffers: in the state dict, never trained."""

    def __init__(self, in_chans: int, out_chans: int, patch: int):
        super().__init__()
        conv = nn.Conv2d(in_chans, out_chans, kernel_size=patch, stride=patch)  # PyTorch's default init
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", conv.bias.detach().clone())


class ScoreConv(nn.Module):
    """``patch_embed`` of the released code: only its averaged filter is ever used (``InfMAE.score_filter`` in
    infmae/model/infmae.py; the pooling op is kernels/pooling.py, its twin ``kernels.reference.intensity_pool``)."""

    def __init__(self, in_chans: int, out_chans: int = 768, patch: int = 16):
        super().__init__()
        self.proj = FrozenConvWeights(in_chans, out_chans, patch)

    def averaged_filter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mean_o(W_o . x + b_o) == (mean_o W_o) . x + mean_o b_o: ([C,16,16], scalar)."""
        return self.proj.weight.mean(0), self.proj.bias.mean()


class CMlp(nn.Module):
    """1x1 conv MLP on a [B,D,H',W'] map: fc1 (D -> rD), GELU, fc2 (rD -> D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CBlock(nn.Module):
    """Conv block of stages 1-2: ``x + conv2(dw5x5(m * conv1(norm1(x))))`` then ``x + mlp(norm2(x))``.

    ``visible`` [B,1,H',W'] (1 visible, 0 masked) multiplies after conv1 (its bias included) and before
    the depthwise conv, nowhere else: masked pixels then contribute nothing to any visible patch.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # named `attn` in the released code
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = CMlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x_BDHW: torch.Tensor,
        visible_B1HW: torch.Tensor | None = None,
        neighbours_BK9: torch.Tensor | None = None,
        depthwise=None,
    ) -> torch.Tensor:
        """Dense: ``x`` [B,D,H',W'] and ``visible``. Sparse (``neighbours`` given): ``x`` is the visible
        patches' channels-last tiles [B,K,T,T,D] and ``depthwise`` the tile conv (see sparse.py). Both
        modes go through ``forward`` so that wrappers of the block (activation checkpointing, compile)
        apply to both."""
        if neighbours_BK9 is not None:
            return self._forward_tiles(x_BDHW, neighbours_BK9, depthwise)
        mixed = self.conv1(layer_norm_channels(self.norm1, x_BDHW))
        if visible_B1HW is not None:
            mixed = mixed * visible_B1HW.to(mixed.dtype)
        x_BDHW = x_BDHW + self.conv2(self.attn(mixed))
        return x_BDHW + self.mlp(layer_norm_channels(self.norm2, x_BDHW))

    def _forward_tiles(self, x_BKTTD: torch.Tensor, neighbours_BK9: torch.Tensor, depthwise) -> torch.Tensor:
        """The same block on visible tiles: the 1x1 convs as matrix products over the channels; the mask
        multiply is the zero halo of masked neighbours in ``depthwise``."""
        mixed = F.linear(self.norm1(x_BKTTD), self.conv1.weight.flatten(1), self.conv1.bias)
        mixed = depthwise(mixed, neighbours_BK9, self.attn.weight, self.attn.bias)
        x_BKTTD = x_BKTTD + F.linear(mixed, self.conv2.weight.flatten(1), self.conv2.bias)
        mlp = self.mlp
        hidden = mlp.act(F.linear(self.norm2(x_BKTTD), mlp.fc1.weight.flatten(1), mlp.fc1.bias))
        return x_BKTTD + F.linear(hidden, mlp.fc2.weight.flatten(1), mlp.fc2.bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection laid out (3, heads, head_dim) as released."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = x_BND.shape
        qkv = self.qkv(x_BND).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(head_dim)) v, the released scale; SDPA picks a fused kernel where it can.
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm ViT block, LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        x_BND = x_BND + self.attn(self.norm1(x_BND))
        return x_BND + self.mlp(self.norm2(x_BND))
