"""The Triton half of the kernel plumbing: the launch rule, and the ``@triton.jit`` helpers several kernels
call. Importing it needs Triton; the torch-only half (errors, dtypes, outputs, guards) is kernels/_common.py.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def use_triton(t: torch.Tensor, kernel) -> bool:
    """True -> the Triton kernel runs; False -> the eager twin in ``kernels.reference``.

    Triton runs for a CUDA tensor, and for a CPU tensor only while ``TRITON_INTERPRET=1`` is set (the
    Triton interpreter, used by the tests). Triton reads that variable when a kernel is defined, so it
    must be set before the kernel modules are imported (``tests/conftest.py`` does); a CPU tensor whose
    ``kernel`` was defined compiled (the variable set too late) also goes to the twin rather than crash.
    Any other CPU call goes to the twin, so ``torch.compile`` on a CPU machine traces and runs it.
    """
    if t.is_cuda:
        return True
    interpreted = not isinstance(kernel, triton.runtime.JITFunction)
    return t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and interpreted


@triton.jit
def to_dtype_rtne(x_fp32, dtype: tl.constexpr):
    """fp32 -> ``dtype`` rounding to nearest-even; bf16 by integer ops.

    Under the Triton interpreter (CPU tests) fp32 -> bf16 conversion truncates and bf16 arithmetic is wrong,
    so the kernels compute in fp32 and round with this at the store: exact on the interpreter and the GPU."""
    if dtype == tl.bfloat16:
        bits = x_fp32.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x_fp32 != x_fp32, (bits >> 16) | 0x40, rounded)  # NaN stays a quiet NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x_fp32.to(dtype)
