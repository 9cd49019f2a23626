"""Compile a Triton kernel for an H100 (sm_90) with the real compiler (PTX and ptxas, no GPU needed).

The interpreter accepts code the compiler rejects, so each kernel test file also compiles its kernel
this way, in a subprocess without TRITON_INTERPRET (the kernels must be defined compiled there)."""
import os
import pathlib
import subprocess
import sys

import pytest


def assert_compiles_for_sm90(script: str, cache_dir) -> None:
    """Run ``script`` (which prints 'compiled' on success) in a fresh interpreter-free process."""
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(cache_dir), PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
