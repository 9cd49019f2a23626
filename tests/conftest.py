"""Test setup. TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set here,
at import time, before the test modules import ``kernels``."""

import logging
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.device import KERNEL_DEVICE  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kernel_device: runs on KERNEL_DEVICE (the GPU when the interpreter is "
        "off and CUDA is there; see tests/device.py)",
    )


def _on_kernel_device(request) -> bool:
    return KERNEL_DEVICE != "cpu" and request.node.get_closest_marker("kernel_device") is not None


@pytest.fixture(autouse=True)
def kernel_default_device(request):
    """In ``kernel_device`` modules on a GPU run, tensors made without a device land on the GPU."""
    if not _on_kernel_device(request):
        yield
        return
    with torch.device(KERNEL_DEVICE):
        yield


@pytest.fixture
def generator(request):
    device = KERNEL_DEVICE if _on_kernel_device(request) else "cpu"
    return torch.Generator(device=device).manual_seed(1234)


@pytest.fixture(autouse=True)
def no_cli_log_handlers():
    """``infmae.cli.main`` installs console handlers bound to the test's captured stderr (and a run's
    train.log): drop them after each test, so no later test logs into a closed stream."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_infmae", False)]:
        root.removeHandler(handler)
        handler.close()
