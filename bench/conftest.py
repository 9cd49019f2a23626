"""The benchmarks as pytest-benchmark tests (``bench/test_benchmarks.py``), so runs can be saved and compared
across commits:

    python -m pytest bench --benchmark-only                                  # GPU: the training shape
    python -m pytest bench --benchmark-only --benchmark-autosave             # saved under .benchmarks/
    python -m pytest bench --benchmark-only --benchmark-compare              # against the last saved run
    python -m pytest bench --benchmark-only --bench-shapes full --bench-batch 64

On a CPU they run under Triton's interpreter at tiny shapes (what CI checks): numbers that say only
that the code runs. The JSON/CSV of record still come from the harness (``bench/run_checks.py``,
``bench/bench_*.py``); these tests reuse its cases, checks and compile bookkeeping.
"""

import os

import torch

if not torch.cuda.is_available():  # before any Triton kernel is defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("infmae benchmarks")
    group.addoption(
        "--bench-shapes",
        default=None,
        help="kernel shape set of bench/bench_kernels.py SHAPES (default: train on a GPU, tiny on a CPU)",
    )
    group.addoption("--bench-batch", type=int, default=None, help="train-step batch (default: 256 GPU, 2 CPU)")
    group.addoption("--bench-backend", default=None, help="torch.compile backend (inductor on a GPU, aot_eager CPU)")


@pytest.fixture(scope="session")
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def backend(request, device):
    return request.config.getoption("--bench-backend") or ("inductor" if device.type == "cuda" else "aot_eager")


@pytest.fixture(scope="session")
def train_batch(request, device):
    return request.config.getoption("--bench-batch") or (256 if device.type == "cuda" else 2)
