"""bench/bench_kernels.py runs (CPU smoke mode: interpreter, tiny shapes) and covers every registered op."""
import json

from bench import bench_kernels
from kernels.registry import REGISTRY


def test_kernel_benchmark_smoke_run_covers_the_registry(tmp_path):
    rows = bench_kernels.run(smoke=True, compile_twin=False, out_dir=tmp_path, reps=1)
    assert set(REGISTRY) <= {row["op"] for row in rows}
    assert all(row["triton_ms"] > 0 and row["eager_ms"] > 0 for row in rows)
    [json_file] = tmp_path.glob("bench_kernels_smoke_*.json")
    saved = json.loads(json_file.read_text())
    assert saved["environment"]["smoke"] is True and saved["environment"]["torch"]
    assert "not kernel speeds" in saved["environment"]["note"]
