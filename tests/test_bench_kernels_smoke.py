"""bench/bench_kernels.py runs (CPU smoke mode: interpreter, tiny shapes) and covers every registered op."""

import json

import pytest

from bench import bench_kernels
from kernels.registry import REGISTRY


@pytest.mark.slow
def test_kernel_benchmark_smoke_run_covers_the_registry(tmp_path):
    rows = bench_kernels.run(smoke=True, compile_twin=False, out_dir=tmp_path, reps=1)
    assert set(REGISTRY) <= {row["op"] for row in rows}
    assert all(row["triton_ms"] > 0 and row["eager_ms"] > 0 for row in rows)
    [json_file] = tmp_path.glob("bench_kernels_smoke_*.json")
    saved = json.loads(json_file.read_text())
    assert saved["environment"]["smoke"] is True and saved["environment"]["torch"]
    assert "not kernel speeds" in saved["environment"]["note"]


def test_masking_path_check_takes_each_paths_own_scores():
    """Scores summed in another order may swap two nearly tied ranks: that path's masks are the twin's sort
    of its own scores (accepted); masks that are not (a wrong kernel) are refused, as are scores off the twin's."""
    import pytest
    import torch

    from kernels import reference

    scores = torch.tensor([[0.5, 0.25, 0.5 + 2**-23, 0.0]])  # ranks 0 and 2 nearly tied
    nudged = scores.clone()
    nudged[0, 2] = 0.5 - 2**-24  # another summation order: the tie breaks the other way
    args = (None, None, None, 2, "descending", (2, 2))
    twin_out = (scores, *reference.sort_stride_mask(scores, 2, "descending", (2, 2)))
    own = (nudged, *reference.sort_stride_mask(nudged, 2, "descending", (2, 2)))
    assert not torch.equal(own[1], twin_out[1])  # the swap happened
    bench_kernels.check_against_twin("masking_path", "triton", own, args, twin_out)
    with pytest.raises(AssertionError):  # the twin's masks next to the nudged scores: not its sort of them
        bench_kernels.check_against_twin("masking_path", "triton", (nudged, *twin_out[1:]), args, twin_out)
    with pytest.raises(AssertionError):  # scores beyond the tolerance
        far = scores + 1e-2
        bench_kernels.check_against_twin(
            "masking_path", "triton", (far, *reference.sort_stride_mask(far, 2, "descending", (2, 2))), args, twin_out
        )


def test_timing_runs_without_the_kernel_guards_and_restores_them():
    import torch

    import kernels.depthwise
    import kernels.tokens
    from bench.harness import time_ms

    seen = []
    time_ms(
        lambda: seen.append((kernels.HOST_SYNC_GUARDS.check_ids, kernels.HOST_SYNC_GUARDS.check_neighbours)),
        torch.device("cpu"),
        warmup=1,
        reps=2,
    )
    assert seen == [(False, False)] * 3
    assert kernels.HOST_SYNC_GUARDS.check_ids is True and kernels.HOST_SYNC_GUARDS.check_neighbours is True
