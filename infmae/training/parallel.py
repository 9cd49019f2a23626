"""Parallelism applied from outside the model: ``parallelize(model, config, mesh)``.

In this order (as torchtitan does): activation checkpointing per block (optional), ``torch.compile``
per block (optional), then data parallelism: FSDP2 ``fully_shard`` (default) or DDP (to compare).

Sharding units (``train.parallel=fsdp``). The model is small (~97M parameters at base size), so a few
large units beat one unit per layer (fewer collectives, each big enough to use the links):
- conv stage 1 (``patch_embed1``, ``blocks1``, ``stage1_output_decode``) as one unit;
- conv stage 2 (``patch_embed2``, ``blocks2``, ``stage2_output_decode``) as one unit;
- the ViT blocks in groups of ``train.fsdp_group`` (default 2: ~14M parameters per unit at base size);
- the decoder blocks as one unit; the rest (``patch_embed3/4``, norms, embeddings, ``decoder_pred``,
  ``mask_token``) in the root unit.
``reshard_after_forward`` defaults to False: parameters stay gathered between forward and backward
(the whole model is ~0.4 GB in fp32, cheap within a node; it saves one all-gather per unit).

Precision: on CUDA with ``train.precision=bf16`` FSDP computes in bf16 and reduces gradients in fp32
(``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``); master weights and the optimizer stay
fp32. On the CPU (gloo) everything is fp32: CPU bf16 matmuls are slow and the CPU path is the one the
tests compare bit-for-bit against a single process.

The frozen score conv (``patch_embed``) holds buffers, and ``pos_embed`` / ``decoder_pos_embed`` are
parameters with ``requires_grad=False``: FSDP2 shards them like the others and the optimizer never
sees them.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn

from infmae.config import TrainConfig
from infmae.training.engine import compile_options

log = logging.getLogger(__name__)

# FSDP2 warns when a unit returns a view; our units never modify their outputs in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def _blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    return [
        (getattr(model, name), i)
        for name in ("blocks1", "blocks2", "blocks3", "decoder_blocks")
        for i in range(len(getattr(model, name)))
    ]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each conv and ViT block's activations in the backward pass (non-reentrant).
    The wrapper's state-dict hooks strip its prefix, so checkpoint keys do not change."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks, i in _blocks(model):
        blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)


def apply_compile(model: nn.Module, backend: str = "inductor", **options) -> None:
    """``torch.compile`` each block in place (``Module.compile``: parameter names unchanged). The
    masking and gathers between blocks have data-dependent shapes and stay eager. ``backend``: the
    trainer's is inductor; the benchmarks' CPU dry run takes ``aot_eager`` (no code generation).
    ``options``: further ``torch.compile`` arguments (mode, dynamic), see ``engine.compile_options``."""
    for blocks, i in _blocks(model):
        blocks[i].compile(backend=backend, **options)


def apply_fsdp(model: nn.Module, config: TrainConfig, mesh, device: torch.device) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda" and config.precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    kwargs = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)
    units: list[list[nn.Module]] = []
    for stage in (1, 2):
        # the modules that run forward, not their ModuleList (which never does): FSDP2 hooks a unit's
        # forward to reshard and to prepare its backward
        group = [
            getattr(model, f"patch_embed{stage}"),
            *getattr(model, f"blocks{stage}"),
            getattr(model, f"stage{stage}_output_decode"),
        ]
        units.append(group)
    vit = list(model.blocks3)
    size = config.fsdp_group
    units += [vit[i : i + size] for i in range(0, len(vit), size)]
    if len(model.decoder_blocks):
        units.append(list(model.decoder_blocks))
    for unit in units:
        fully_shard(unit if len(unit) > 1 else unit[0], **kwargs)
    # the root keeps its fp32 input images: the loss target is built from them (the trainer's bf16
    # autocast casts them for the first conv)
    root_policy = MixedPrecisionPolicy(
        param_dtype=policy.param_dtype, reduce_dtype=policy.reduce_dtype, cast_forward_inputs=False
    )
    fully_shard(model, **{**kwargs, "mp_policy": root_policy})
    log.info(
        "FSDP2: %d units + root, reshard_after_forward=%s, params %s, reduce fp32",
        len(units),
        config.reshard_after_forward,
        policy.param_dtype or "fp32",
    )


def data_parallel_mesh(device: torch.device, world_size: int):
    """A 1-D DeviceMesh named 'dp' over the ``world_size`` ranks of the process group."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp",))


def parallelize(model: nn.Module, config: TrainConfig, mesh, device: torch.device) -> nn.Module:
    """Apply activation checkpointing, per-block compile, then FSDP2 or DDP. ``mesh`` is a 1-D
    DeviceMesh over the data-parallel ranks (``None``: a single process, no data parallelism).
    Returns the model to train (the same object, except under DDP, which wraps it)."""
    if config.activation_checkpointing:
        apply_activation_checkpointing(model)
    if config.compile:
        apply_compile(model, **compile_options(config, device.type))
    mode = config.parallel if mesh is not None else "none"
    if mode == "fsdp":
        apply_fsdp(model, config, mesh, device)
    elif mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(
            model, device_ids=ids, process_group=mesh.get_group(), broadcast_buffers=False, gradient_as_bucket_view=True
        )
        log.info("DDP over %d ranks", mesh.size())
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The InfMAE module under a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------------
# gradients of a parallelized model (``mode``: the parallelism in use, 'fsdp', 'ddp' or 'none')
# ---------------------------------------------------------------------------------------------
def gradient_sync(model: nn.Module, mode: str, sync: bool):
    """Context for one micro-batch's backward: reduce gradients only on the last micro-batch of a step
    (accumulate locally before it)."""
    if mode == "fsdp":
        model.set_requires_gradient_sync(sync)
    elif mode == "ddp" and not sync:
        return model.no_sync()
    return nullcontext()


def grad_norm(model: nn.Module, mode: str) -> torch.Tensor:
    """Global gradient L2 norm (over every rank's shards under FSDP: one all-reduce)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if mode != "fsdp":
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    local = torch.stack([torch.linalg.vector_norm(g.to_local().float()) for g in grads]).square().sum()
    dist.all_reduce(local, op=dist.ReduceOp.SUM)
    return local.sqrt()


def clip_gradients(model: nn.Module, mode: str, max_norm: float) -> torch.Tensor:
    """Scale the gradients to a global norm of at most ``max_norm``. -> the norm before clipping."""
    if mode != "fsdp":
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = grad_norm(model, mode)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.to_local().mul_(scale)
    return norm
