"""bench/harness.py: the rotating-input timer, the time limit of a benchmark part, the hardware table."""

import time

import pytest
import torch

from bench import harness
from infmae.training.metrics import device_peaks, peaks_for_name


def test_rotating_timer_calls_every_input_set_and_reports_per_call_times():
    seen = []
    sets = [torch.full((4,), float(i)) for i in range(3)]

    def call(x):
        seen.append(int(x[0]))
        return x * 2

    result = harness.time_rotating(call, sets, torch.device("cpu"), reps=3, warmup=1, batch_ms=0.0)
    assert result["method"] == "launches" and result["graph_ms"] is None  # graphs are for CUDA
    assert result["median_ms"] == result["launch_ms"] > 0
    assert result["input_sets"] == 3 and result["calls_per_sample"] % 3 == 0
    assert set(seen) == {0, 1, 2} and seen[:3] == [0, 1, 2]  # in rotation


def test_input_sets_cover_twice_the_l2(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(harness, "l2_cache_bytes", lambda device: 60 * 2**20)  # an H200's 60 MB
    assert harness.input_set_count(200 * 2**10, cuda) == 64  # scores for the mask: capped
    assert harness.input_set_count(4 * 2**20, cuda) == 30  # 30 x 4 MB = 2 x 60 MB
    assert harness.input_set_count(77 * 2**20, cuda) == 2  # never the same inputs twice in a row
    monkeypatch.setattr(harness, "l2_cache_bytes", lambda device: 0)
    assert harness.input_set_count(1, torch.device("cpu")) == 1


def test_time_limit_stops_a_part_and_is_gone_after():
    start = time.perf_counter()
    with pytest.raises(harness.StepTimeout, match="limit of 0 s"):
        with harness.time_limit(0.2, "spin"):
            while True:
                time.sleep(0.01)
    assert time.perf_counter() - start < 5
    with harness.time_limit(None, "no limit"):
        time.sleep(0.01)
    time.sleep(0.3)  # the timer was cleared: nothing fires here


def test_git_sha_can_be_given(monkeypatch):
    monkeypatch.setenv("INFMAE_GIT_SHA", "abc1234")
    assert harness.git_sha() == "abc1234" and harness.environment(torch.device("cpu"))["git_sha"] == "abc1234"


@pytest.mark.parametrize(
    "name,board,tflops,gbps",
    [
        ("NVIDIA A100-SXM4-40GB", "A100 40GB", 312.0, 1555.0),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB", 312.0, 1555.0),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 312.0, 2039.0),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 312.0, 1935.0),
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0, 3350.0),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0, 2000.0),
        ("NVIDIA H100 NVL", "H100 NVL", 835.0, 3900.0),
        ("NVIDIA H200", "H200", 989.0, 4800.0),
        ("NVIDIA H200 NVL", "H200 NVL", 835.0, 4800.0),
    ],
)
def test_hardware_table_knows_the_boards(name, board, tflops, gbps, monkeypatch):
    peaks = peaks_for_name(name)
    assert (peaks.board, peaks.bf16_tflops, peaks.hbm_gbps) == (board, tflops, gbps)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peaks(torch.device("cuda", 0)) == peaks
    assert harness.peak_tflops(torch.device("cuda", 0)) == tflops
    assert harness.peak_bandwidth_gbps(torch.device("cuda", 0)) == gbps


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA H800", "NVIDIA L4", "NVIDIA A10"])
def test_hardware_table_says_unknown_rather_than_guess(name, monkeypatch):
    assert peaks_for_name(name) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peaks(torch.device("cuda", 0)) is None and harness.peak_tflops(torch.device("cuda", 0)) is None
    assert device_peaks(torch.device("cpu")) is None
