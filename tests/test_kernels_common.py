"""The kernels' shared plumbing (kernels/_common.py): the error format, the dtype rule, output checks, and the
host-sync guards as one object (with the old per-module flag names read and written through)."""

import re

import pytest
import torch

import kernels
import kernels.depthwise
import kernels.tokens
from kernels import _common, testing
from kernels.registry import REGISTRY

ERROR = r"op: expected .+, got .+; .+"


def test_fail_and_check_raise_the_house_format():
    with pytest.raises(ValueError, match=r"^op: expected a thing, got another; do this$"):
        _common.fail("op", "a thing", "another", "do this")
    with pytest.raises(TypeError, match=ERROR):
        _common.check(False, "op", "a thing", "another", "do this", TypeError)
    _common.check(True, "op", "a thing", "another", "do this")
    with pytest.raises(TypeError, match=r"^op: expected x as a torch.Tensor, got list; pass a tensor$"):
        _common.check_tensor("op", "x", [1.0], "pass a tensor")


def test_the_dtype_rule():
    assert _common.dtype_names(_common.FLOAT_DTYPES) == "float32, bfloat16 or float16"
    assert _common.dtype_names((torch.float32,)) == "float32"
    for dtype in _common.FLOAT_DTYPES:
        _common.check_float("op", "x", torch.zeros(1, dtype=dtype))
    with pytest.raises(_common.KernelDtypeError) as info:
        _common.check_float("op", "x", torch.zeros(1, dtype=torch.float64))
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    message = "op: expected x of dtype float32, bfloat16 or float16, got torch.float64; convert with x.float()"
    assert str(info.value) == message
    _common.check_float("op", "x", torch.zeros(1, dtype=torch.float64), _common.FLOAT_DTYPES + (torch.float64,))


def test_output_checks():
    out = torch.empty(3, 2).t()  # any strides
    assert _common.check_out("op", "out", out, (2, 3), torch.float32, "cpu") is out
    for bad in (torch.empty(2, 4), torch.empty(2, 3, dtype=torch.float16), torch.empty(2, 3, device="meta")):
        with pytest.raises(ValueError, match=r"^op: expected out of shape \(2, 3\), torch.float32, on cpu, got "):
            _common.check_out("op", "out", bad, (2, 3), torch.float32, "cpu")
    for bad in (None, [0.0]):
        with pytest.raises(TypeError, match=ERROR):
            _common.check_out("op", "out", bad, (2, 3), torch.float32, "cpu")
    new = _common.out_or_new("op", "out", None, (2, 3), torch.float16, "cpu")
    assert new.shape == (2, 3) and new.dtype == torch.float16 and new.is_contiguous()
    assert _common.out_list("op", None, 2) == [None, None]
    with pytest.raises(ValueError, match=r"^op: expected out as a sequence of 2 tensors, got 3 items; "):
        _common.out_list("op", (None,) * 3, 2)


@pytest.fixture
def guards():
    """The process's guards, restored after the test."""
    saved = _common.HostSyncGuards(**vars(kernels.HOST_SYNC_GUARDS))
    yield kernels.HOST_SYNC_GUARDS
    for name, value in vars(saved).items():
        setattr(kernels.HOST_SYNC_GUARDS, name, value)


def test_host_sync_guards_are_one_object(guards):
    assert guards is _common.HOST_SYNC_GUARDS
    guards.check_ids = guards.check_neighbours = True
    with kernels.host_sync_guards_off():
        assert not guards.check_ids and not guards.check_neighbours
        with kernels.host_sync_guards_off():  # nested: restores what it found
            pass
        assert not guards.check_ids and not guards.check_neighbours
    assert guards.check_ids and guards.check_neighbours
    guards.check_neighbours = False  # restored as it was, guard by guard
    with pytest.raises(RuntimeError):
        with kernels.host_sync_guards_off():
            raise RuntimeError
    assert guards.check_ids and not guards.check_neighbours
    kernels.disable_host_sync_guards()
    assert not guards.check_ids and not guards.check_neighbours


def test_every_guard_is_turned_off(guards):
    """A guard is a field of HostSyncGuards, and both switches cover every field."""
    fields = set(vars(guards))
    assert fields == {"check_ids", "check_neighbours"}
    for name in fields:
        setattr(guards, name, True)
    with kernels.host_sync_guards_off():
        assert not any(vars(guards).values())
    assert all(vars(guards).values())


class _ReachedTheLaunch(Exception):
    pass


def test_the_neighbour_guard_is_consulted(guards, monkeypatch):
    tiles, weight = torch.randn(1, 3, 4, 4, 8), torch.randn(8, 1, 5, 5)
    table = torch.full((1, 3, 9), 3, dtype=torch.int64)  # index 3 of 3 tiles: out of range
    guards.check_neighbours = True
    with pytest.raises(ValueError, match=re.escape("expected neighbour indices in [-1, 3)")):
        testing.depthwise_conv5x5_tiles_forward(tiles, table, weight)

    def launch_rule(t):  # past the guard comes the launch rule: stop there (a bad table is never run)
        raise _ReachedTheLaunch

    monkeypatch.setattr(kernels.depthwise, "_use_triton", launch_rule)
    with kernels.host_sync_guards_off(), pytest.raises(_ReachedTheLaunch):
        testing.depthwise_conv5x5_tiles_forward(tiles, table, weight)


def test_public_ops_have_no_test_only_parameters():
    """``out=`` lives in kernels.testing only: every registered fast op has its twin's parameters, no more."""
    import inspect

    import kernels.triton_ops  # noqa: F401  (registers the ops)

    for pair in REGISTRY.values():
        assert "out" not in inspect.signature(pair.fast).parameters, pair.name
    for name in ("token_gather_forward", "token_restore_backward", "depthwise_conv5x5_tiles_forward"):
        assert not hasattr(kernels.tokens, name) and not hasattr(kernels.depthwise, name)
        assert callable(getattr(testing, name))
