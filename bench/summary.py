"""The short summary of a ``bench/gpu_checks.sh`` run: read the results folder, write ``summary.txt``,
print it (gpu_checks.sh prints it last, so the end of the output is the table).

    python -m bench.summary DIR [--step NAME=STATUS:SECONDS ...]

Standard library only: it runs after a benchmark process that may have been killed, and reads whatever
``results.json`` and ``kernel_tests.xml`` that run left.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def _number(value, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or value == "":
        return "n/a"
    return f"{float(value) * scale:.{digits}f}{suffix}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def kernel_tests(path: Path) -> str:
    """'N passed, N failed, ...' from a pytest JUnit XML (and the first failures' names)."""
    if not path.exists():
        return "no report (the step did not finish)"
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        return f"unreadable report ({error})"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    counts = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in keys}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    text = f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped"
    failed = [
        f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    if failed:
        text += " (" + ", ".join(failed[:4]) + (", ..." if len(failed) > 4 else "") + ")"
    return text


def _table(header: list[str], rows: list[list], left: tuple[int, ...] = (0,)) -> list[str]:
    """Aligned columns: those in ``left`` (text) left-aligned, the others (numbers) right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells) -> str:
        return "  ".join(
            str(cell).ljust(width) if i in left else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header)] + [line(row) for row in rows]


def summarize(folder: Path, steps: list[tuple[str, str, str]]) -> str:
    results_path = folder / "results.json"
    data = json.loads(results_path.read_text()) if results_path.exists() else {}
    env = data.get("environment", {})
    rows = data.get("results", [])
    lines = [
        "=" * 100,
        "GPU checks, {} mode{}\n{} | torch {} | triton {} | numpy {} | Python {} | {} | git {} | {}".format(
            env.get("mode", "?"),
            " (DRY RUN on the CPU: numbers say only that the code runs)" if env.get("dry_run") else "",
            env.get("device", "?"),
            env.get("torch", "?"),
            env.get("triton", "?"),
            env.get("numpy", "?"),
            env.get("python", "?"),
            env.get("capability", "no GPU"),
            env.get("git_sha", "?"),
            env.get("date", "?")[:16],
        ),
    ]
    ceilings = data.get("ceilings") or {}
    if ceilings:
        lines.append(
            f"ceilings measured: copy {_number(ceilings.get('copy_GBps'), 0)} GB/s "
            f"(datasheet {_number(env.get('peak_hbm_gbps'), 0)}), bf16 matmul "
            f"{_number(ceilings.get('bf16_matmul_tflops'), 0)} TFLOP/s "
            f"(datasheet {_number(env.get('peak_bf16_tflops'), 0)})"
        )
    step_rows = []
    for name, status, seconds in steps:
        detail = ""
        if name == "kernel-tests":
            detail = kernel_tests(folder / "kernel_tests.xml")
        elif name == "bench":
            detail = " | ".join(
                f"{part} {info['status']} {info['seconds']:.0f}s" for part, info in data.get("parts", {}).items()
            )
        step_rows.append([name, status, f"{seconds}s", detail])
    if step_rows:
        lines += [""] + _table(["step", "status", "time", "detail"], step_rows, left=(0, 1, 3))
    for part, info in data.get("parts", {}).items():
        if info.get("error"):
            lines.append(f"  {part}: {info['error'][:300]}")

    train = [r for r in rows if r.get("part") == "train"]
    if train:
        lines += ["", "train step (synthetic input): img/s, MFU of the model FLOPs, utilisation of the executed FLOPs"]
        table = []
        for r in train:
            if "error" in r:
                table.append([r["variant"], r["batch"], "FAILED", "", "", "", "", "", ""])
                continue
            table.append(
                [
                    r["variant"],
                    r["batch"],
                    _number(r["img_per_s"]),
                    _number(r["ms_per_step"]),
                    _percent(r.get("mfu")),
                    _percent(r.get("executed_flop_utilization")),
                    _number(r.get("speedup_vs_reference"), 2, suffix="x") if "speedup_vs_reference" in r else "1x",
                    r.get("compiled_graphs", ""),
                    _number(r.get("first_step_s"), 1, suffix="s"),
                ]
            )
        header = ["variant", "B", "img/s", "ms/step", "MFU", "exec util", "vs ref", "graphs", "1st step"]
        lines += _table(header, table)
    sparse = [r for r in rows if r.get("part") == "sparse"]
    if sparse:
        lines += ["", "dense vs sparse encoder, forward+backward"]
        lines += _table(
            ["B", "dense ms", "sparse ms", "speedup", "GFLOP dense", "GFLOP sparse"],
            [
                [
                    r["batch"],
                    _number(r["dense_ms"]),
                    _number(r["sparse_ms"]),
                    _number(r["speedup"], 2, suffix="x"),
                    _number(r["dense_gflops"]),
                    _number(r["sparse_gflops"]),
                ]
                for r in sparse
            ],
        )
    kernels = [r for r in rows if r.get("part") == "kernels"]
    if kernels:
        lines += ["", "kernels: us per call (CUDA-graph replay on a GPU), speedups, GB/s and % of datasheet bandwidth"]
        table = []
        for r in kernels:
            if r.get("pass") == "check":
                table.append([r["op"], r["case"], "CHECK FAILED", "", "", "", "", "", "", ""])
                continue
            table.append(
                [
                    r["op"],
                    r["case"],
                    r["pass"],
                    _number(r.get("triton_ms"), 1, 1e3),
                    _number(r.get("eager_ms"), 1, 1e3),
                    _number(r.get("compiled_eager_ms"), 1, 1e3),
                    _number(r.get("speedup_vs_eager"), 2, suffix="x"),
                    _number(r.get("speedup_vs_compiled"), 2, suffix="x"),
                    _number(r.get("triton_GBps"), 0) if "triton_GBps" in r else "",
                    _number(r.get("pct_peak_bandwidth"), 0, suffix="%") if "triton_GBps" in r else "",
                ]
            )
        header = ["op", "case", "pass", "triton", "eager", "compiled", "x eager", "x compiled", "GB/s", "%peak"]
        lines += _table(header, table, left=(0, 1, 2))
    failed = [f"{name} ({status})" for name, status, _ in steps if status != "passed"]
    files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.exists() else []
    lines += ["", ("FAILED: " + ", ".join(failed)) if failed else "all checks passed"]
    lines.append(f"files in {folder}: {', '.join(files + ['summary.txt'] if 'summary.txt' not in files else files)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--step", action="append", default=[], help="NAME=STATUS:SECONDS, in order")
    args = parser.parse_args(argv)
    steps = []
    for item in args.step:
        name, _, rest = item.partition("=")
        status, _, seconds = rest.partition(":")
        steps.append((name, status or "?", seconds or "?"))
    text = summarize(args.folder, steps)
    args.folder.mkdir(parents=True, exist_ok=True)
    (args.folder / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
