"""bench/gpu_checks.sh --quick --dry-run: the one prepared GPU command, end to end on the CPU (interpreter,
demo model, tiny kernel shape), so it cannot rot between the rare GPU leases. And the summary of a run
that was stopped half-way."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import summary
from kernels.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
MOST_FILES = 8  # what a lent GPU machine gives back from its output folder


@pytest.mark.slow  # about a minute on 2 cores
def test_quick_dry_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_checks.sh"), "--quick", "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-2000:])
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["kernel_tests.xml", "log.txt", "results.csv", "results.json", "summary.txt"]
    assert len(files) <= MOST_FILES
    # the summary table is printed last, and is what summary.txt holds
    printed = result.stdout.rstrip().splitlines()
    table = (out / "summary.txt").read_text().rstrip().splitlines()
    assert printed[-len(table) :] == table and "all checks passed" in table[-2]
    assert any(line.startswith("engine ") for line in table) and any("kernel-tests  passed" in line for line in table)
    # the log is the whole run, steps and results in order
    log = (out / "log.txt").read_text()
    assert log.index("=== env") < log.index("=== kernel-tests") < log.index("=== bench") < log.index("=== bench:")

    data = json.loads((out / "results.json").read_text())
    env = data["environment"]
    assert {"device", "torch", "triton", "numpy", "python", "git_sha", "date"} <= set(env)
    assert env["dry_run"] is True and env["mode"] == "quick" and env["triton_interpret"] is True
    assert {name: part["status"] for name, part in data["parts"].items()} == {
        "train": "passed",
        "sparse": "passed",
        "kernels": "passed",
    }
    rows = data["results"]
    train = {row["variant"]: row for row in rows if row["part"] == "train"}
    assert set(train) == {"reference", "engine_nocompile", "engine", "engine_default"}
    assert train["engine"]["compiled_graphs"] > 0 and train["engine_nocompile"]["compiled_graphs"] == 0
    # the default engine as a run sets it up on this device: compiled, the default (dense) encoder
    assert train["engine_default"]["compiled_graphs"] > 0 and train["engine_default"]["encoder"] == "dense"
    assert all(row["compiles_while_timing"] == 0 and row["graph_breaks"] == 0 for row in train.values())
    assert train["engine"]["kernels"] == "triton" and train["engine"]["encoder"] == "sparse"  # the interpreter ran
    assert train["engine"]["executed_gflops_per_image"] < train["engine"]["model_gflops_per_image"]
    [sparse] = [row for row in rows if row["part"] == "sparse"]
    assert sparse["sparse_gflops"] < sparse["dense_gflops"]
    kernels = [row for row in rows if row["part"] == "kernels"]
    assert {row["op"] for row in kernels} >= set(REGISTRY)
    assert all(row["compiled_twin_graphs"] >= 1 and row["compiled_eager_ms"] > 0 for row in kernels)
    csv_header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert csv_header[0] == "part" and len((out / "results.csv").read_text().splitlines()) == len(rows) + 1


@pytest.mark.dali
@pytest.mark.slow  # about 30 s on 2 cores
def test_dali_script_dry_run(tmp_path):
    """bench/gpu_dali.sh on the CPU (DALI's CPU mode, tiny sizes): parity and rates of every loader, the
    engine's step on the synthetic batch and on DALI's."""
    pytest.importorskip("nvidia.dali", reason="DALI is installed by pip install -e '.[dali]' (CI installs it)")
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_dali.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHON": sys.executable},
    )
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-2000:])
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 5 <= MOST_FILES and "dali_log.txt" in files
    [data_json] = out.glob("bench_data_*.json")
    assert {(r["loader"], r["source"]) for r in json.loads(data_json.read_text())["results"]} == {
        ("reference", "files"),
        ("reference", "packed"),
        ("dali", "files"),
        ("dali", "packed"),
    }
    [train_json] = out.glob("bench_train_*.json")
    assert {r["input"] for r in json.loads(train_json.read_text())["results"]} == {"synthetic", "dali"}
    assert result.stdout.rstrip().endswith("all DALI checks passed")


def test_usage_errors_exit_2(tmp_path):
    script = str(ROOT / "bench" / "gpu_checks.sh")
    assert subprocess.run(["bash", script, "--quick"], capture_output=True).returncode == 2  # no --out
    assert subprocess.run(["bash", script, "--fast", "--out", str(tmp_path)], capture_output=True).returncode == 2
    helped = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--quick --dry-run --out DIR" in helped.stdout


def test_summary_of_a_run_stopped_half_way(tmp_path, capsys):
    """A bench process killed at its limit leaves results.json with the parts it finished; the kernel tests
    killed before pytest wrote its report leave none. The summary says so and still prints the rest."""
    (tmp_path / "results.json").write_text(
        json.dumps(
            {
                "environment": {"device": "NVIDIA H200", "mode": "quick", "dry_run": False, "torch": "2.11.0"},
                "ceilings": {"copy_GBps": 4300.0, "bf16_matmul_tflops": 790.0},
                "parts": {"train": {"status": "timeout", "seconds": 105.0, "error": "train: expected ... got more"}},
                "results": [
                    {"part": "train", "variant": "reference", "batch": 256, "img_per_s": 1000.0, "ms_per_step": 256.0}
                ],
            }
        )
    )
    steps = ["--step", "env=passed:3", "--step", "kernel-tests=timeout:85", "--step", "bench=timeout:245"]
    assert summary.main([str(tmp_path), *steps]) == 0
    text = capsys.readouterr().out
    assert text == (tmp_path / "summary.txt").read_text()
    assert "no report (the step did not finish)" in text and "train timeout 105s" in text
    assert "FAILED: kernel-tests (timeout), bench (timeout)" in text and "reference" in text
    assert "copy 4300 GB/s" in text


def test_summary_needs_only_the_standard_library():
    """It runs after a benchmark process that may have died: no torch import, quick."""
    code = "import sys, bench.summary; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
