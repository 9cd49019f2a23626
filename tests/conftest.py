"""Test setup. TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set here,
at import time, before the test modules import ``kernels``."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
