"""bench/bench_sparse.py runs (CPU smoke): dense and sparse checked equal, timed, executed FLOPs counted."""

import json

import pytest

from bench import bench_sparse


@pytest.mark.slow
def test_sparse_benchmark_smoke_run(tmp_path):
    [row] = bench_sparse.run(quick=True, batches=[2], reps=1, out_dir=tmp_path)
    assert row["dense_ms"] > 0 and row["sparse_ms"] > 0
    # the sparse encoder skips the masked tiles of the conv stages: fewer FLOPs actually executed
    assert 0.2 < row["flops_ratio"] < 0.8 and row["dense_gflops"] > row["sparse_gflops"]
    [saved] = tmp_path.glob("bench_sparse_quick_*.json")
    assert json.loads(saved.read_text())["environment"]["quick"] is True
