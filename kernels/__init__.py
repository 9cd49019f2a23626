"""InfMAE kernels: Triton fast paths and their eager twins (``kernels.reference``, the specification).

Depends on torch (and Triton for the fast paths) only, never on ``infmae``.
"""
from . import reference

__all__ = ["reference"]
