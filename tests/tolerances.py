"""The one tolerance table of the test suite: (atol, rtol) per comparison, each with its reason.

Integer outputs (ids, masks, visibility maps) are never here: they are compared exactly.
"""
import torch

TOLERANCES = {
    # fp32 einsum vs conv2d over 256*C products of N(0,1) values: scores ~ sqrt(768) ~ 28 in size, and
    # two summation orders differ by a few ulp of the partial sums (~2e-6 each): 1e-4 absolute.
    ("intensity_pool", torch.float32): (1e-4, 1e-5),
    # bf16/fp16 inputs are upcast exactly to fp32 before the sum, so the same fp32 summation bound holds.
    ("intensity_pool", torch.bfloat16): (1e-4, 1e-5),
    ("intensity_pool", torch.float16): (1e-4, 1e-5),
    # averaging the 768-channel conv's outputs vs one averaged filter: reassociation of 768*768 fp32 terms.
    ("official_score", torch.float32): (1e-5, 1e-4),
    # encoder of a 3->1 channel converted model: summing 3 channel weights first reorders fp32 adds
    # inside the first conv; the difference then passes through ~15 layers (bar: 1e-5).
    ("in_chans_conversion", torch.float32): (1e-5, 1e-5),
    # gradient of the mask token: a sum over masked positions, in a different order than autograd's.
    ("token_restore_grad", torch.float32): (1e-5, 1e-6),
    # bf16 output gradients summed over ~40 positions by autograd in bf16 (eps 2^-8 = 3.9e-3): a few ulp.
    ("token_restore_grad", torch.bfloat16): (2e-2, 1.6e-2),
    # Triton restore's mask-token gradient vs the twin's (autograd sums the output gradient over the
    # masked positions in the gradient's dtype, fp32 accumulation, one rounding; the kernel sums in fp32
    # in another order and rounds once to the mask token's dtype). fp32: <= ~300 N(0,1) terms, partial
    # sums up to ~|70| (ulp 7.6e-6); measured 1.3e-5 at |72|, 1e-4 leaves ~10x margin.
    ("triton_mask_token_grad", torch.float32): (1e-4, 1e-6),
    # both sums rounded to bf16: one bf16 ulp apart at most, <= 2^-7 of the value.
    ("triton_mask_token_grad", torch.bfloat16): (1e-4, 2 ** -7),
    # the same for fp16: one fp16 ulp <= 2^-10 of the value.
    ("triton_mask_token_grad", torch.float16): (1e-4, 2 ** -10),
}


def tol(name, dtype=torch.float32):
    atol, rtol = TOLERANCES[(name, dtype)]
    return {"atol": atol, "rtol": rtol}
