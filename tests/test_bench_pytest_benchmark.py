"""``python -m pytest bench --benchmark-only``: the kernel and train-step cases as pytest-benchmark tests,
saved as JSON that ``--benchmark-compare`` reads (on the CPU: tiny shapes under the interpreter)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 25 s on 2 cores
def test_benchmarks_run_and_save(tmp_path):
    pytest.importorskip("pytest_benchmark", reason="pip install pytest-benchmark (in the test extra)")
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for op in REGISTRY:  # every registered kernel is a benchmark, in each implementation
        for implementation in ("triton", "eager", "compiled_eager"):
            case = rf"test_kernel\[{op}-smoke_C3(_T\d)?-{implementation}-fwd\]"  # depthwise: one case per tile size
            assert re.search(case, collected), (op, implementation)
    # one op in full (the rest time the same code), and the train step
    saved = tmp_path / "run.json"
    command = [
        sys.executable, "-m", "pytest", "bench", "--benchmark-only", "-q", "-p", "no:cacheprovider",
        "-k", "token_gather-smoke or train_step",
        "--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off",
        f"--benchmark-json={saved}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    benchmarks = json.loads(saved.read_text())["benchmarks"]
    kernels = [b for b in benchmarks if b["name"].startswith("test_kernel[")]
    assert {(b["extra_info"]["implementation"], b["extra_info"]["direction"]) for b in kernels} == {
        (implementation, direction)
        for implementation in ("triton", "eager", "compiled_eager")
        for direction in ("fwd", "fwd+bwd")
    }
    assert {b["group"] for b in kernels} == {"token_gather smoke_C3 fwd", "token_gather smoke_C3 fwd+bwd"}
    train = {b["extra_info"]["variant"]: b for b in benchmarks if b["group"] == "train step"}
    assert set(train) == {"reference", "engine_default", "engine", "engine_nocompile", "engine_cuda_graphs"}
    assert train["engine"]["extra_info"]["compiled_graphs"] > 0 and train["reference"]["extra_info"]["img_per_s"] > 0
    assert all(b["stats"]["median"] > 0 for b in benchmarks)
