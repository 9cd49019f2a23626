"""Triton intensity pooling: one linear 16x16 filter scored on every patch (docs/specification.md, 'Kernels').

Shape legend: B batch, C channels, H x W image (multiples of 16), h x w = H/16 x W/16 the patch grid,
L = h*w patches in raster order.

``intensity_pool(imgs_BCHW, filter_C1616, bias=0.0) -> scores_BL`` (fp32) has the signature and the
outputs of its eager twin ``kernels.reference.intensity_pool``, which is the specification:
``scores[b, l] = <F, imgs[b, :, patch l]> + bias``.

- imgs: float32, bfloat16 or float16, any strides (the four strides go to the kernel: channels-last,
  sliced or expanded views, e.g. a gray image expanded to 3 channels with channel stride 0, are read in
  place, never copied). Each pixel is read once, converted to fp32, and the products are summed in fp32.
- filter: [C,16,16], any float dtype, used in fp32 (a C*256-element copy is made, never of the image).
- bias: a Python float or a one-element tensor on the images' device (e.g. ``conv.bias.mean()``); it is
  read by the kernel, so a tensor bias costs no host sync.
- No gradient: the score only feeds a sort (the mask is a function of the image and gets no gradient),
  so the inputs are detached and the result never requires grad.

Launch: one program per (image b, patch row i, block of BLOCK_PW patch columns); the program holds a
[16, BLOCK_PW, 16] tile (pixel row p, patch, pixel column q), so a warp reads BLOCK_PW*16 contiguous
pixels of one image row, and loops over the C channels. BLOCK_PW = min(8, next_pow2(w)), 4 warps: one
config, no autotune. Summation order: per tile element over channels, then over q, then over p; it
differs from the twin's einsum by a few fp32 ulp (tests/tolerances.py, "intensity_pool").

Which path runs (``_use_triton``): the Triton kernel for a CUDA tensor, or for a CPU tensor while
``TRITON_INTERPRET=1`` (tests); otherwise (a CPU tensor, no interpreter) the eager twin, so that
``torch.compile`` on a CPU machine traces and runs it. The op is the torch.library custom op
``infmae::intensity_pool``, so ``torch.compile`` does not break its graph on it. ``_write`` (that rule,
into a given tensor) also serves ``kernels.testing.intensity_pool_out``, which writes into poisoned outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from ._common import fail
from ._launch import use_triton

__all__ = ["intensity_pool"]

PATCH = reference.PATCH
_OP = "intensity_pool"


# ---------------------------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------------------------
@triton.jit
def _intensity_pool_kernel(
    img_ptr,
    filt_ptr,
    bias_ptr,
    out_ptr,
    C,
    h,
    w,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    out_stride_b,
    out_stride_l,
    BLOCK_PW: tl.constexpr,
    PATCH_SIZE: tl.constexpr,
):
    # program (b * h + i, j): patch row i of image b, patch columns j*BLOCK_PW ... j*BLOCK_PW + BLOCK_PW-1
    row_id = tl.program_id(0)
    b = row_id // h
    i = row_id % h
    pw = tl.program_id(1) * BLOCK_PW + tl.arange(0, BLOCK_PW)  # patch columns [BLOCK_PW]
    p = tl.arange(0, PATCH_SIZE)[:, None, None]  # pixel row inside the patch
    q = tl.arange(0, PATCH_SIZE)[None, None, :]  # pixel column inside the patch
    pw3 = pw[None, :, None]
    in_grid = pw3 < w
    # int64 offsets: a large batch of large images passes 2**31 elements
    pixel = (i * PATCH_SIZE + p).to(tl.int64) * stride_h + (pw3 * PATCH_SIZE + q).to(tl.int64) * stride_w
    ptrs = img_ptr + b.to(tl.int64) * stride_b + pixel  # channel 0; advanced by stride_c (64-bit pointers)
    filt_offs = p * PATCH_SIZE + q  # [16,1,16], the filter is a contiguous fp32 [C,16,16]
    acc = tl.zeros([PATCH_SIZE, BLOCK_PW, PATCH_SIZE], dtype=tl.float32)
    for c in range(C):
        x = tl.load(ptrs, mask=in_grid, other=0.0).to(tl.float32)
        f = tl.load(filt_ptr + c * PATCH_SIZE * PATCH_SIZE + filt_offs)
        acc += x * f
        ptrs += stride_c
    score = tl.sum(tl.sum(acc, axis=2), axis=0) + tl.load(bias_ptr)  # [BLOCK_PW] fp32
    out_offs = b.to(tl.int64) * out_stride_b + (i * w + pw).to(tl.int64) * out_stride_l
    tl.store(out_ptr + out_offs, score, mask=pw < w)


def _launch(imgs: torch.Tensor, filt: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    """Write the scores into ``out`` [B,L] fp32 (any strides). Inputs validated by the caller."""
    B, C, H, W = imgs.shape
    h, w = H // PATCH, W // PATCH
    if out.numel() == 0:
        return
    filt32 = filt.to(torch.float32).contiguous()
    bias32 = bias.reshape(()).to(torch.float32)
    block_pw = min(8, triton.next_power_of_2(w))
    grid = (B * h, triton.cdiv(w, block_pw))
    _intensity_pool_kernel[grid](
        imgs,
        filt32,
        bias32,
        out,
        C,
        h,
        w,
        *imgs.stride(),
        *out.stride(),
        BLOCK_PW=block_pw,
        PATCH_SIZE=PATCH,
        num_warps=4,
    )


def _use_triton(t: torch.Tensor) -> bool:
    """The shared launch rule (kernels/_launch.py)."""
    return use_triton(t, _intensity_pool_kernel)


def _write(imgs: torch.Tensor, filt: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    """The launch rule into ``out``: the kernel, or the twin's scores copied."""
    if _use_triton(imgs):
        _launch(imgs, filt, bias, out)
    else:
        out.copy_(reference.intensity_pool(imgs, filt, bias))


# ---------------------------------------------------------------------------------------------
# custom op (torch.compile sees it as an opaque node with a shape function)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("infmae::intensity_pool", mutates_args=())
def _intensity_pool_op(imgs: torch.Tensor, filt: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    B, _, H, W = imgs.shape
    out = torch.empty(B, (H // PATCH) * (W // PATCH), dtype=torch.float32, device=imgs.device)
    _write(imgs, filt, bias, out)
    return out


@_intensity_pool_op.register_fake
def _(imgs, filt, bias):
    B, _, H, W = imgs.shape
    return imgs.new_empty(B, (H // PATCH) * (W // PATCH), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------------------------
def _validate(imgs: torch.Tensor, filt: torch.Tensor, bias) -> None:
    reference.check_intensity_pool_inputs(_OP, imgs, filt)
    if not filt.is_floating_point():
        fail(_OP, "a floating-point filter", str(filt.dtype), "convert with filter.float()")
    if filt.device != imgs.device:
        fail(
            _OP,
            f"the filter on the images' device {imgs.device}",
            str(filt.device),
            "move it with filter.to(imgs.device)",
        )
    if isinstance(bias, torch.Tensor):
        if bias.numel() != 1 or not bias.is_floating_point():
            fail(
                _OP,
                "a float bias or a one-element float tensor",
                f"{bias.dtype} tensor of shape {tuple(bias.shape)}",
                "average a conv bias first, e.g. conv.bias.mean()",
            )
        if bias.device != imgs.device:
            fail(
                _OP,
                f"the bias on the images' device {imgs.device}",
                str(bias.device),
                "move it with bias.to(imgs.device)",
            )
    elif not isinstance(bias, (int, float)) or isinstance(bias, bool):
        fail(_OP, "a float bias or a one-element float tensor", type(bias).__name__, "pass e.g. 0.0", TypeError)


def _prepare(
    imgs_BCHW: torch.Tensor, filter_C1616: torch.Tensor, bias: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated, detached inputs (no gradient: the score only feeds a sort), the bias as a 0-d tensor."""
    _validate(imgs_BCHW, filter_C1616, bias)
    imgs = imgs_BCHW.detach()
    if isinstance(bias, torch.Tensor):
        bias_t = bias.detach().reshape(())
    else:
        bias_t = torch.full((), float(bias), dtype=torch.float32, device=imgs.device)
    return imgs, filter_C1616.detach(), bias_t


def intensity_pool(
    imgs_BCHW: torch.Tensor, filter_C1616: torch.Tensor, bias: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Score every 16x16 patch with one linear filter: ``scores[b, l] = <F, imgs[b, :, patch l]> + bias``.

    imgs_BCHW: [B,C,H,W] float32/bfloat16/float16, any strides; H and W multiples of 16.
    filter_C1616: [C,16,16], any float dtype (used in fp32). bias: a float or a one-element tensor.
    Returns scores [B,L] float32 in raster order, accumulated in fp32; never requires grad.
    Raises ValueError (TypeError for a non-tensor) on a bad input, with the expected value and a fix.
    """
    return torch.ops.infmae.intensity_pool(*_prepare(imgs_BCHW, filter_C1616, bias))
