"""The launch rule shared by every Triton op: which path runs for a given tensor."""

from __future__ import annotations

import os

import torch
import triton


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
