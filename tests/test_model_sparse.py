"""The sparse encoder (infmae/model/sparse.py) against the dense reference: latent, loss and every
parameter's gradient, at 224 px and non-square sizes, batch 1 and larger, planted masks (image border, every
neighbour configuration), fp64 (exact up to rounding), fp32 and bf16 autocast; a few training steps; the
executed FLOPs; the Triton depthwise op in the model (interpreter)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from infmae.config import ModelConfig
from infmae.model import flops
from infmae.model.infmae import InfMAE
from kernels import reference
from kernels.reference import MaskOutputs
from tests.helpers import TINY_MODEL
from tests.neighbour_configs import all_neighbour_configurations
from tests.tolerances import TOLERANCES

NARROW = dict(
    embed_dims=(16, 24, 32), depths=(2, 2, 1), num_heads=2, decoder_embed_dim=32, decoder_num_heads=2, decoder_depth=1
)
# the 768 x 768 image of the every-neighbour-configuration test: a width that keeps it cheap
THIN = dict(
    embed_dims=(8, 8, 16), depths=(1, 1, 1), num_heads=2, decoder_embed_dim=16, decoder_num_heads=2, decoder_depth=1
)


def pair(dtype=torch.float32, **config):
    """(dense, sparse) models with the same parameters; the sparse one loads the dense state dict strictly."""
    torch.manual_seed(0)
    dense = InfMAE(ModelConfig(**config, encoder="dense")).to(dtype)
    sparse = InfMAE(ModelConfig(**config, encoder="sparse")).to(dtype)
    sparse.load_state_dict(dense.state_dict(), strict=True)
    return dense, sparse


def planted_masking(visible_BL: torch.Tensor, grid_hw, generator) -> MaskOutputs:
    """A masking with the given visible patches (the same count per row), ids_keep in a random rank order."""
    B, L = visible_BL.shape
    keep = [torch.nonzero(row).flatten() for row in visible_BL]
    ids_keep = torch.stack([k[torch.randperm(len(k), generator=generator)] for k in keep])
    masked = [torch.nonzero(~row).flatten() for row in visible_BL]
    ids_shuffle = torch.stack([torch.cat([k, m]) for k, m in zip(ids_keep, masked)])
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = (~visible_BL).float()
    return MaskOutputs(ids_keep, ids_restore, mask, *reference.visibility_maps(mask, grid_hw))


def loss_and_grads(model, imgs, masking):
    """-> latent, loss and {name: grad} of the model's forward with a given masking."""
    model.zero_grad(set_to_none=True)
    grid = (imgs.shape[2] // 16, imgs.shape[3] // 16)
    latent, _ = model.forward_encoder(imgs, masking)
    if bool(masking.mask.any()):
        loss = model.forward_loss(imgs, model.forward_decoder(latent, masking.ids_keep, grid), masking.mask)
    else:  # nothing masked: the MAE loss is 0/0, so a loss of the latent instead (the encoder's gradients)
        loss = latent.pow(2).mean()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return latent.detach(), loss.detach(), grads


def assert_same(dense, sparse, imgs, masking, name):
    """Latent and loss within (atol, rtol); every gradient within atol_grad * max |dense gradient|."""
    atol, rtol = TOLERANCES[(name, imgs.dtype)]
    grad_atol = TOLERANCES[(name + "_grad", imgs.dtype)][0]
    latent_d, loss_d, grads_d = loss_and_grads(dense, imgs, masking)
    latent_s, loss_s, grads_s = loss_and_grads(sparse, imgs, masking)
    torch.testing.assert_close(latent_s, latent_d, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_s, loss_d, atol=atol, rtol=rtol)
    assert grads_d.keys() == grads_s.keys() and any(k.startswith("blocks1.") for k in grads_d)
    for key, g in grads_d.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(grads_s[key], g, atol=grad_atol * scale + 1e-30, rtol=0, msg=key)
    return grads_d


# ---------------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_224px_real_widths_batch1_fp32(generator):
    """The released widths (256/384/768) on the 224 px grid, B=1; ViT and decoder depth cut to 1 for time."""
    dense, sparse = pair(img_size=(224, 224), depths=(2, 2, 1), decoder_depth=1)
    imgs = torch.randn(1, 3, 224, 224, generator=generator)
    assert_same(dense, sparse, imgs, dense.masking(imgs), "sparse_encoder")


@pytest.mark.parametrize(
    "size,batch,score,order",
    [
        ((224, 224), 2, "intensity", "descending"),
        ((96, 160), 3, "official", "ascending"),
        pytest.param((96, 160), 1, "intensity", "ascending", marks=pytest.mark.slow),
        pytest.param((160, 96), 2, "official", "descending", marks=pytest.mark.slow),
    ],
)
def test_narrow_model_fp32_both_score_modes(size, batch, score, order, generator):
    dense, sparse = pair(img_size=size, score=score, order=order, **NARROW)
    imgs = torch.randn(batch, 3, *size, generator=generator)
    masking = dense.masking(imgs)
    assert torch.equal(masking.ids_keep, sparse.masking(imgs).ids_keep)
    assert_same(dense, sparse, imgs, masking, "sparse_encoder")
    if size == (224, 224):  # the models' own forward (masking included) gives the same loss
        torch.testing.assert_close(sparse(imgs).loss, dense(imgs).loss, **_tol("sparse_encoder"))


def _tol(name, dtype=torch.float32):
    atol, rtol = TOLERANCES[(name, dtype)]
    return {"atol": atol, "rtol": rtol}


def _border_and_random_masks(h, w, generator):
    """Rows of visibility with the same count: every border patch visible and the interior masked; the border
    masked and the interior visible; the four corners only plus one; everything visible; random halves."""
    grid = torch.zeros(h, w, dtype=torch.bool)
    border = grid.clone()
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    n = int(border.sum())
    interior = torch.nonzero(~border.flatten()).flatten()[:n]
    rows = [border.flatten(), torch.zeros(h * w, dtype=torch.bool).index_fill_(0, interior, True)]
    corners = torch.zeros(h * w, dtype=torch.bool)
    corners[[0, w - 1, (h - 1) * w, h * w - 1]] = True
    extra = torch.nonzero(~corners).flatten()[torch.randperm(h * w - 4, generator=generator)[: n - 4]]
    rows.append(corners.index_fill(0, extra, True))
    for _ in range(2):
        chosen = torch.randperm(h * w, generator=generator)[:n]
        rows.append(torch.zeros(h * w, dtype=torch.bool).index_fill_(0, chosen, True))
    return torch.stack(rows)


@pytest.mark.slow
def test_fp64_planted_masks_border_and_all_visible(generator):
    """fp64: the sparse path is the dense one up to rounding (~1e-15), for masks at the border, in the
    interior, at the corners, random, and nothing masked at all."""
    size = (96, 160)
    h, w = 6, 10
    dense, sparse = pair(torch.float64, img_size=size, **THIN)
    imgs = torch.randn(5, 3, *size, generator=generator, dtype=torch.float64)
    assert_same(
        dense,
        sparse,
        imgs,
        planted_masking(_border_and_random_masks(h, w, generator), (h, w), generator),
        "sparse_encoder",
    )
    everything = torch.ones(2, h * w, dtype=torch.bool)
    assert_same(dense, sparse, imgs[:2], planted_masking(everything, (h, w), generator), "sparse_encoder")
    one = torch.zeros(2, h * w, dtype=torch.bool)
    one[0, 0] = one[1, 37] = True
    assert_same(dense, sparse, imgs[:2], planted_masking(one, (h, w), generator), "sparse_encoder")


@pytest.mark.slow
def test_fp64_every_neighbour_configuration(generator):
    visible = all_neighbour_configurations()
    masking = planted_masking(visible, (48, 48), generator)
    neighbours = reference.tile_neighbours(masking.ids_keep, (48, 48))
    present = neighbours[0] >= 0  # [K,9]
    patterns = {tuple(row.tolist()) for row in present}
    assert len(patterns) == 256  # with the tile itself always present
    dense, sparse = pair(torch.float64, img_size=(768, 768), **THIN)
    imgs = torch.randn(1, 3, 768, 768, generator=generator, dtype=torch.float64)
    assert_same(dense, sparse, imgs, masking, "sparse_encoder")


def test_bf16_autocast(generator):
    dense, sparse = pair(img_size=(96, 160), **NARROW)
    imgs = torch.randn(2, 3, 96, 160, generator=generator)
    masking = dense.masking(imgs)
    # oneDNN's bf16 conv is off by up to ~3 from the exactly rounded result on some AVX-512 CPUs (measured on
    # the CI machine: a 4x4/stride-4 conv, 2.9 vs 0.004 without oneDNN): the dense reference runs without it
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.backends.mkldnn.flags(enabled=False):
        latent_d, loss_d, _ = loss_and_grads(dense, imgs, masking)
        latent_s, loss_s, _ = loss_and_grads(sparse, imgs, masking)
    atol, rtol = TOLERANCES[("sparse_encoder", torch.bfloat16)]
    torch.testing.assert_close(latent_s.float(), latent_d.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_s, loss_d, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# training, checkpoints, FLOPs, config
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_steps_sparse_match_dense():
    """A few AdamW steps from the same seed: same masks exactly, losses within the fp32 tolerance."""
    histories = {}
    for encoder in ("dense", "sparse"):
        torch.manual_seed(0)
        model = InfMAE(ModelConfig(img_size=(96, 160), **NARROW, encoder=encoder))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        data = torch.Generator().manual_seed(1)
        history = []
        for _ in range(3):
            out = model(torch.randn(2, 3, 96, 160, generator=data))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            history.append((out.ids_keep.clone(), out.loss.item()))
        histories[encoder] = history
    for (ids_d, loss_d), (ids_s, loss_s) in zip(histories["dense"], histories["sparse"]):
        assert torch.equal(ids_d, ids_s)
        assert loss_s == pytest.approx(loss_d, rel=TOLERANCES[("sparse_training_loss", torch.float32)][1])


def test_state_dicts_are_interchangeable():
    dense, sparse = pair(img_size=(96, 160), **NARROW)
    assert list(dense.state_dict()) == list(sparse.state_dict())
    dense.load_state_dict(sparse.state_dict(), strict=True)


def test_executed_flops_are_counted_and_about_half_at_224():
    base = ModelConfig()
    model_flops = flops.forward_flops(base, (224, 224))
    executed = flops.sparse_forward_flops(base, (224, 224))
    assert model_flops == 26_565_633_024
    assert 3 * executed / 1e9 == pytest.approx(43.6, abs=0.1) and 3 * model_flops / 1e9 == pytest.approx(79.7, abs=0.1)
    # what torch's counter sees in the sparse forward (the score filter is counted as a conv, at most)
    torch.manual_seed(0)
    model = InfMAE(ModelConfig(img_size=(96, 160), **NARROW, encoder="sparse"))
    assert model.flops_per_image() == flops.forward_flops(model.config, (96, 160))
    assert model.executed_flops_per_image() == flops.sparse_forward_flops(model.config, (96, 160))
    counter = FlopCounterMode(display=False)
    # the math SDPA backend decomposes into counted matmuls; CPU's fused kernel is not in the counter
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.randn(2, 3, 96, 160))
    counted = counter.get_total_flops() / 2
    # the depthwise twin runs conv2d on (T+4)^2 windows: same multiply-adds per output pixel (25 * C)
    assert (
        model.executed_flops_per_image()
        <= counted
        <= model.executed_flops_per_image() + flops.score_filter_flops(model.config, (96, 160))
    )


def test_encoder_config_is_validated():
    assert ModelConfig().encoder == "dense"
    with pytest.raises(ValueError, match=r"config: expected model.encoder one of \('dense', 'sparse'\), got 'spars'"):
        ModelConfig(encoder="spars")


# ---------------------------------------------------------------------------------------------
# the Triton depthwise op inside the model (interpreter on CPU)
# ---------------------------------------------------------------------------------------------
def test_sparse_model_with_triton_kernels_matches_reference(generator):
    tiny = dict(TINY_MODEL, img_size=(48, 64), encoder="sparse")
    torch.manual_seed(0)
    ref_model = InfMAE(ModelConfig(**tiny, kernels="reference"))
    fast_model = InfMAE(ModelConfig(**tiny, kernels="triton"))
    fast_model.load_state_dict(ref_model.state_dict())
    imgs = torch.randn(2, 3, 48, 64, generator=generator)
    masking = ref_model.masking(imgs)
    latent_r, loss_r, grads_r = loss_and_grads(ref_model, imgs, masking)
    latent_f, loss_f, grads_f = loss_and_grads(fast_model, imgs, masking)
    atol, rtol = TOLERANCES[("sparse_encoder", torch.float32)]
    grad_atol = TOLERANCES[("sparse_encoder_grad", torch.float32)][0]
    torch.testing.assert_close(latent_f, latent_r, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_f, loss_r, atol=atol, rtol=rtol)
    for key, g in grads_r.items():
        torch.testing.assert_close(grads_f[key], g, atol=grad_atol * float(g.abs().max()) + 1e-30, rtol=0, msg=key)


def _saved_tensor_count(model, imgs) -> int:
    """How many tensors the forward saves for the backward (activation checkpointing saves fewer)."""
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(imgs).loss
    loss.backward()
    return count


@pytest.mark.slow
def test_per_block_checkpointing_and_compile_apply_to_the_sparse_conv_stages(monkeypatch):
    """The sparse path calls each CBlock as a module (tile mode), so ``parallelize``'s per-block wrappers
    act on it: checkpointing cuts the saved activations and keeps every gradient bit-equal; compile
    traces the tile-mode blocks (with dynamo's eager backend here: the wrapping, not inductor, is tested)."""
    from infmae.config import TrainConfig
    from infmae.training.parallel import parallelize

    config = ModelConfig(img_size=(96, 160), **NARROW, encoder="sparse")
    imgs = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    plain = InfMAE(config)
    torch.manual_seed(0)
    checkpointed = parallelize(InfMAE(config), TrainConfig(activation_checkpointing=True), None, torch.device("cpu"))
    calls = []
    for blocks in (checkpointed.blocks1, checkpointed.blocks2):
        for wrapper in blocks:
            assert type(wrapper).__name__ == "CheckpointWrapper"
            wrapper.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    saved_plain, saved_checkpointed = _saved_tensor_count(plain, imgs), _saved_tensor_count(checkpointed, imgs)
    assert len(calls) == 4 and all(c["neighbours_BK9"] is not None for c in calls)  # tile mode, through the wrapper
    assert saved_checkpointed < saved_plain
    grads = {k.replace("_checkpoint_wrapped_module.", ""): p.grad for k, p in checkpointed.named_parameters()}
    for name, p in plain.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, atol=0, rtol=0, msg=name)

    torch._dynamo.reset()
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="eager"))
    torch.manual_seed(0)
    compiled = parallelize(InfMAE(config), TrainConfig(compile=True), None, torch.device("cpu"))
    torch._dynamo.utils.counters.clear()
    out = compiled(imgs)
    out.loss.backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(out.loss, plain(imgs).loss, atol=0, rtol=0)  # same ops, eager backend


# ---------------------------------------------------------------------------------------------
# the glue as matrix products, and the compiled sparse path
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k, T", [(4, 16), (4, 4), (2, 2)])  # patch_embed1, stage-1 decoder, stage 2 / patch_embed3
def test_conv_as_linear_is_the_conv_on_each_tile(k, T, dtype, generator):
    """``conv_as_linear`` (one GEMM on channels-last tiles) equals the conv on the tiles seen as B*K images."""
    from infmae.model.sparse import conv_as_linear

    conv = torch.nn.Conv2d(5, 7, k, stride=k).to(dtype)
    tiles = torch.randn(2, 3, T, T, 5, generator=generator, dtype=dtype)
    want = conv(tiles.reshape(6, T, T, 5).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(2, 3, T // k, T // k, 7)
    atol, rtol = TOLERANCES[("sparse_encoder", dtype)]
    torch.testing.assert_close(conv_as_linear(conv, tiles, k), want, atol=atol, rtol=rtol)


def test_hooked_glue_modules_are_called_as_modules(generator):
    """A glue module that something hooks (FSDP2 does) runs as a module call, with the same result; the
    others run as matrix products (their hooks would not fire)."""
    dense, sparse = pair(img_size=(48, 64), **NARROW)
    imgs = torch.randn(2, 3, 48, 64, generator=generator)
    masking = dense.masking(imgs)
    plain = sparse.forward_encoder(imgs, masking)[0]
    calls = []
    for name in ("patch_embed1", "patch_embed2", "patch_embed3", "stage1_output_decode", "stage2_output_decode"):
        getattr(sparse, name).register_forward_hook(lambda module, args, out, name=name: calls.append(name))
    hooked = sparse.forward_encoder(imgs, masking)[0]
    assert sorted(calls) == sorted(
        ["patch_embed1", "patch_embed2", "patch_embed3", "stage1_output_decode", "stage2_output_decode"]
    )
    atol, rtol = TOLERANCES[("sparse_encoder", torch.float32)]
    torch.testing.assert_close(hooked, plain, atol=atol, rtol=rtol)
    torch.testing.assert_close(hooked, dense.forward_encoder(imgs, masking)[0], atol=atol, rtol=rtol)


def _is_tile_graph(gm: torch.fx.GraphModule) -> bool:
    """A dynamo graph of a CBlock in tile mode: one of its inputs is 5-D tiles [B,K,T,T,d]."""
    values = [node.meta.get("example_value") for node in gm.graph.find_nodes(op="placeholder")]
    return any(isinstance(v, torch.Tensor) and v.dim() == 5 for v in values)


def _symbolic_inputs(gm: torch.fx.GraphModule) -> list[str]:
    """The graph's inputs with a symbolic size or value (the graph was compiled dynamic); [] when static."""
    dynamic = []
    for node in gm.graph.find_nodes(op="placeholder"):
        value = node.meta.get("example_value")
        sizes = value.shape if isinstance(value, torch.Tensor) else [value]
        if any(isinstance(s, torch.SymInt) for s in sizes):
            dynamic.append(node.name)
    return dynamic


@pytest.mark.slow  # inductor compiles on the CPU
def test_compiled_sparse_path_equals_eager_static_and_without_recompiles(monkeypatch):
    """The trainer's per-block compile (its options, inductor, CPU) of the sparse path: every graph static
    (the CBlock specialised on each stage's tile size, 4 and 2, not dynamic in T; the ViT blocks on K and
    L), latent, loss and gradients equal to eager within the fp32 tolerances, and a second batch of other
    images causes no recompile."""
    from torch._inductor.compile_fx import compile_fx

    from infmae.config import TrainConfig
    from infmae.training.parallel import parallelize

    graphs = []

    def inductor(gm, example_inputs):
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    config = ModelConfig(img_size=(48, 64), **{**NARROW, "depths": (1, 1, 1)}, encoder="sparse")
    torch._dynamo.reset()
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, **{**kw, "backend": inductor}))
    torch.manual_seed(0)
    eager = InfMAE(config)
    compiled = parallelize(InfMAE(config), TrainConfig(compile=True), None, torch.device("cpu"))
    compiled.load_state_dict(eager.state_dict())
    atol, rtol = TOLERANCES[("sparse_encoder", torch.float32)]
    grad_atol = TOLERANCES[("sparse_encoder_grad", torch.float32)][0]
    data = torch.Generator().manual_seed(5)
    for batch in range(2):
        imgs = torch.randn(2, 3, 48, 64, generator=data)
        masking = eager.masking(imgs)
        torch._dynamo.utils.counters.clear()
        latent_c, loss_c, grads_c = loss_and_grads(compiled, imgs, masking)
        stats = dict(torch._dynamo.utils.counters["stats"])
        latent_e, loss_e, grads_e = loss_and_grads(eager, imgs, masking)
        torch.testing.assert_close(latent_c, latent_e, atol=atol, rtol=rtol)
        torch.testing.assert_close(loss_c, loss_e, atol=atol, rtol=rtol)
        for key, g in grads_e.items():
            torch.testing.assert_close(grads_c[key], g, atol=grad_atol * float(g.abs().max()) + 1e-30, rtol=0)
        if batch == 0:
            assert stats.get("unique_graphs", 0) >= 2, stats  # at least the two CBlock specialisations
            tile_graphs = [gm for gm in graphs if _is_tile_graph(gm)]
            assert len(tile_graphs) == 2, len(tile_graphs)  # one CBlock graph per tile size (4, 2)
            assert not [_symbolic_inputs(gm) for gm in graphs if _symbolic_inputs(gm)]  # every graph static
        else:
            assert stats.get("unique_graphs", 0) == 0, ("recompiled on the second batch", stats)
