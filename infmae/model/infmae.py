"""InfMAE: information-aware masking, a hybrid conv + ViT encoder, a 2-block decoder, MSE on masked patches.

Legend: B batch, C image channels, H x W image (multiples of 16), h x w = H/16 x W/16 patch grid,
L = h*w patches, K = ceil(L / S) visible patches, D = embed_dims[2] encoder width, Dd decoder width.

Module and parameter names are those of the released code (docs/specification.md, 'The model'), so a released
checkpoint ``{'model': state_dict}`` loads with ``strict=True``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from infmae.config import ModelConfig
from infmae.model import flops
from infmae.model.kernel_switch import resolve_kernels
from infmae.model.layers import Block, CBlock, PatchEmbed, ScoreConv
from infmae.model.patchify import PATCH, grid_size, patchify
from infmae.model.pos_embed import sincos_2d
from infmae.model.sparse import sparse_encoder
from kernels.reference import MaskOutputs, intensity_filter

ENCODER_PREFIXES = (
    "patch_embed1.",
    "patch_embed2.",
    "patch_embed3.",
    "patch_embed4.",
    "blocks1.",
    "blocks2.",
    "blocks3.",
    "norm.",
    "pos_embed",
)
"""The encoder for downstream use: its state-dict keys start with one of these."""


def _autocast_off(device_type: str):
    return torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu") else nullcontext()


class EncoderOutput(NamedTuple):
    latent: torch.Tensor  # [B,K,D]
    masking: MaskOutputs


@dataclass
class InfMAEOutput:
    loss: torch.Tensor  # scalar, fp32
    pred: torch.Tensor  # [B,L,256*C]
    mask: torch.Tensor  # [B,L], 1 = masked
    ids_keep: torch.Tensor  # [B,K]


class InfMAE(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        d1, d2, d3 = config.embed_dims
        C, r = config.in_chans, config.mlp_ratio
        self.grid = grid_size(*config.img_size, op="InfMAE")
        num_patches = self.grid[0] * self.grid[1]
        self.ops = resolve_kernels(config.kernels)

        # score conv of the released code: frozen buffers, only its averaged filter is used
        # (docs/specification.md, 'Information-aware masking')
        self.patch_embed = ScoreConv(C, 768, PATCH)
        self.patch_embed1 = PatchEmbed(C, d1, 4)
        self.patch_embed2 = PatchEmbed(d1, d2, 2)
        self.patch_embed3 = PatchEmbed(d2, d3, 2)
        self.patch_embed4 = nn.Linear(d3, d3)
        self.stage1_output_decode = nn.Conv2d(d1, d3, 4, stride=4)
        self.stage2_output_decode = nn.Conv2d(d2, d3, 2, stride=2)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, d3), requires_grad=False)
        self.blocks1 = nn.ModuleList(CBlock(d1, r) for _ in range(config.depths[0]))
        self.blocks2 = nn.ModuleList(CBlock(d2, r) for _ in range(config.depths[1]))
        self.blocks3 = nn.ModuleList(Block(d3, config.num_heads, r) for _ in range(config.depths[2]))
        self.norm = nn.LayerNorm(d3, eps=1e-6)

        Dd = config.decoder_embed_dim
        self.decoder_embed = nn.Linear(d3, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches, Dd), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(Dd, config.decoder_num_heads, r) for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.decoder_pred = nn.Linear(Dd, PATCH * PATCH * C)

        # intensity score filter: 1/(C*256) everywhere; not state (the released state dict has no such key)
        self.register_buffer("intensity_filter", intensity_filter(C), persistent=False)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        # dtype of the dense conv stages' residual stream under autocast (None: as autocast leaves it, fp32;
        # the engine sets bf16 on CUDA, infmae/training/engine.py). Not state: checkpoints are unchanged.
        self.residual_dtype: torch.dtype | None = None
        self.initialize_weights()

    # ------------------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """The released init: sin-cos position embeddings, xavier_uniform on every Linear (fused qkv as
        one matrix) and on ``patch_embed3.proj`` seen as [D, 4*d2], zero biases, LayerNorm 1/0, mask
        token N(0, 0.02); the other convs keep PyTorch's default init."""
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(sincos_2d(self.decoder_pos_embed.shape[-1], self.grid).unsqueeze(0))
        w = self.patch_embed3.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def flops_per_image(self, img_size: tuple[int, int] | None = None) -> int:
        """Dense-equivalent model FLOPs of one forward (2 per multiply-add), used for MFU."""
        return flops.forward_flops(self.config, img_size or self.config.img_size)

    def executed_flops_per_image(self, img_size: tuple[int, int] | None = None) -> int:
        """FLOPs one forward actually executes: the model FLOPs for the dense encoder, fewer for the sparse
        one (its conv stages run on the visible patches only)."""
        if self.config.encoder == "sparse":
            return flops.sparse_forward_flops(self.config, img_size or self.config.img_size)
        return self.flops_per_image(img_size)

    # ------------------------------------------------------------------------------------------
    def position_embedding(self, param: nn.Parameter, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The stored table at the configured grid; any other grid gets its own sin-cos table."""
        if grid_hw == self.grid:
            return param
        key = (param.shape[-1], grid_hw, param.device, param.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_2d(param.shape[-1], grid_hw).to(param.device, param.dtype).unsqueeze(0)
        return self._pos_cache[key]

    def score_filter(self) -> tuple[torch.Tensor, torch.Tensor | float]:
        """The C x 16 x 16 filter and bias of the IAM score (docs/specification.md, 'Information-aware masking')."""
        if self.config.score == "official":
            return self.patch_embed.averaged_filter()
        return self.intensity_filter, 0.0

    def masking(self, imgs_BCHW: torch.Tensor) -> MaskOutputs:
        """IAM: score every patch, sort (stable), keep every S-th rank. No randomness."""
        grid = grid_size(imgs_BCHW.shape[2], imgs_BCHW.shape[3], op="InfMAE")
        weight, bias = self.score_filter()
        # the mask is a function of the image and carries no gradient; the score is fp32 under the trainer's
        # bf16 autocast too (else near-equal scores round together and the sort keeps other patches)
        with torch.no_grad(), _autocast_off(imgs_BCHW.device.type):
            scores_BL = self.ops.intensity_pool(imgs_BCHW.detach(), weight, bias)
            return self.ops.sort_stride_mask(scores_BL, self.config.mask_stride, self.config.order, grid)

    def _check_input(self, imgs: torch.Tensor) -> None:
        if imgs.dim() != 4 or imgs.shape[1] != self.config.in_chans:
            raise ValueError(
                f"InfMAE: expected images [B,{self.config.in_chans},H,W], got {list(imgs.shape)}; "
                "repeat a gray image to the model's channels or build the model with that in_chans"
            )
        grid_size(imgs.shape[2], imgs.shape[3], op="InfMAE")

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """A conv stage's input (a map [B,d,H',W'] or the sparse encoder's tiles [B,K,T,T,d]) in
        ``residual_dtype`` when autocast is on: the blocks' sums ``x + conv(..)`` then stay in bf16 (on CUDA
        autocast's convs return bf16 while its LayerNorms return fp32, which would carry the stream in
        fp32). Outside autocast (the fp32 reference) nothing changes."""
        if self.residual_dtype is None or not torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(self.residual_dtype)

    def forward_encoder(self, imgs_BCHW: torch.Tensor, masking: MaskOutputs | None = None) -> EncoderOutput:
        """-> latent [B,K,D] of the visible patches in rank order, and the masking used."""
        self._check_input(imgs_BCHW)
        masking = masking if masking is not None else self.masking(imgs_BCHW)
        if self.config.encoder == "sparse":  # the same latent from the visible patches only (sparse.py)
            return EncoderOutput(sparse_encoder(self, imgs_BCHW, masking), masking)
        grid = (imgs_BCHW.shape[2] // PATCH, imgs_BCHW.shape[3] // PATCH)

        x = self.residual(self.patch_embed1(imgs_BCHW))  # [B,d1,H/4,W/4]
        for block in self.blocks1:
            x = block(x, masking.visible_x4)
        skip1 = self.stage1_output_decode(x).flatten(2).transpose(1, 2)  # [B,L,D]
        x = self.residual(self.patch_embed2(x))  # [B,d2,H/8,W/8]
        for block in self.blocks2:
            x = block(x, masking.visible_x2)
        skip2 = self.stage2_output_decode(x).flatten(2).transpose(1, 2)  # [B,L,D]
        x = self.patch_embed3(x).flatten(2).transpose(1, 2)  # [B,L,D]
        x = self.patch_embed4(x) + self.position_embedding(self.pos_embed, grid)
        x, skip1, skip2 = self.ops.token_gather_many((x, skip1, skip2), masking.ids_keep)  # [B,K,D] each
        for block in self.blocks3:
            x = block(x)
        return EncoderOutput(self.norm(x + skip1 + skip2), masking)

    def forward_decoder(
        self, latent_BKD: torch.Tensor, ids_keep_BK: torch.Tensor, grid_hw: tuple[int, int]
    ) -> torch.Tensor:
        """-> predicted patches [B,L,256*C]."""
        x = self.decoder_embed(latent_BKD)
        x = self.ops.token_restore(x, self.mask_token, ids_keep_BK, grid_hw[0] * grid_hw[1])  # [B,L,Dd]
        x = x + self.position_embedding(self.decoder_pos_embed, grid_hw)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward_loss(self, imgs_BCHW: torch.Tensor, pred_BLP: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE averaged over pixels, then averaged over the masked patches of the batch (fp32)."""
        target = patchify(imgs_BCHW.float())
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred_BLP.float() - target) ** 2).mean(dim=-1)  # [B,L]
        return (per_patch * mask_BL).sum() / mask_BL.sum()

    def forward(self, imgs_BCHW: torch.Tensor) -> InfMAEOutput:
        latent, masking = self.forward_encoder(imgs_BCHW)
        grid = (imgs_BCHW.shape[2] // PATCH, imgs_BCHW.shape[3] // PATCH)
        pred = self.forward_decoder(latent, masking.ids_keep, grid)
        loss = self.forward_loss(imgs_BCHW, pred, masking.mask)
        return InfMAEOutput(loss, pred, masking.mask, masking.ids_keep)


def build_model(config: ModelConfig | None = None) -> InfMAE:
    return InfMAE(config)


def encoder_state_dict(model_or_state: nn.Module | dict) -> dict[str, torch.Tensor]:
    """The encoder's tensors with the released key names, for ConvMAE-style downstream backbones."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
