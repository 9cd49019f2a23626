"""bench/bench_data.py runs end to end (tiny sizes): every loader checked against the reference, then timed."""

import json

import pytest

from bench import bench_data


@pytest.mark.dali
@pytest.mark.slow
def test_data_benchmark_smoke_run(tmp_path):
    pytest.importorskip("nvidia.dali", reason="DALI is installed by pip install -e '.[dali]' (CI installs it)")
    rows = bench_data.run(
        count=10,
        wide=1,
        batch=4,
        batches=2,
        threads=1,
        img=32,
        data_root=tmp_path / "data",
        out_dir=tmp_path,
        smoke=True,
    )
    assert {(r["loader"], r["source"]) for r in rows} == {
        ("reference", "files"),
        ("reference", "packed"),
        ("dali", "files"),
        ("dali", "packed"),
    }
    assert all(r["images_per_s"] > 0 and r["parity_max"] <= bench_data.PARITY_MAX for r in rows)
    [saved] = tmp_path.glob("bench_data_smoke_*.json")
    env = json.loads(saved.read_text())["environment"]
    assert env["smoke"] is True and env["dali"] and env["threads"] == 1
