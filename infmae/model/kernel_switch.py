"""One switch for every kernel of the model: ``kernels="auto" | "triton" | "reference"``.

It picks all five ops together (``OP_NAMES``: intensity pooling, the sort-and-stride mask, the token
gather and restore, and the sparse encoder's depthwise tile conv), so no model code chooses an op apart.

``reference`` is the eager twin in ``kernels.reference`` (the specification). ``triton`` is the fast path
and is an error where it cannot run, never a silent fallback. ``auto`` takes Triton where CUDA and the
Triton kernels are there, otherwise the twin, and logs its choice once.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import SimpleNamespace

import torch

from kernels import reference

log = logging.getLogger(__name__)
_logged_auto: set[str] = set()

OP_NAMES = ("intensity_pool", "sort_stride_mask", "token_gather_many", "token_restore", "depthwise_conv5x5_tiles")
"""The ops of a resolved namespace: the names of the twins in ``kernels.reference`` and of the Triton ops in
``kernels.triton_ops`` (both registered in ``kernels.registry.REGISTRY``)."""


def _reference_ops() -> SimpleNamespace:
    return SimpleNamespace(name="reference", **{op: getattr(reference, op) for op in OP_NAMES})


def triton_unavailable_reason(allow_interpreter: bool = True) -> str | None:
    """None when the Triton kernels can run here, else why not (with what to do about it). The CPU
    interpreter (TRITON_INTERPRET=1) counts only for an explicit ``kernels="triton"`` (tests)."""
    interpreted = allow_interpreter and os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpreted:
        return "CUDA is not available (on a CPU the kernels run only under TRITON_INTERPRET=1, for tests)"
    try:
        importlib.import_module("triton")
    except ImportError:
        return "triton is not installed; pip install triton==3.7.1"
    try:
        importlib.import_module("kernels.triton_ops")
    except ImportError as error:
        return f"the Triton kernels could not be imported ({error})"
    return None


def resolve_kernels(choice: str) -> SimpleNamespace:
    """-> a namespace with the ops of ``OP_NAMES`` (docs/specification.md, 'Kernels') and ``name``."""
    if choice == "reference":
        return _reference_ops()
    if choice not in ("auto", "triton"):
        raise ValueError(f"kernels: expected 'auto', 'triton' or 'reference', got {choice!r}; 'auto' is the default")
    reason = triton_unavailable_reason(allow_interpreter=(choice == "triton"))
    if reason is None:
        module = importlib.import_module("kernels.triton_ops")
        ops = SimpleNamespace(name="triton", **{op: getattr(module, op) for op in OP_NAMES})
    elif choice == "triton":
        raise RuntimeError(
            f"kernels: expected the Triton kernels to run, got: {reason}; "
            "use kernels='reference' or 'auto' on this machine"
        )
    else:
        ops = _reference_ops()
    if choice == "auto" and ops.name not in _logged_auto:
        _logged_auto.add(ops.name)
        log.info("kernels=auto: using the %s kernels%s", ops.name, "" if reason is None else f" ({reason})")
    return ops
