"""Kernel benchmark: every registered Triton op vs its eager twin vs ``torch.compile`` of the twin.

    python bench/bench_kernels.py                 # on a GPU: training and large-image shapes
    python bench/bench_kernels.py --smoke         # on a CPU: tiny shapes under TRITON_INTERPRET=1

For each case the three implementations are first checked equal (integer outputs exactly), then timed
side by side in this run (median of many runs, CUDA events on GPU). Memory-bound ops report GB/s from the
bytes they must move and the % of the device's peak DRAM bandwidth. Results go to bench/results/.
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

from bench.harness import environment, peak_bandwidth_gbps, time_ms, write_results  # noqa: E402
from kernels import reference  # noqa: E402

# scores from bf16 images are exact fp32 sums in both paths up to summation order (see tests/tolerances.py)
SCORE_TOL = {"atol": 1e-4, "rtol": 1e-5}
# depthwise tile conv, bf16 tiles: the kernel sums in fp32 and rounds once, so it is compared with the fp32
# twin (tests/tolerances.py "triton_depthwise_tiles", bf16: half an ulp, 2x margin); the
# compiled twin, which rounds the weights to bf16 as the eager twin does, is compared with the eager twin
DEPTHWISE_KERNEL_TOL = {"atol": 1e-4, "rtol": 2**-8}
DEPTHWISE_TWIN_TOL = {"atol": 5e-2, "rtol": 2e-2}


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


def build_cases(smoke: bool) -> list[Case]:
    # (label, B, C, H, W, D tokens, D decoder)
    shapes = (
        [("smoke_C3", 2, 3, 32, 48, 32, 16), ("smoke_C1_L40", 1, 1, 64, 160, 24, 8)]
        if smoke
        else [
            ("train_224_C3", 256, 3, 224, 224, 768, 512),
            ("train_224_C1", 256, 1, 224, 224, 768, 512),
            ("large_1024_C1", 32, 1, 1024, 1024, 768, 512),
        ]
    )
    cases = []
    for label, B, C, H, W, D, Dd in shapes:
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
        for T, width in ((4, 256 if not smoke else 24), (2, 384 if not smoke else 40)):
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
        tiles, table, weight, bias = args
        want = reference.depthwise_conv5x5_tiles(tiles.float(), table, weight.float(), bias.float())
        torch.testing.assert_close(got.float(), want, **DEPTHWISE_KERNEL_TOL)
    else:
        _check_equal(op, got, twin_out)


def _with_backward(fn: Callable, args: tuple) -> Callable:
    """fwd + bwd of ``fn`` with inputs that require grad and a fixed output gradient."""
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    leaves = [[t.detach().requires_grad_() for t in a] if isinstance(a, list) else a for a in leaves]
    grads = [torch.ones_like(t) for t in _outputs(fn(*leaves))]

    def step():
        torch.autograd.backward(_outputs(fn(*leaves)), grads)

    return step


def run(smoke: bool, compile_twin: bool, out_dir: Path | None = None, reps: int | None = None) -> list[dict]:
    from kernels import triton_ops  # noqa: F401  (registers the ops)
    from kernels.registry import REGISTRY

    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    reps = reps or (3 if smoke else 50)
    peak = peak_bandwidth_gbps(device)
    rows, failed = [], []
    cases = build_cases(smoke)
    missing = set(REGISTRY) - {case.op for case in cases}
    if missing:  # every registered kernel is benchmarked by construction
        raise RuntimeError(f"bench_kernels: expected a case for every registered op, got none for {sorted(missing)}")
    for case in cases:
        fast, twin = COMPOSITES[case.op] if case.op in COMPOSITES else (REGISTRY[case.op].fast, REGISTRY[case.op].twin)
        torch.manual_seed(0)
        args, kwargs = case.make(device)
        implementations = {"triton": fast, "eager": twin}
        if compile_twin:
            torch._dynamo.reset()  # a fresh cache per case: past shapes must not use up the recompile limit
            implementations["compiled_eager"] = torch.compile(twin, dynamic=False)
        reference_out = twin(*args, **kwargs)
        try:
            for name, fn in implementations.items():
                check_against_twin(case.op, name, fn(*args, **kwargs), args, reference_out)
        except AssertionError as error:  # recorded, not timed: a speed of a wrong result means nothing
            rows.append(
                {
                    "op": case.op,
                    "case": case.label,
                    "pass": "check",
                    "device": device.type,
                    "error": f"{name} differs from the twin: {error}"[:500],
                }
            )
            print(f"{case.op} {case.label}: {name} differs from the twin, not timed: {error}", file=sys.stderr)
            failed.append(f"{case.op}/{case.label}/{name}")
            continue
        for direction in ("fwd", "fwd+bwd") if case.backward else ("fwd",):
            timings = {}
            for name, fn in implementations.items():
                call = (
                    (lambda fn=fn, args=args, kwargs=kwargs: fn(*args, **kwargs))
                    if direction == "fwd"
                    else _with_backward(fn, args)
                )
                timings[name] = time_ms(call, device, warmup=1 if smoke else 10, reps=reps)["median_ms"]
            row = {
                "op": case.op,
                "case": case.label,
                "pass": direction,
                "device": device.type,
                **{f"{name}_ms": ms for name, ms in timings.items()},
                "speedup_vs_eager": timings["eager"] / timings["triton"],
            }
            if compile_twin:
                row["speedup_vs_compiled"] = timings["compiled_eager"] / timings["triton"]
            if direction == "fwd":
                row["triton_GBps"] = case.bytes_moved / timings["triton"] / 1e6
                row["pct_peak_bandwidth"] = 100 * row["triton_GBps"] / peak if peak else None
            rows.append(row)
            print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    env = {
        **environment(device),
        "smoke": smoke,
        "note": "CPU smoke run under the Triton interpreter: timings are not kernel speeds" if smoke else "",
    }
    paths = write_results(
        "bench_kernels" + ("_smoke" if smoke else ""), rows, env, out_dir or Path(__file__).parent / "results"
    )
    print(f"wrote {paths[0]} and {paths[1]}")
    if failed:
        raise SystemExit(
            f"bench_kernels: expected every implementation to equal its twin, got differences in "
            f"{failed}; the kernels are wrong there (see the 'check' rows)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under the Triton interpreter")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke on a CPU (interpreter, tiny shapes)")
    run(args.smoke, not args.no_compile, args.out, args.reps)


if __name__ == "__main__":
    main()
