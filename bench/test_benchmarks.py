"""pytest-benchmark cases: every registered kernel (Triton, eager twin, compiled twin; forward, and
forward+backward where it has a gradient) and the training step (reference, engine without compile,
engine). See bench/conftest.py for how to run, save and compare them.

Each case is checked against the twin before it is timed, runs over rotating input sets larger than
twice the L2 (``bench.harness.input_set_count``), and is timed with a timer that synchronises the GPU
(``bench.harness.cuda_synchronized_timer``), so a round's time is the device's. Unlike the harness's
CUDA-graph replay, a round here includes Python and the launches: for microsecond ops that is what an
eager step pays, and the trend across commits is what these numbers are for.
"""

import itertools

import pytest

pytest.importorskip("pytest_benchmark", reason="pip install pytest-benchmark (in the test extra)")

import torch  # noqa: E402

from bench import bench_kernels, bench_train  # noqa: E402
from bench.harness import CompileWatch, cuda_synchronized_timer, input_set_count, peak_tflops  # noqa: E402
from infmae.config import preset  # noqa: E402
from kernels import host_sync_guards_off  # noqa: E402


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        device_is_gpu = torch.cuda.is_available()
        shapes = metafunc.config.getoption("--bench-shapes") or ("train" if device_is_gpu else "tiny")
        cases = bench_kernels.build_cases(shapes=shapes)
        metafunc.parametrize("case", cases, ids=[f"{c.op}-{c.label}" for c in cases])


@pytest.mark.benchmark(timer=cuda_synchronized_timer)
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("implementation", bench_kernels.IMPLEMENTATIONS)
def test_kernel(benchmark, case, implementation, direction, device, backend):
    if direction == "fwd+bwd" and not case.backward:
        pytest.skip(f"{case.op} has no gradient")
    fast, twin = bench_kernels.implementation_pairs(case)
    torch.manual_seed(0)
    first, kwargs = case.make(device)
    input_sets = [first] + [case.make(device)[0] for _ in range(input_set_count(case.bytes_moved, device) - 1)]
    if case.backward:
        input_sets = [bench_kernels.requiring_grad(args) for args in input_sets]
    with CompileWatch(f"{case.op} {implementation}", allow_graph_breaks=True) as watch, host_sync_guards_off():
        fn = {"triton": fast, "eager": twin}.get(implementation) or torch.compile(twin, dynamic=False, backend=backend)
        args = input_sets[0]
        bench_kernels.check_against_twin(case.op, implementation, fn(*args, **kwargs), args, twin(*args, **kwargs))
        call = bench_kernels.callers_by_direction(fn, kwargs, args)[direction]
        call(args)  # compiles (the compiled twin's backward too) before timing
        rotation = itertools.cycle(input_sets)
        benchmark.group = f"{case.op} {case.label} {direction}"
        benchmark.extra_info.update(op=case.op, case=case.label, implementation=implementation, direction=direction)
        benchmark.extra_info.update(bytes_moved=case.bytes_moved, input_sets=len(input_sets))
        with watch.timing():
            benchmark(lambda: call(next(rotation)))


@pytest.mark.benchmark(timer=cuda_synchronized_timer, group="train step")
@pytest.mark.parametrize("variant", bench_train.VARIANTS)
def test_train_step(benchmark, variant, device, backend, train_batch):
    base = preset("paper_base" if device.type == "cuda" else "demo").model
    engine = variant != "reference"
    config, train = bench_train.variant_configs(variant, base, device)
    compile_backend = backend if train is not None and train.compile else None
    with CompileWatch(f"train step {variant} B={train_batch}") as watch, host_sync_guards_off():
        model, step = bench_train.build_step(
            config, engine, device, train_batch, compile_backend=compile_backend, train=train
        )
        for _ in range(3 if device.type == "cuda" else 1):  # compiles, then warms up
            step()
        with watch.timing():
            benchmark(step)
        stats = watch.stats()
    median_s = benchmark.stats.stats.median
    img_per_s = train_batch / median_s
    peak = peak_tflops(device)
    model_flops, executed_flops = 3 * model.flops_per_image(), 3 * model.executed_flops_per_image()
    benchmark.extra_info.update(
        variant=variant,
        batch=train_batch,
        img_per_s=img_per_s,
        mfu=model_flops * img_per_s / 1e12 / peak if peak else None,
        executed_flop_utilization=executed_flops * img_per_s / 1e12 / peak if peak else None,
        compiled_graphs=stats["compiled_graphs"],
    )
