"""The one tolerance table of the test suite: (atol, rtol) per comparison, each with its reason.

Integer outputs (ids, masks, visibility maps) are never here: they are compared exactly.
"""

import torch

TOLERANCES = {
    # the engine's uint16 wire format (infmae.data.batch.quantize_unit) vs the reference float32 batch: the
    # [0, 1] values are rounded to 1/65535, i.e. 0.5/65535/std = 3.8e-5 after normalisation by std 0.2,
    # plus float32 rounding of y*std+mean and of the affine (~1e-6 at |value| <= 3): 4e-5 absolute.
    ("wire_uint16", torch.float32): (4e-5, 0.0),
    # fp32 einsum vs conv2d over 256*C products of N(0,1) values: scores ~ sqrt(768) ~ 28 in size, and
    # two summation orders differ by a few ulp of the partial sums (~2e-6 each): 1e-4 absolute.
    ("intensity_pool", torch.float32): (1e-4, 1e-5),
    # bf16/fp16 inputs are upcast exactly to fp32 before the sum, so the same fp32 summation bound holds.
    ("intensity_pool", torch.bfloat16): (1e-4, 1e-5),
    ("intensity_pool", torch.float16): (1e-4, 1e-5),
    # averaging the 768-channel conv's outputs vs one averaged filter: reassociation of 768*768 fp32 terms.
    ("official_score", torch.float32): (1e-5, 1e-4),
    # encoder of a 3->1 channel converted model: summing 3 channel weights first reorders fp32 adds
    # inside the first conv; the difference then passes through ~15 layers (required: within 1e-5).
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
    ("triton_mask_token_grad", torch.bfloat16): (1e-4, 2**-7),
    # the same for fp16: one fp16 ulp <= 2^-10 of the value.
    ("triton_mask_token_grad", torch.float16): (1e-4, 2**-10),
    # Triton depthwise tile conv vs its twin run in fp32 on the same values (forward, input, weight and bias
    # gradients). fp32: both sum in fp32 in different orders; the weight and bias gradients sum up to a few
    # hundred N(0,1) products (|value| ~ 20-40, ulp ~ 4e-6; 7.6e-6 measured): 1e-4 absolute.
    ("triton_depthwise_tiles", torch.float32): (1e-4, 1e-5),
    # 16-bit outputs: the kernel rounds its fp32 sum once (nearest-even): within half an ulp of the fp32
    # result, 2^-9 (bf16) and 2^-12 (fp16) relative, plus the fp32 order differences above; 2x margin.
    ("triton_depthwise_tiles", torch.bfloat16): (1e-4, 2**-8),
    ("triton_depthwise_tiles", torch.float16): (1e-4, 2**-11),
    # sparse encoder (visible tiles) vs the dense encoder, model level. fp64: the same products summed in
    # another order (matmul vs conv), ~1e-15 measured.
    ("sparse_encoder", torch.float64): (1e-12, 1e-10),
    # gradients, atol = 1e-8 * max|g| of the tensor: ~3e-15 measured, except with nothing masked (loss = mean
    # latent^2) where the stage-1 gradients are sums of ~B*L*16 terms that nearly cancel (4e-10 measured).
    ("sparse_encoder_grad", torch.float64): (1e-8, 0.0),
    # fp32: matmul vs conv summation order through ~20 layers; latents (LayerNorm output, O(1)) measured
    # <= 3.6e-6 apart at 224 px with the released widths: 3e-5 leaves ~10x margin.
    ("sparse_encoder", torch.float32): (3e-5, 1e-5),
    # gradients: differences measured <= 1.8e-6 of the tensor's largest |gradient| (the bias and weight
    # gradients are sums over up to B*L*16 pixels); bound 2e-5 of that scale (atol = 2e-5 * max|g|).
    ("sparse_encoder_grad", torch.float32): (2e-5, 0.0),
    # bf16 autocast: both paths round every matmul output to bf16 (eps 2^-8 = 3.9e-3), but in different
    # orders, and the differences pass through ~10 layers: a few bf16 ulps of O(1) LayerNorm outputs.
    ("sparse_encoder", torch.bfloat16): (6e-2, 2e-2),
    # a few AdamW steps, dense vs sparse: ulp-level gradient differences, amplified a little by Adam's
    # normalisation (as for the Triton ops' training test): relative 1e-5 on the loss.
    ("sparse_training_loss", torch.float32): (0.0, 1e-5),
    # 2 ranks x B images (FSDP2 or DDP, gloo, fp32) vs 1 process x 2B: the same images and mask counts,
    # but each rank's gradients are summed over B images and then averaged across ranks (another fp32
    # summation order). Measured over 3 steps of the tiny test model: losses 1.1e-7 relative; parameters
    # 1.5e-6 absolute at step 3 (AdamW's g / sqrt(v) amplifies ulp-level gradient differences of
    # near-zero entries, so a relative bound means nothing there: absolute only). ~10x margin each.
    ("distributed_loss", torch.float32): (0.0, 2e-6),
    ("distributed_params", torch.float32): (1e-5, 0.0),
    # the logged global gradient norm: under FSDP a sum of squares of each rank's shards, all-reduced
    # (vs one process's norm of norms). Measured 2.8e-7 relative (DDP 7.5e-8); ~10x margin.
    ("distributed_grad_norm", torch.float32): (0.0, 3e-6),
    # k micro-batches accumulated (loss / k, summed by autograd) vs one k-times larger batch: the same
    # images and mask counts, another fp32 summation order. Measured: losses 1.4e-7 relative,
    # parameters 1.3e-6 absolute at step 3 (same reasoning as above).
    ("accumulation_loss", torch.float32): (0.0, 2e-6),
    ("accumulation_params", torch.float32): (1e-5, 0.0),
    # DALI vs the reference loader on the same files, crops and flips (normalised units: 1/std = 5 per
    # unit of [0, 1]). The decode is exact (uint16, tested alone) and the mapping is the same float32
    # formula; what differs is the bicubic resize at the image border: both use the a = -0.5 cubic (the
    # 1-D kernels were checked equal on an impulse), but at the border DALI repeats the edge pixel while
    # PyTorch's antialiased path drops the outside taps and renormalises. So the error sits within ~2
    # source pixels of the crop's edge. Max: 0.11 measured on synthetic IR scenes -> 0.2 (0.04 of the
    # [0, 1] range); 0.22 on uniform noise (every pixel an edge, full contrast) -> 0.3. Mean over a batch:
    # IR scenes 1.3e-4 measured at 96x96, 1.0e-3 at a 32x32 output (the border rows are a quarter of it)
    # -> 2e-3; uniform noise cropped from 40x23 sources (border pixels are a large share of an upscaled
    # crop) 8.9e-3 measured -> 1.2e-2.
    ("dali_parity_max", torch.float32): (0.2, 0.0),
    ("dali_parity_mean", torch.float32): (2e-3, 0.0),
    ("dali_parity_max_noise", torch.float32): (0.3, 0.0),
    ("dali_parity_mean_noise", torch.float32): (1.2e-2, 0.0),
    # the engine's channels-last conv stages vs the NCHW reference, fp32: the same products; an NHWC conv
    # kernel may sum them in another order (ulp level). Measured exactly equal on the CPU (oneDNN) for the
    # demo model's loss and every gradient; bounds: loss 1e-6 relative, gradients 1e-6 * max|g| (absolute).
    ("channels_last_loss", torch.float32): (0.0, 1e-6),
    ("channels_last_grad", torch.float32): (1e-6, 0.0),
    # parameters after 3 trainer steps, channels-last vs reference: AdamW's g / sqrt(v) amplifies ulp-level
    # gradient differences of near-zero entries (as for accumulation_params): absolute only, 1e-5.
    # Measured equal on the CPU.
    ("channels_last_params", torch.float32): (1e-5, 0.0),
    # per-block torch.compile (inductor, CPU) vs the eager step: inductor fuses and reorders fp32 sums
    # (LayerNorm statistics, GELU, bias adds). Demo model, one step: loss 1.2e-7 apart (|loss| ~ 1),
    # gradients 1.2e-6 of the tensor's max|g| (dense and sparse): bounds 1e-5 relative and 2e-5 * max|g|.
    ("compiled_step_loss", torch.float32): (0.0, 1e-5),
    ("compiled_step_grad", torch.float32): (2e-5, 0.0),
    # the engine's stages under bf16 autocast (channels-last, bf16 residual stream) vs the fp32 reference:
    # the encoder latent (LayerNorm output, O(1)) after ~10 layers that each round to bf16 (eps 2^-8 = 3.9e-3).
    # Measured max 2.6e-2 (dense) and 2.8e-2 (sparse) at the demo sizes; ~3x margin. The masks are compared
    # exactly (the score and sort stay fp32).
    ("engine_bf16_latent", torch.bfloat16): (8e-2, 2e-2),
}


def tol(name, dtype=torch.float32):
    atol, rtol = TOLERANCES[(name, dtype)]
    return {"atol": atol, "rtol": rtol}
