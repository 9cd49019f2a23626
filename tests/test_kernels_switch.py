"""The registry (every fast op has its twin) and the model's kernels switch; the model trained with
the Triton ops (interpreter) against the reference; torch.compile of the masking + token path."""

import inspect
import logging

import pytest
import torch

import kernels.triton_ops as triton_ops
from infmae.config import ModelConfig
from infmae.model import kernel_switch
from infmae.model.infmae import InfMAE
from kernels import reference
from kernels.registry import REGISTRY, register
from tests.helpers import TINY_MODEL

TINY = dict(TINY_MODEL, img_size=(48, 64))


def test_every_fast_op_has_its_twin():
    exported = [name for name in triton_ops.__all__]
    assert exported and set(exported) <= set(REGISTRY)
    for pair in REGISTRY.values():
        assert getattr(reference, pair.twin.__name__) is pair.twin
        assert inspect.signature(pair.fast).parameters.keys() >= {
            p for p, v in inspect.signature(pair.twin).parameters.items() if v.default is inspect.Parameter.empty
        }
    assert set(kernel_switch.OP_NAMES) <= set(REGISTRY)


def test_an_op_without_a_twin_cannot_be_registered():
    with pytest.raises(ValueError, match="eager twin"):
        register("lonely_op", lambda x: x, None, has_backward=False)
    with pytest.raises(ValueError, match="eager twin"):
        register("fake_twin", lambda x: x, lambda x: x, has_backward=False)


def test_auto_takes_the_twin_without_cuda_and_logs_once(caplog, monkeypatch):
    monkeypatch.setattr(kernel_switch, "_logged_auto", set())
    with caplog.at_level(logging.INFO, logger="infmae.model.kernel_switch"):
        assert kernel_switch.resolve_kernels("auto").name == "reference"
        assert kernel_switch.resolve_kernels("auto").name == "reference"
    assert sum("kernels=auto" in r.getMessage() for r in caplog.records) == 1


def test_triton_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        kernel_switch.resolve_kernels("triton")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        InfMAE(ModelConfig(**TINY, kernels="triton"))


@pytest.mark.slow
def test_training_with_triton_ops_matches_the_reference():
    """Triton ops in training: a few steps from the same seed, same masks exactly, losses within tolerance."""
    histories = {}
    for choice in ("triton", "reference"):
        torch.manual_seed(0)
        model = InfMAE(ModelConfig(**TINY, kernels=choice))
        assert model.ops.name == choice
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        data = torch.Generator().manual_seed(1)
        history = []
        for _ in range(3):
            imgs = torch.randn(2, 3, 48, 64, generator=data)
            out = model(imgs)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            history.append((out.mask.clone(), out.ids_keep.clone(), out.loss.item()))
        histories[choice] = history
    for (mask_t, ids_t, loss_t), (mask_r, ids_r, loss_r) in zip(histories["triton"], histories["reference"]):
        assert torch.equal(mask_t, mask_r) and torch.equal(ids_t, ids_r)
        # fp32 scores and copies are exact up to summation order; Adam amplifies ulp differences a little
        assert loss_t == pytest.approx(loss_r, rel=1e-5, abs=1e-6)


def test_compiled_masking_and_token_path_has_no_graph_break():
    """No graph break: torch.compile(fullgraph=True) through the custom ops, forward and backward."""
    model = InfMAE(ModelConfig(**TINY, kernels="triton"))
    ops = model.ops

    def path(imgs, tokens, skip, decoder_tokens):
        masking = model.masking(imgs)
        x, s = ops.token_gather_many((tokens, skip), masking.ids_keep)
        restored = ops.token_restore(x + s, model.mask_token.reshape(-1)[:32], masking.ids_keep, tokens.shape[1])
        return restored, masking.visible_x4, masking.mask

    imgs = torch.randn(2, 3, 48, 64)
    tokens = torch.randn(2, 12, 32, requires_grad=True)
    skip = torch.randn(2, 12, 32, requires_grad=True)
    eager = path(imgs, tokens, skip, None)
    compiled = torch.compile(path, fullgraph=True, backend="aot_eager")(imgs, tokens, skip, None)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)
    compiled[0].sum().backward()
    assert tokens.grad is not None and torch.count_nonzero(tokens.grad) > 0


def test_the_switch_covers_every_model_op_including_the_depthwise_conv():
    """The sparse encoder takes its depthwise op from the switch, like the other four ops."""
    assert set(kernel_switch.OP_NAMES) == {
        "intensity_pool",
        "sort_stride_mask",
        "token_gather_many",
        "token_restore",
        "depthwise_conv5x5_tiles",
    }
    for choice, module in (("reference", reference), ("triton", triton_ops)):
        ops = kernel_switch.resolve_kernels(choice)
        for name in kernel_switch.OP_NAMES:
            assert getattr(ops, name) is getattr(module, name), (choice, name)
        model = InfMAE(ModelConfig(**TINY, kernels=choice, encoder="sparse"))
        assert model.ops.depthwise_conv5x5_tiles is module.depthwise_conv5x5_tiles
