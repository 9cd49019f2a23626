"""bench_op_count runs, and counts what it says: channels-last memory removes the LayerNorms' copies."""

import pytest
import torch

from bench import bench_op_count
from tests.tolerances import TOLERANCES


def test_op_count_reference_and_channels_last():
    rows = bench_op_count.main(
        ["--variants", "reference,channels_last", "--encoders", "dense", "--steps", "1", "--batch", "2", "--no-write"]
    )
    reference, channels_last = rows
    assert (reference["variant"], channels_last["variant"]) == ("reference", "channels_last")
    assert reference["host_ops"] > 100 and reference["all_aten_ops"] >= reference["host_ops"]
    assert channels_last["copies"] < reference["copies"]  # the NHWC view LayerNorm reads needs no copy
    rtol = TOLERANCES[("channels_last_loss", torch.float32)][1]
    assert channels_last["first_loss"] == pytest.approx(reference["first_loss"], rel=max(rtol, 1e-6), abs=1e-6)
