"""Kernel benchmark: every registered Triton op vs its eager twin vs ``torch.compile`` of the twin.

    python -m bench.bench_kernels                 # on a GPU: training and large-image shapes
    python -m bench.bench_kernels --shapes train  # on a GPU: the training shape only (B=256, 224 px, C=3, D=768)
    python -m bench.bench_kernels --smoke         # on a CPU: tiny shapes under TRITON_INTERPRET=1

For each case the implementations are first checked equal (integer outputs exactly), then timed side by
side in this run over rotating input sets that together move more than twice the L2
(``bench.harness.time_rotating``): ``<impl>_ms`` is the CUDA-graph replay per call (the op's device
time; GB/s and % of peak bandwidth come from it), ``<impl>_launch_ms`` the same calls launched back to
back (what an eager training step pays, launches included). Ops with a gradient take inputs that require
it in both passes (as in training), so ``torch.compile`` compiles each twin once (``dynamic=False``,
dynamo reset per case; a recompile while timing is an error). Results go to bench/results/ (or ``--out``).
A smoke run on the CPU measures the interpreter, not a kernel: its numbers say only that the code runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if "--smoke" in sys.argv:  # must be set before Triton kernels are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.harness import (  # noqa: E402
    CompileWatch,
    environment,
    input_set_count,
    log_row,
    peak_bandwidth_gbps,
    time_rotating,
    write_results,
)
from kernels import reference  # noqa: E402

# scores from bf16 images are exact fp32 sums in both paths up to summation order (see tests/tolerances.py)
SCORE_TOL = {"atol": 1e-4, "rtol": 1e-5}
# depthwise tile conv, bf16 tiles: the kernel sums in fp32 and rounds once, so it is compared with the fp32
# twin (tests/tolerances.py "triton_depthwise_tiles", bf16: half an ulp, 2x margin); the
# compiled twin, which rounds the weights to bf16 as the eager twin does, is compared with the eager twin
DEPTHWISE_KERNEL_TOL = {"atol": 1e-4, "rtol": 2**-8}
DEPTHWISE_TWIN_TOL = {"atol": 5e-2, "rtol": 2e-2}

# (label, B, C, H, W, D tokens, D decoder, (conv stage widths d1, d2))
SHAPES = {
    "tiny": [("smoke_C3", 2, 3, 32, 48, 32, 16, (24, 40))],  # the CPU dry run of gpu_checks.sh
    "smoke": [("smoke_C3", 2, 3, 32, 48, 32, 16, (24, 40)), ("smoke_C1_L40", 1, 1, 64, 160, 24, 8, (24, 40))],
    "train": [("train_224_C3", 256, 3, 224, 224, 768, 512, (256, 384))],
    "full": [
        ("train_224_C3", 256, 3, 224, 224, 768, 512, (256, 384)),
        ("train_224_C1", 256, 1, 224, 224, 768, 512, (256, 384)),
        ("large_1024_C1", 32, 1, 1024, 1024, 768, 512, (256, 384)),
    ],
}
IMPLEMENTATIONS = ("triton", "eager", "compiled_eager")


def masking_path_twin(imgs, weight, bias, stride, order, grid):
    """The model's whole masking path (pooling, sort-and-stride mask, visibility maps), eager -> (scores,
    *mask outputs). The scores come out too: scores computed in another order round differently, and a
    near-tie can then swap two ranks, so each path's masks are checked against the twin's sort of its own
    scores (exactly), and its scores against the twin's (within SCORE_TOL)."""
    scores = reference.intensity_pool(imgs, weight, bias)
    return (scores, *reference.sort_stride_mask(scores, stride, order, grid))


def masking_path_fast(imgs, weight, bias, stride, order, grid):
    from kernels import masking, pooling

    scores = pooling.intensity_pool(imgs, weight, bias)
    return (scores, *masking.sort_stride_mask(scores, stride, order, grid))


COMPOSITES = {"masking_path": (masking_path_fast, masking_path_twin)}


@dataclass
class Case:
    op: str
    label: str
    make: Callable[[torch.device], tuple]  # -> (args, kwargs)
    bytes_moved: int
    backward: bool = False


def _images(B, C, H, W, device):
    return (torch.rand(B, C, H, W, device=device) * 2 - 1).to(torch.bfloat16)


def _ids(B, L, K, device):
    return torch.rand(B, L, device=device).argsort(dim=1)[:, :K].contiguous()


def _tiles(B, L, K, T, C, grid, device):
    """Visible tiles [B,K,T,T,C] bf16, their neighbour table, and the depthwise conv's fp32 weight and bias."""
    table = reference.tile_neighbours(_ids(B, L, K, device), grid)
    return (
        (
            torch.randn(B, K, T, T, C, device=device).to(torch.bfloat16),
            table,
            torch.randn(C, 1, 5, 5, device=device),
            torch.randn(C, device=device),
        ),
        {},
    )


def build_cases(smoke: bool = False, shapes: str | None = None) -> list[Case]:
    """The cases of one shape set (``SHAPES``): ``smoke`` (CPU), ``train`` or ``full`` (default on a GPU)."""
    cases = []
    for label, B, C, H, W, D, Dd, stage_widths in SHAPES[shapes or ("smoke" if smoke else "full")]:
        L, S = (H // 16) * (W // 16), 4
        K = reference.num_visible(L, S)
        grid = (H // 16, W // 16)
        cases += [
            Case(
                "intensity_pool",
                label,
                lambda d, B=B, C=C, H=H, W=W: (
                    (_images(B, C, H, W, d), reference.intensity_filter(C, device=d), 0.0),
                    {},
                ),
                bytes_moved=B * C * H * W * 2 + B * L * 4,
            ),
            Case(
                "sort_stride_mask",
                label,
                lambda d, B=B, L=L, grid=grid: ((torch.randn(B, L, device=d), 4, "descending", grid), {}),
                bytes_moved=B * (4 * L + 8 * K + 8 * L + 4 * L + 4 * 20 * L),
            ),  # scores in; ids, mask, maps out
            Case(
                "masking_path",
                label,
                lambda d, B=B, C=C, H=H, W=W, grid=grid: (
                    (_images(B, C, H, W, d), reference.intensity_filter(C, device=d), 0.0, 4, "descending", grid),
                    {},
                ),
                bytes_moved=B * C * H * W * 2 + B * (8 * K + 8 * L + 4 * L + 4 * 20 * L),
            ),
            Case(
                "token_gather",
                label,
                lambda d, B=B, L=L, K=K, D=D: (
                    (torch.randn(B, L, D, device=d).to(torch.bfloat16), _ids(B, L, K, d)),
                    {},
                ),
                bytes_moved=2 * B * K * D * 2 + B * K * 8,
                backward=True,
            ),
            Case(
                "token_gather_many",
                label,
                lambda d, B=B, L=L, K=K, D=D: (
                    ([torch.randn(B, L, D, device=d).to(torch.bfloat16) for _ in range(3)], _ids(B, L, K, d)),
                    {},
                ),
                bytes_moved=3 * 2 * B * K * D * 2 + B * K * 8,
                backward=True,
            ),
            Case(
                "token_restore",
                label,
                lambda d, B=B, L=L, K=K, Dd=Dd: (
                    (
                        torch.randn(B, K, Dd, device=d).to(torch.bfloat16),
                        torch.randn(Dd, device=d),
                        _ids(B, L, K, d),
                        L,
                    ),
                    {},
                ),
                bytes_moved=B * K * Dd * 2 + B * L * Dd * 2 + B * K * 8,
                backward=True,
            ),
        ]
        # the sparse encoder's token mixer at stage 1 (4x4 tiles, d1) and stage 2 (2x2 tiles, d2)
        for T, width in zip((4, 2), stage_widths):
            cases.append(
                Case(
                    "depthwise_conv5x5_tiles",
                    f"{label}_T{T}",
                    lambda d, B=B, L=L, K=K, T=T, width=width, grid=grid: _tiles(B, L, K, T, width, grid, d),
                    bytes_moved=2 * B * K * T * T * width * 2 + B * K * 9 * 8,
                    backward=True,
                )
            )
    return cases


def _outputs(result) -> list[torch.Tensor]:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [t for t in items if isinstance(t, torch.Tensor)]


def _check_equal(op: str, got, want) -> None:
    for a, b in zip(_outputs(got), _outputs(want), strict=True):
        if a.is_floating_point() and op == "intensity_pool":
            torch.testing.assert_close(a, b, **SCORE_TOL)
        elif a.is_floating_point() and op == "depthwise_conv5x5_tiles":
            torch.testing.assert_close(a.float(), b.float(), **DEPTHWISE_TWIN_TOL)
        elif not torch.equal(a, b):  # ids, masks, maps and token copies are exact
            raise AssertionError(f"{op}: the fast op and its twin differ; fix the kernel before timing it")


def check_against_twin(op: str, implementation: str, got, args: tuple, twin_out) -> None:
    """Raises unless ``got`` (one implementation's output on ``args``) equals the twin's, by the op's rule."""
    if op == "masking_path":
        scores, *masks = got
        _check_equal("intensity_pool", scores, twin_out[0])
        _check_equal(op, masks, reference.sort_stride_mask(scores, *args[3:]))
    elif op == "depthwise_conv5x5_tiles" and implementation == "triton":
        tiles, table, weight, bias = (a.detach() for a in args)
        want = reference.depthwise_conv5x5_tiles(tiles.float(), table, weight.float(), bias.float())
        torch.testing.assert_close(got.detach().float(), want, **DEPTHWISE_KERNEL_TOL)
    else:
        _check_equal(op, got, twin_out)


def requiring_grad(args: tuple) -> tuple:
    """The floating-point tensors of ``args`` (also inside lists) as fresh leaves that require grad."""

    def leaf(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach().requires_grad_()
        if isinstance(a, list):
            return [leaf(t) for t in a]
        return a

    return tuple(leaf(a) for a in args)


def _leaves(args: tuple) -> list[torch.Tensor]:
    flat = [t for a in args for t in (a if isinstance(a, list) else [a])]
    return [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]


def callers_by_direction(fn: Callable, kwargs: dict, sample_args: tuple) -> dict[str, Callable]:
    """-> {"fwd": call, "fwd+bwd": call} taking one input set (args); the backward takes a fixed output
    gradient and returns the input gradients (``torch.autograd.grad``: nothing accumulates between calls)."""

    def forward(args):
        return fn(*args, **kwargs)

    callers = {"fwd": forward}
    outputs = [t for t in _outputs(fn(*sample_args, **kwargs)) if t.requires_grad]
    if outputs:
        grads = [torch.randn_like(t) for t in outputs]

        def forward_backward(args):
            outs = [t for t in _outputs(fn(*args, **kwargs)) if t.requires_grad]
            return torch.autograd.grad(outs, _leaves(args), grads, allow_unused=True)

        callers["fwd+bwd"] = forward_backward
    return callers


def implementation_pairs(case: Case):
    from kernels import triton_ops  # noqa: F401  (registers the ops)
    from kernels.registry import REGISTRY

    return COMPOSITES[case.op] if case.op in COMPOSITES else (REGISTRY[case.op].fast, REGISTRY[case.op].twin)


def measure_case(
    case: Case,
    device: torch.device,
    compile_twin: bool,
    reps: int,
    backend: str = "inductor",
    graph: bool = True,
) -> list[dict]:
    """Check the implementations of one case against the twin, then time them -> one row per pass (fwd,
    and fwd+bwd for ops with a gradient), or one 'check' row with the error when they differ."""
    fast, twin = implementation_pairs(case)
    torch.manual_seed(0)
    first_args, kwargs = case.make(device)
    count = input_set_count(case.bytes_moved, device)
    input_sets = [first_args] + [case.make(device)[0] for _ in range(count - 1)]
    if case.backward:
        input_sets = [requiring_grad(args) for args in input_sets]
    implementations = {"triton": fast, "eager": twin}
    watch = None
    if compile_twin:
        # a fresh dynamo cache per case (past shapes must not use up the recompile limit), and an error, not
        # a silent eager fallback, if the limit is hit or anything compiles while timing
        watch = CompileWatch(f"{case.op} {case.label} compiled twin", allow_graph_breaks=True)
        implementations["compiled_eager"] = torch.compile(twin, dynamic=False, backend=backend)
    try:
        args = input_sets[0]
        twin_out = twin(*args, **kwargs)
        for name, fn in implementations.items():
            try:
                check_against_twin(case.op, name, fn(*args, **kwargs), args, twin_out)
            except AssertionError as error:  # recorded, not timed: a speed of a wrong result means nothing
                return [
                    {
                        "op": case.op,
                        "case": case.label,
                        "pass": "check",
                        "device": device.type,
                        "error": f"{name} differs from the twin: {error}"[:500],
                    }
                ]
        callers = {name: callers_by_direction(fn, kwargs, args) for name, fn in implementations.items()}
        rows = []
        for direction in callers["triton"]:
            timings = {}
            for name in implementations:
                call = callers[name][direction]
                call(args)  # the compiled twin's backward compiles on its first call: before timing
                if watch is not None and name == "compiled_eager":
                    with watch.timing():
                        timings[name] = time_rotating(call, input_sets, device, reps=reps, graph=graph)
                else:
                    timings[name] = time_rotating(call, input_sets, device, reps=reps, graph=graph)
            rows.append(_row(case, direction, device, timings, watch))
        return rows
    finally:
        if watch is not None:
            watch.close()


def _row(case: Case, direction: str, device: torch.device, timings: dict, watch: CompileWatch | None) -> dict:
    triton = timings["triton"]["median_ms"]
    row = {
        "op": case.op,
        "case": case.label,
        "pass": direction,
        "device": device.type,
        **{f"{name}_ms": t["median_ms"] for name, t in timings.items()},
        **{f"{name}_launch_ms": t["launch_ms"] for name, t in timings.items()},
        "timing": timings["triton"]["method"],
        "input_sets": timings["triton"]["input_sets"],
        "speedup_vs_eager": timings["eager"]["median_ms"] / triton,
    }
    if "compiled_eager" in timings:
        row["speedup_vs_compiled"] = timings["compiled_eager"]["median_ms"] / triton
        stats = watch.stats()
        row["compiled_twin_graphs"], row["compiled_twin_graph_breaks"] = stats["compiled_graphs"], stats["graph_breaks"]
    errors = {name: t["graph_error"] for name, t in timings.items() if "graph_error" in t}
    if errors:
        row["graph_errors"] = "; ".join(f"{name}: {error}" for name, error in errors.items())[:500]
    if direction == "fwd":
        peak = peak_bandwidth_gbps(device)
        row["triton_GBps"] = case.bytes_moved / triton / 1e6
        row["pct_peak_bandwidth"] = 100 * row["triton_GBps"] / peak if peak else None
    return row


def run_cases(
    cases: list[Case],
    device: torch.device,
    compile_twin: bool,
    reps: int,
    backend: str = "inductor",
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every case in turn -> rows (``on_row`` sees each as it is made, so a time limit keeps what was done)."""
    from kernels.registry import REGISTRY

    implementation_pairs(cases[0])  # registers the ops
    missing = set(REGISTRY) - {case.op for case in cases}
    if missing:  # every registered kernel is benchmarked by construction
        raise RuntimeError(f"bench_kernels: expected a case for every registered op, got none for {sorted(missing)}")
    rows = []
    for case in cases:
        for row in measure_case(case, device, compile_twin, reps, backend):
            rows.append(row)
            log_row(row)
            if on_row:
                on_row(row)
    return rows


def failed_checks(rows: list[dict]) -> list[str]:
    return [f"{row['op']}/{row['case']}" for row in rows if row["pass"] == "check"]


def run(
    smoke: bool,
    compile_twin: bool,
    out_dir: Path | None = None,
    reps: int | None = None,
    shapes: str | None = None,
    backend: str | None = None,
) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    reps = reps or (3 if smoke else 20)
    backend = backend or ("inductor" if device.type == "cuda" else "aot_eager")
    rows = run_cases(build_cases(smoke, shapes), device, compile_twin, reps, backend)
    env = {
        **environment(device),
        "smoke": smoke,
        "compile_backend": backend if compile_twin else None,
        "note": "CPU smoke run under the Triton interpreter: timings are not kernel speeds" if smoke else "",
    }
    paths = write_results(
        "bench_kernels" + ("_smoke" if smoke else ""), rows, env, out_dir or Path(__file__).parent / "results"
    )
    print(f"wrote {paths[0]} and {paths[1]}")
    failed = failed_checks(rows)
    if failed:
        raise SystemExit(
            f"bench_kernels: expected every implementation to equal its twin, got differences in "
            f"{failed}; the kernels are wrong there (see the 'check' rows)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under the Triton interpreter")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default=None, help="shape set (default: full on a GPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor; CPU aot_eager)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke on a CPU (interpreter, tiny shapes)")
    run(args.smoke, not args.no_compile, args.out, args.reps, args.shapes, args.backend)


if __name__ == "__main__":
    main()
