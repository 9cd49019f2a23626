"""The timed train step is compiled once per (variant, batch size) and never falls back to eager unseen:
bench_train resets dynamo for each, and a recompile limit, a graph break or a compile while timing is an
error (bench.harness.CompileWatch). On the CPU with the aot_eager backend (dynamo and AOT autograd without
inductor's code generation): the bookkeeping is the same as with inductor on a GPU."""

import pytest
import torch

from bench import bench_train
from bench.harness import CompileFallback, CompileWatch
from tests.helpers import tiny_model

TINY = tiny_model(depths=(1, 1, 2))


def _run(batches):
    return bench_train.run(
        TINY, batches, ["reference", "engine"], ["synthetic"], torch.device("cpu"), reps=2, warmup=1,
        compile_backend="aot_eager",
    )  # fmt: skip


@pytest.fixture
def tight_recompile_limit(monkeypatch):
    """Each block's forward is compiled for two shapes per batch size (the conv block for stages 1 and 2,
    the ViT block for the encoder and the decoder): a limit of 2 leaves no room for another batch size, so
    only a reset per (variant, batch size) keeps it. (The real limit, 8, ran out at the third one.) The
    masking kernels' twins, not the interpreter, between the blocks: faster, the same compiles."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with torch._dynamo.config.patch(recompile_limit=2):
        yield


@pytest.mark.slow
def test_engine_step_compiles_once_per_variant_and_batch_size(tight_recompile_limit):
    rows = _run([2, 3])
    assert [(r["variant"], r["batch"]) for r in rows] == [
        ("reference", 2),
        ("engine", 2),
        ("reference", 3),
        ("engine", 3),
    ]
    assert not [r for r in rows if "error" in r]
    engine = [r for r in rows if r["variant"] == "engine"]
    # the same graphs compiled afresh at each batch size (conv stage 1, stage 2, the ViT blocks, the decoder)
    assert engine[0]["compiled_graphs"] == engine[1]["compiled_graphs"] >= 4
    assert all(r["compiled"] == "aot_eager" and r["graph_breaks"] == 0 for r in engine)
    assert all(r["compiles_while_timing"] == 0 and r["img_per_s"] > 0 for r in rows)
    assert all(r["compiled_graphs"] == 0 and r["compiled"] == "no" for r in rows if r["variant"] == "reference")


@pytest.mark.slow
def test_without_the_reset_the_recompile_limit_fails_loudly(tight_recompile_limit, monkeypatch):
    """What the reset prevents: the second batch size hits the limit; that is an error row, not a step
    that silently runs some blocks eagerly."""
    torch._dynamo.reset()  # nothing left from earlier tests; from here on the benchmark's resets do nothing
    monkeypatch.setattr(torch._dynamo, "reset", lambda: None)
    rows = _run([2, 3])
    assert "error" not in rows[1]
    [failed] = [r for r in rows if "error" in r]
    assert (failed["variant"], failed["batch"]) == ("engine", 3) and "compile fallback" in failed["error"]


def test_a_compile_while_timing_is_an_error():
    with CompileWatch("toy") as watch:
        double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
        double(torch.ones(3))
        with pytest.raises(CompileFallback, match="expected no compile while timing"):
            with watch.timing():
                double(torch.ones(4))  # a new shape: a recompile while timing


def test_a_graph_break_is_an_error_before_timing():
    def broken(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    with CompileWatch("toy") as watch:
        torch.compile(broken, backend="eager")(torch.ones(3))
        assert watch.stats()["graph_breaks"] >= 1
        with pytest.raises(CompileFallback, match="graph break"):
            with watch.timing():
                pass
