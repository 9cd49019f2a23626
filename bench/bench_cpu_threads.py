"""The demo on a busy CPU: torch's thread count per training process, automatic vs torch's default.

Runs the README's demo (shortened to ``--steps`` steps, its 2 loader workers) as a subprocess, with
``train.cpu_threads=0`` (automatic: the process's cores less one per loader worker) and with torch's own
default (``train.cpu_threads`` = every core, as before), each on an idle machine and next to ``--load``
CPU-bound competing processes; the four variants run in turn, ``--rounds`` times, so drift affects all
alike. Reported: the median img/s of each run's logged steps after the first (warm-up), the median over
rounds, and the busy/idle ratio of each variant.

    python -m bench.bench_cpu_threads [--steps 80] [--rounds 3] [--load 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.harness import environment, write_results

BUSY_LOOP = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def demo_img_per_s(steps: int, threads: int) -> float:
    """Median logged img/s of one shortened demo run (its first logged window is warm-up)."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        command = [sys.executable, "-m", "infmae", "pretrain", "--preset", "demo", "--output", str(run)]
        for item in (f"train.max_steps={steps}", "train.log_every=10", f"train.cpu_threads={threads}"):
            command += ["--set", item]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=1800)
        rates = [json.loads(line).get("img_per_s") for line in (run / "metrics.jsonl").read_text().splitlines()]
        rates = [r for r in rates if r is not None][1:]
        return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=int, default=2, help="competing CPU-bound processes (2)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    variants = {"automatic": 0, "torch default": cores}
    samples: dict[tuple[str, str], list[float]] = {}
    for round_number in range(args.rounds):
        for machine in ("idle", "busy"):
            competitors = []
            if machine == "busy":
                competitors = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.load)]
            try:
                for name, threads in variants.items():
                    rate = demo_img_per_s(args.steps, threads)
                    samples.setdefault((name, machine), []).append(rate)
                    print(f"round {round_number}: {name:13s} {machine}: {rate:7.1f} img/s", flush=True)
            finally:
                for competitor in competitors:
                    competitor.kill()
                    competitor.wait()
    rows = []
    for name, threads in variants.items():
        idle = statistics.median(samples[(name, "idle")])
        busy = statistics.median(samples[(name, "busy")])
        rows.append(
            {
                "variant": name,
                "torch_threads": threads or "auto",
                "idle_img_per_s": round(idle, 1),
                "busy_img_per_s": round(busy, 1),
                "busy_over_idle": round(busy / idle, 3),
                "competing_processes": args.load,
                "steps": args.steps,
                "rounds": args.rounds,
                "idle_samples": [round(v, 1) for v in samples[(name, "idle")]],
                "busy_samples": [round(v, 1) for v in samples[(name, "busy")]],
            }
        )
        print(f"{name:13s}: idle {idle:7.1f} img/s, busy {busy:7.1f} img/s, busy/idle {busy / idle:.2f}")
    json_path, _ = write_results("bench_cpu_threads", rows, environment(torch.device("cpu")))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
