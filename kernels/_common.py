"""The plumbing every kernel file shares: one error format, the dtype rule, output checks, the host-sync guards.

Torch only, like ``kernels.reference`` (which uses it too), so that ``import kernels`` and the twins work
where Triton is not installed. The Triton half of the plumbing (the launch rule, the ``@triton.jit``
helpers several kernels call) is ``kernels/_launch.py``.

Rules, the same in every kernel and twin:
- an error reads ``"<op>: expected <what>, got <actual>; <hint>"`` (``fail``, ``check``);
- a value that is not a tensor raises ``TypeError``; a float tensor of a dtype outside ``FLOAT_DTYPES``
  raises ``KernelDtypeError`` (a ``TypeError`` and a ``ValueError``); a wrong shape, value or device
  raises ``ValueError``;
- an output tensor handed in (``out=``, test entry points in ``kernels.testing``) must have exactly the
  result's shape, dtype and device, any strides (``check_out``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""The float dtypes every Triton kernel reads and writes (computing in fp32 inside)."""


class KernelDtypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: a ``TypeError``, and a ``ValueError`` too (what the twins raise)."""


# ---------------------------------------------------------------------------------------------
# errors and input checks
# ---------------------------------------------------------------------------------------------
def fail(op: str, expected: str, got: str, hint: str, error: type[Exception] = ValueError) -> NoReturn:
    """Raise ``error("<op>: expected <expected>, got <got>; <hint>")``."""
    raise error(f"{op}: expected {expected}, got {got}; {hint}")


def check(condition: bool, op: str, expected: str, got: str, hint: str, error: type[Exception] = ValueError) -> None:
    """``fail(...)`` unless ``condition``."""
    if not condition:
        fail(op, expected, got, hint, error)


def check_tensor(op: str, name: str, t, hint: str) -> None:
    """TypeError unless ``t`` is a tensor."""
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} as a torch.Tensor", type(t).__name__, hint, TypeError)


def dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    """``(float32, bfloat16, float16)`` -> ``"float32, bfloat16 or float16"``."""
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_float(op: str, name: str, t: torch.Tensor, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    """KernelDtypeError unless ``t.dtype`` is one of ``dtypes`` (the kernels' ``FLOAT_DTYPES`` by default)."""
    if t.dtype not in dtypes:
        fail(
            op, f"{name} of dtype {dtype_names(dtypes)}", str(t.dtype), f"convert with {name}.float()", KernelDtypeError
        )


# ---------------------------------------------------------------------------------------------
# output tensors
# ---------------------------------------------------------------------------------------------
def check_out(op: str, name: str, out, shape: Sequence[int], dtype: torch.dtype, device) -> torch.Tensor:
    """``out`` if it is a tensor of exactly ``shape``, ``dtype`` and ``device`` (any strides); else TypeError
    (not a tensor, None included) or ValueError."""
    shape, device = tuple(shape), torch.device(device)
    if not isinstance(out, torch.Tensor):
        fail(op, f"{name} as a torch.Tensor", type(out).__name__, f"pass a {dtype} tensor of shape {shape}", TypeError)
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        fail(
            op,
            f"{name} of shape {shape}, {dtype}, on {device}",
            f"shape {tuple(out.shape)}, {out.dtype}, on {out.device}",
            "pass a tensor of exactly that shape, dtype and device (any strides)",
        )
    return out


def out_or_new(op: str, name: str, out, shape: Sequence[int], dtype: torch.dtype, device) -> torch.Tensor:
    """A new contiguous tensor when ``out`` is None, else ``check_out(...)``."""
    if out is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    return check_out(op, name, out, shape, dtype, device)


def out_list(op: str, out, count: int) -> list:
    """``out`` (None or a sequence of ``count`` outputs, each None or a tensor) as a list of ``count``."""
    if out is None:
        return [None] * count
    if not isinstance(out, (list, tuple)) or len(out) != count:
        got = f"{len(out)} items" if isinstance(out, (list, tuple)) else type(out).__name__
        fail(op, f"out as a sequence of {count} tensors", got, "pass one output per result (None to allocate it)")
    return list(out)


# ---------------------------------------------------------------------------------------------
# host-sync guards
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class HostSyncGuards:
    """The launchers' debugging guards, one flag each. A guard reads its input back to the host (a device
    sync per call) to check values the model produces correctly by construction. On by default for direct
    use; the trainer turns them off for good (``disable``), timed code inside a block (``off``). A new guard
    is a new field: ``disable`` and ``off`` cover every field."""

    check_ids: bool = True
    """kernels/tokens.py: every ``ids_keep`` row holds distinct values in [0, L) (ids from sort_stride_mask).
    Without it an id outside [0, L) makes the gather read out of bounds, and a repeated id makes the backward
    keep one of the repeated rows' gradients instead of their sum."""

    check_neighbours: bool = True
    """kernels/depthwise.py: every neighbour index is in [-1, K) (tables from tile_neighbours). Without it
    an index out of range reads out of bounds."""

    def disable(self) -> None:
        """Every guard off."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, False)

    @contextmanager
    def off(self) -> Iterator[None]:
        """Every guard off inside the block, restored after."""
        saved = dataclasses.replace(self)
        self.disable()
        try:
            yield
        finally:
            for field in dataclasses.fields(self):
                setattr(self, field.name, getattr(saved, field.name))


HOST_SYNC_GUARDS = HostSyncGuards()
"""The one set of guards the kernels consult (``kernels.HOST_SYNC_GUARDS``)."""


def disable_host_sync_guards() -> None:
    """Turn every guard off for the rest of the process (the trainer: no host sync on every step)."""
    HOST_SYNC_GUARDS.disable()


@contextmanager
def host_sync_guards_off() -> Iterator[None]:
    """Every guard off inside the block (timed code), restored after."""
    with HOST_SYNC_GUARDS.off():
        yield
