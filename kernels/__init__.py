"""InfMAE kernels: Triton fast paths and their eager twins (``kernels.reference``, the specification).

Depends on torch (and Triton for the fast paths) only, never on ``infmae``. Importing this package needs
torch only; ``kernels.triton_ops`` (the registered fast ops) needs Triton.

The launchers' host-sync guards (``HOST_SYNC_GUARDS``, see kernels/_common.py) are on by default for
direct use; the trainer calls ``disable_host_sync_guards()``, timed code runs inside
``host_sync_guards_off()``. Test-only entry points (outputs written into given tensors) are in
``kernels.testing``.
"""

from __future__ import annotations

from . import reference
from ._common import HOST_SYNC_GUARDS, disable_host_sync_guards, host_sync_guards_off

__all__ = ["reference", "HOST_SYNC_GUARDS", "disable_host_sync_guards", "host_sync_guards_off"]
