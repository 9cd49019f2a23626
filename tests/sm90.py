"""Compile a Triton kernel for an H100 (sm_90) with the real compiler (PTX and ptxas, no GPU needed).

The interpreter accepts code the compiler rejects, so each kernel test file also compiles its kernel
this way, in a subprocess without TRITON_INTERPRET (the kernels must be defined compiled there)."""

import os
import pathlib
import subprocess
import sys

import pytest

# Prepended to every script: compile_sm90(kernel, pointers, constexprs) compiles one specialisation; the
# other arguments are i32 scalars (strides and sizes, as Triton specialises them below 2**31).
HELPER = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_sm90(kernel, pointers, constexprs, num_warps=4, expect="st.global"):
    assert isinstance(kernel, triton.runtime.JITFunction), "compiled, not interpreted"
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(pointers)
    signature.update({name: "constexpr" for name in constexprs})
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    assert expect in compiled.asm["ptx"], (kernel.__name__, pointers, constexprs)
"""


def assert_compiles_for_sm90(script: str, cache_dir) -> None:
    """Run ``script`` (which prints 'compiled' on success) in a fresh interpreter-free process, after
    ``HELPER``."""
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the repository first, then the caller's path (``PYTHONPATH=/other/triton pytest -k sm90`` checks another Triton)
    path = [str(pathlib.Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env.update(TRITON_CACHE_DIR=str(cache_dir), PYTHONPATH=os.pathsep.join(path))
    result = subprocess.run(
        [sys.executable, "-c", HELPER + script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
