"""Every Triton op paired with its eager twin (its specification).

Tests and benchmarks iterate ``REGISTRY``, so a kernel is covered by construction; registering an op
without a twin is an error, and a test fails if a fast op exported by ``kernels.triton_ops`` is missing
here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kernels import reference
from kernels._common import fail


@dataclass(frozen=True)
class KernelPair:
    name: str
    fast: Callable
    twin: Callable
    has_backward: bool
    """The op has a gradient (its backward is a kernel too, compared with autograd of the twin)."""


REGISTRY: dict[str, KernelPair] = {}


def register(name: str, fast: Callable, twin: Callable | None, has_backward: bool) -> KernelPair:
    op = "kernels.registry"
    if twin is None or getattr(reference, getattr(twin, "__name__", ""), None) is not twin:
        fail(
            op,
            f"an eager twin from kernels/reference.py for {name!r}",
            repr(twin),
            "write the twin first, it is the kernel's specification",
        )
    if name in REGISTRY:
        fail(op, "a new op name", f"{name!r} twice", "pick another name")
    REGISTRY[name] = KernelPair(name, fast, twin, has_backward)
    return REGISTRY[name]
