"""Host-side ops per training step, reference vs engine configuration, counted by the CPU profiler.

On a GPU every aten compute op the host dispatches is (at least) one kernel launch, and the custom-op host
path costs several times a plain aten call, so the count of ops dispatched per step bounds the step's
launch overhead. This counts them on the CPU (``torch.profiler``), for the forward and backward of one
training step of the demo preset's model at ``--batch`` images (the optimizer step, one fused AdamW on CUDA,
is left out):

- ``reference``: ``train.engine=reference``, the specification's eager NCHW fp32 model;
- ``channels_last``: the engine's memory format alone (the LayerNorm permutes become views: no copies);
- ``engine``: ``train.engine=engine`` resolved for the CPU (``resolve_for_device``: per-block
  ``torch.compile`` with static shapes, inductor, plus channels-last); bf16 and DALI are CUDA-only.

Columns: ``host_ops`` (aten ops dispatched from Python or the autograd engine: no aten op above them),
``all_aten_ops`` (every aten op, nested ones included), ``copies`` (aten::copy_/contiguous/clone at the top),
``compiled_graph_calls`` (compiled blocks run, each replacing the ops inside it by one call of fused
kernels), ``inductor_kernels_generated`` (fused kernels inductor wrote for the whole model, fwd+bwd, once).
Each configuration's first-step loss is checked against the reference's (the table's compiled-step
tolerance) before counting. The counts do not depend on the machine's load; only the compile time does.

    python -m bench.bench_op_count [--batch 4] [--steps 3]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench.harness import environment, write_results
from infmae.config import apply_overrides, preset, resolve_for_device
from infmae.model.infmae import InfMAE
from infmae.training.engine import prepare_model, to_model_input
from infmae.training.parallel import parallelize

COPY_OPS = ("aten::copy_", "aten::contiguous", "aten::clone")
CONFIGURATIONS = {
    "reference": ["train.engine=reference"],
    "channels_last": ["train.engine=reference", "train.channels_last=true"],
    "engine": ["train.engine=engine"],
}


def build(variant: str, encoder: str):
    """-> (model, optimizer, train config) of the demo preset in ``variant``, resolved for the CPU."""
    overrides = [*CONFIGURATIONS[variant], f"model.encoder={encoder}", "model.kernels=reference"]
    config = resolve_for_device(apply_overrides(preset("demo"), overrides), "cpu")
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = parallelize(prepare_model(InfMAE(config.model), config.train, device), config.train, None, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    return model, optimizer, config.train


def forward_backward(model, images) -> torch.Tensor:
    loss = model(images).loss
    loss.backward()
    return loss.detach()


def optimizer_step(optimizer) -> None:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _under(event, name: str) -> bool:
    while event is not None:
        if event.name == name:
            return True
        event = event.cpu_parent
    return False


def _is_top_level(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def count(variant: str, encoder: str, batch: int, steps: int, reference_loss: float | None) -> dict:
    import torch._inductor.metrics as inductor_metrics

    torch._dynamo.reset()
    inductor_metrics.reset()
    model, optimizer, train = build(variant, encoder)
    gray = torch.randn(batch, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    images = to_model_input(gray.expand(-1, 3, -1, -1).contiguous(), train, model)
    first_loss = float(forward_backward(model, images))  # warm-up (compiles), checked against the reference
    # relative 1e-5: tests/tolerances.py's 'compiled_step_loss' (bench/ imports no test code)
    if reference_loss is not None and abs(first_loss - reference_loss) > 1e-5 * abs(reference_loss):
        raise AssertionError(f"{variant}/{encoder}: first-step loss {first_loss} != reference {reference_loss}")
    optimizer_step(optimizer)
    forward_backward(model, images)
    optimizer_step(optimizer)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            forward_backward(model, images)
            with torch.profiler.record_function("optimizer"):  # left out of the counts below
                optimizer_step(optimizer)
    events = [e for e in prof.events() if e.device_type.name == "CPU" and not _under(e, "optimizer")]
    aten = [e for e in events if e.name.startswith("aten::")]
    top = [e for e in aten if _is_top_level(e)]
    compiled = [e for e in events if "CompiledFxGraph" in e.name or e.name.startswith("Torch-Compiled Region")]
    return {
        "variant": variant,
        "encoder": encoder,
        "batch": batch,
        "compile": train.compile,
        "channels_last": train.channels_last,
        "host_ops": len(top) / steps,
        "all_aten_ops": len(aten) / steps,
        "copies": sum(e.name in COPY_OPS for e in top) / steps,
        "compiled_graph_calls": len(compiled) / steps,
        "inductor_kernels_generated": inductor_metrics.generated_kernel_count,
        "first_loss": round(first_loss, 6),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--encoders", default="dense,sparse")
    parser.add_argument("--variants", default=",".join(CONFIGURATIONS), help="reference first")
    parser.add_argument("--no-write", action="store_true", help="print only (the smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # counts do not depend on threads; keeps the loaded machine usable
    rows = []
    for encoder in args.encoders.split(","):
        reference_loss = None
        for variant in args.variants.split(","):
            row = count(variant, encoder, args.batch, args.steps, reference_loss)
            reference_loss = reference_loss if reference_loss is not None else row["first_loss"]
            base = next(r for r in rows if r["encoder"] == encoder) if variant != "reference" else row
            row["host_ops_vs_reference"] = round(row["host_ops"] / base["host_ops"], 3)
            rows.append(row)
            ratio = row["host_ops_vs_reference"]
            print(
                f"{encoder:6s} {variant:13s}: {row['host_ops']:7.1f} host ops/step ({ratio:.2f}x), "
                f"{row['all_aten_ops']:7.1f} aten ops, {row['copies']:5.1f} copies, "
                f"{row['compiled_graph_calls']:4.1f} compiled calls"
            )
    if not args.no_write:
        json_path, _ = write_results("bench_op_count", rows, environment(torch.device("cpu")))
        print(f"wrote {json_path}")
    return rows


if __name__ == "__main__":
    main()
