"""Compile a Triton kernel for an A100 (sm_80) and an H100/H200 (sm_90) with the real compiler (PTX and
ptxas, no GPU needed).

The interpreter accepts code the compiler rejects, so each kernel test file also compiles its kernels this
way, once per target in ``GPU_TARGETS`` (``-k sm80`` or ``-k sm90`` picks one target), in
a subprocess without TRITON_INTERPRET (the kernels must be defined compiled there). A100s are what our
users benchmark on; the H100/H200 is what the engine is tuned for."""

import os
import pathlib
import subprocess
import sys

import pytest

# test id -> compute capability
GPU_TARGETS = {"sm80": 80, "sm90": 90}

# Prepended to every script: compile_kernel(kernel, pointers, constexprs) compiles one specialisation for
# CAPABILITY and returns it; the other arguments are i32 scalars (strides and sizes, as Triton specialises them
# below 2**31). registers_per_thread(compiled): ptxas's count, without a GPU.
HELPER = r"""
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CAPABILITY = int(os.environ["INFMAE_TEST_CAPABILITY"])


def compile_kernel(kernel, pointers, constexprs, num_warps=4, expect="st.global"):
    assert isinstance(kernel, triton.runtime.JITFunction), "compiled, not interpreted"
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(pointers)
    signature.update({name: "constexpr" for name in constexprs})
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", CAPABILITY, 32), options={"num_warps": num_warps})
    ptx = compiled.asm["ptx"]
    assert f".target sm_{CAPABILITY}" in ptx, (kernel.__name__, "compiled for another target")
    assert expect in ptx, (kernel.__name__, pointers, constexprs)
    return compiled


# ptxas's register count per thread, read from the cubin with Triton's bundled cuobjdump: the compiled
# kernel's n_regs is only filled in when a GPU driver loads it (CompiledKernel._init_handles), not by the compile.
def registers_per_thread(compiled):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", cubin.name], capture_output=True, text=True, check=True)
    found = re.search(r"REG:(\d+)", usage.stdout)
    assert found, ("no register count in cuobjdump's output", usage.stdout[-2000:])
    return int(found.group(1))
"""


def assert_compiles_for(script: str, cache_dir, capability: int) -> None:
    """Run ``script`` (which prints 'compiled' on success) in a fresh interpreter-free process, after
    ``HELPER``, compiling for ``capability`` (80, 90)."""
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the repository first, then the caller's path (``PYTHONPATH=/other/triton pytest -k sm90`` checks another Triton)
    path = [str(pathlib.Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env.update(
        TRITON_CACHE_DIR=str(cache_dir), PYTHONPATH=os.pathsep.join(path), INFMAE_TEST_CAPABILITY=str(capability)
    )
    result = subprocess.run(
        [sys.executable, "-c", HELPER + script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
