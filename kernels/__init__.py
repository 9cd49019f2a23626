"""InfMAE kernels: Triton fast paths and their eager twins (``kernels.reference``, the specification).

Depends on torch (and Triton for the fast paths) only, never on ``infmae``.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager

from . import reference

__all__ = ["reference", "disable_host_sync_guards", "host_sync_guards_off"]

# The launchers' debugging guards: each reads its input back to the host (a sync per call) to check
# values the model produces correctly by construction (ids from sort_stride_mask, neighbour tables from
# tile_neighbours). On by default for direct use; the trainer and the benchmarks turn them off.
_HOST_SYNC_GUARDS = {"kernels.tokens": "CHECK_IDS", "kernels.depthwise": "CHECK_NEIGHBOURS"}


def disable_host_sync_guards() -> None:
    """Turn every guard off for the rest of the process (the trainer: no host sync on every step)."""
    for module, flag in _HOST_SYNC_GUARDS.items():
        setattr(importlib.import_module(module), flag, False)


@contextmanager
def host_sync_guards_off():
    """Every guard off inside the block (timed code), restored after; a kernel module not imported yet
    has nothing to turn off (and is not imported for it)."""
    saved = [
        (sys.modules[module], flag, getattr(sys.modules[module], flag))
        for module, flag in _HOST_SYNC_GUARDS.items()
        if module in sys.modules
    ]
    for module, flag, _ in saved:
        setattr(module, flag, False)
    try:
        yield
    finally:
        for module, flag, value in saved:
            setattr(module, flag, value)
