"""Where the kernel tests run.

On this CPU machine (and in CI) the Triton kernels run under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1). On a GPU machine the same tests run compiled on the GPU:

    TRITON_INTERPRET=0 python -m pytest -m kernel_device

Modules marked ``kernel_device`` then create their tensors on ``KERNEL_DEVICE`` (conftest.py makes it
the default device and draws the ``generator`` fixture there). Without this, a GPU run would hand the
launchers CPU tensors, which go to the eager twin: twin against twin, a test that cannot fail.
"""

import os

import pytest
import torch

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"

# Tests of the CPU launch rule (interpreter -> kernel, no interpreter -> twin): a CUDA tensor always
# launches the kernel, so on the GPU run there is nothing for them to check.
cpu_dispatch_only = pytest.mark.skipif(
    KERNEL_DEVICE != "cpu", reason="checks the CPU launch rule; CUDA tensors always launch the kernel"
)
