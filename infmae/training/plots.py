"""Curves of a run from its ``metrics.jsonl``: training and held-out loss (with the trivial baseline),
learning rate, throughput, data wait and MFU against the step. matplotlib is an optional extra."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (
    ("loss", ("loss", "val_loss", "val_baseline_loss"), "masked-patch MSE", True),
    ("learning rate", ("lr",), "lr", False),
    ("throughput", ("img_per_s", "img_per_s_total"), "images / s", False),
    ("data wait", ("data_wait_pct",), "% of step time", False),
    ("MFU", ("mfu",), "model FLOP utilisation", False),
)
LABELS = {
    "loss": "train loss",
    "val_loss": "val loss",
    "val_baseline_loss": "val baseline (each image's visible mean)",
    "img_per_s": "per device",
    "img_per_s_total": "all devices",
}


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"plot: expected {path} (written by `infmae pretrain`), got no such file")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ValueError(
                f"plot: expected one JSON record per line in {path}, got line {number}: {line[:80]!r}"
            ) from None
    if not records:
        raise ValueError(f"plot: expected records in {path}, got an empty file; has the run logged a step yet?")
    return records


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw every panel that has data into one PNG (default RUN/curves.png) -> its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plot: expected matplotlib, got none installed; pip install matplotlib (or the extra: "
            "pip install -e '.[plot]')"
        ) from None
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    panels = []
    for title, keys, unit, log_scale in PANELS:
        series = {}
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                series[key] = points
        if series:
            panels.append((title, series, unit, log_scale))
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True, squeeze=False)
    for axis, (title, series, unit, log_scale) in zip(axes[:, 0], panels):
        for key, points in series.items():
            steps, values = zip(*points)
            style = "--" if key == "val_baseline_loss" else "-"
            axis.plot(
                steps, values, style, marker="o" if key.startswith("val") else None, ms=3, label=LABELS.get(key, key)
            )
        axis.set_title(title, fontsize=10)
        axis.set_ylabel(unit, fontsize=8)
        if log_scale:
            axis.set_yscale("log")
        if len(series) > 1:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    figure.suptitle(str(run_dir), fontsize=9)
    figure.tight_layout()
    path = Path(output) if output else run_dir / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
