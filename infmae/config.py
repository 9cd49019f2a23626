"""Run configuration: three dataclasses (model, data, train), validated on construction, named presets,
and ``key=value`` overrides.

Every default is visible here. A bad value raises ``ValueError`` naming the field, the value and the
fix; an unknown key is rejected with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

SCORES = ("intensity", "official")
ORDERS = ("descending", "ascending")
KERNEL_CHOICES = ("auto", "triton", "reference")
ENCODERS = ("dense", "sparse")
SIXTEEN_BIT_MODES = ("percentile", "minmax", "full")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("bf16", "fp32")
PARALLEL_MODES = ("fsdp", "ddp", "none")
OPTIMIZERS = ("adamw", "apex_adam", "apex_lamb")
ENGINES = ("auto", "engine", "reference")
LOADERS = ("reference", "dali")

# The default conv-stage encoder. Dense stays the default until a GPU measurement (bench/bench_sparse.py at
# B=256, 224 px, cited here with its bench/results file) shows the sparse encoder faster; switching is this
# one line: DEFAULT_ENCODER = "sparse".
DEFAULT_ENCODER = "dense"


def _fail(field_name: str, value: Any, expected: str, hint: str) -> None:
    raise ValueError(f"config: expected {field_name} {expected}, got {value!r}; {hint}")


def _require(cond: bool, field_name: str, value: Any, expected: str, hint: str) -> None:
    if not cond:
        _fail(field_name, value, expected, hint)


def _field_default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None


def _require_finite(section: str, values: Any) -> None:
    """Refuse inf, -inf and nan in any numeric field (or element of a tuple field): every comparison with
    nan is False and inf passes ``> 0``, so the checks below would let them through to the run."""
    for spec in dataclasses.fields(values):
        value = getattr(values, spec.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            key, default = f"{section}.{spec.name}", _field_default(spec)
            shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
            expected = "finite numbers" if items is value else "a finite number"
            _fail(key, value, expected, f"inf and nan are not usable; e.g. {key}={shown} (the default)")


@dataclass
class ModelConfig:
    """The InfMAE architecture (docs/specification.md, 'The model'). Defaults are `infmae_base`."""

    img_size: tuple[int, int] = (224, 224)
    """Training image (height, width) in pixels; both multiples of 16."""
    in_chans: int = 3
    """Input channels: 3 as released (gray repeated), or 1 (an exact shortcut, see convert.py)."""
    embed_dims: tuple[int, int, int] = (256, 384, 768)
    """Widths of stage 1 (H/4), stage 2 (H/8) and the ViT stage (H/16)."""
    depths: tuple[int, int, int] = (2, 2, 11)
    """CBlocks in stages 1 and 2, ViT blocks in stage 3."""
    num_heads: int = 12
    """Attention heads of the encoder's ViT blocks."""
    mlp_ratio: float = 4.0
    """Hidden width of every MLP relative to its block width."""
    decoder_embed_dim: int = 512
    """Width of the decoder's tokens (the encoder's latent is projected to it by ``decoder_embed``)."""
    decoder_depth: int = 2
    """ViT blocks in the decoder."""
    decoder_num_heads: int = 16
    """Attention heads of the decoder's ViT blocks; must divide ``decoder_embed_dim``."""
    mask_stride: int = 4
    """IAM stride S: ranks 0, S, 2S, ... stay visible (S=4: 25 % visible)."""
    score: str = "intensity"
    """Patch score: 'intensity' (mean intensity, the paper) or 'official' (the released frozen conv)."""
    order: str = "descending"
    """Sort order of the scores: 'descending' (the paper) or 'ascending' (the released code)."""
    norm_pix_loss: bool = False
    """Normalise each target patch by its mean and variance before the MSE."""
    kernels: str = "auto"
    """'auto' (Triton where CUDA and Triton are there, else eager), 'triton' or 'reference'."""
    encoder: str = DEFAULT_ENCODER
    """Conv stages on the full grids ('dense', the reference) or on the visible patches only ('sparse',
    the same outputs at about half the training FLOPs; same parameters and state-dict keys)."""

    def __post_init__(self) -> None:
        _require_finite("model", self)
        self.img_size = tuple(int(v) for v in self.img_size)  # type: ignore[assignment]
        self.embed_dims = tuple(int(v) for v in self.embed_dims)  # type: ignore[assignment]
        self.depths = tuple(int(v) for v in self.depths)  # type: ignore[assignment]
        h, w = self.img_size if len(self.img_size) == 2 else (0, 0)
        _require(
            len(self.img_size) == 2 and h > 0 and w > 0 and h % 16 == 0 and w % 16 == 0,
            "model.img_size",
            self.img_size,
            "(height, width), both positive multiples of 16",
            "e.g. --set model.img_size=224,224 or 96,160",
        )
        _require(self.in_chans >= 1, "model.in_chans", self.in_chans, "at least 1", "use 3 (released) or 1 (gray)")
        _require(
            len(self.embed_dims) == 3 and min(self.embed_dims) > 0,
            "model.embed_dims",
            self.embed_dims,
            "three positive widths",
            "e.g. 256,384,768",
        )
        _require(
            len(self.depths) == 3 and min(self.depths) >= 0,
            "model.depths",
            self.depths,
            "three non-negative depths",
            "e.g. 2,2,11",
        )
        _require(
            self.num_heads > 0 and self.embed_dims[2] % self.num_heads == 0,
            "model.num_heads",
            self.num_heads,
            f"a divisor of embed_dims[2]={self.embed_dims[2]}",
            "e.g. 12 for width 768",
        )
        _require(
            self.decoder_num_heads > 0 and self.decoder_embed_dim % self.decoder_num_heads == 0,
            "model.decoder_num_heads",
            self.decoder_num_heads,
            f"a divisor of decoder_embed_dim={self.decoder_embed_dim}",
            "e.g. 16 for width 512",
        )
        _require(
            self.embed_dims[2] % 4 == 0 and self.decoder_embed_dim % 4 == 0,
            "model.embed_dims[2]",
            (self.embed_dims[2], self.decoder_embed_dim),
            "widths divisible by 4",
            "the 2-D sin-cos position embedding needs D % 4 == 0",
        )
        _require(self.mlp_ratio > 0, "model.mlp_ratio", self.mlp_ratio, "a positive number", "the default is 4")
        _require(self.decoder_depth >= 0, "model.decoder_depth", self.decoder_depth, ">= 0", "the default is 2")
        _require(
            isinstance(self.mask_stride, int) and self.mask_stride >= 1,
            "model.mask_stride",
            self.mask_stride,
            "an integer >= 1",
            "S=4 keeps 25 % of the patches visible",
        )
        _require(self.score in SCORES, "model.score", self.score, f"one of {SCORES}", "'intensity' is the paper's")
        _require(self.order in ORDERS, "model.order", self.order, f"one of {ORDERS}", "'descending' is the paper's")
        _require(
            self.kernels in KERNEL_CHOICES,
            "model.kernels",
            self.kernels,
            f"one of {KERNEL_CHOICES}",
            "'auto' picks Triton where it can run",
        )
        _require(
            self.encoder in ENCODERS,
            "model.encoder",
            self.encoder,
            f"one of {ENCODERS}",
            "'sparse' computes the same latent from the visible patches only",
        )


@dataclass
class DataConfig:
    """The reference input pipeline (docs/specification.md, 'Input pipeline')."""

    path: str = ""
    """A folder tree of images, a curated manifest.csv or a pack folder (``infmae pack``); empty: synthetic
    images written into the run."""
    manifest_root: str = ""
    """The folder a manifest's relative paths start from (default: the source folder recorded in ``curate.json``
    beside the manifest when there is one, else the manifest's own folder)."""
    allow_outside_root: bool = False
    """Accept manifest rows whose path leads outside the manifest's root (``..`` components, absolute paths,
    links); by default such a row is an error, so a manifest cannot make a run read files elsewhere."""
    synthetic_count: int = 512
    """How many synthetic images to generate when ``path`` is empty."""
    scale: tuple[float, float] = (0.2, 1.0)
    """Random resized crop: range of the crop's area relative to the image."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Random resized crop: range of the crop's aspect ratio (width / height)."""
    hflip_prob: float = 0.5
    """Probability of a horizontal flip after the crop."""
    mean: float = 0.425
    """Normalisation mean, the same on every channel."""
    std: float = 0.2
    """Normalisation standard deviation, the same on every channel."""
    sixteen_bit_mode: str = "percentile"
    """16-bit to [0,1]: 'percentile' (robust per-image range), 'minmax' or 'full' (divide by 65535)."""
    low_percentile: float = 0.5
    """``percentile`` mode: the percentile of the whole image mapped to 0 (lower values clip to 0)."""
    high_percentile: float = 99.5
    """``percentile`` mode: the percentile of the whole image mapped to 1 (higher values clip to 1)."""
    min_size: int = 20
    """Images whose both sides are under this many pixels are skipped (as in Inf30's curation)."""
    num_workers: int = 2
    """Loader worker processes (0: load in the training process)."""
    loader: str = "reference"
    """'reference' (PyTorch DataLoader, the specification) or 'dali' (NVIDIA DALI; GPU decode on CUDA)."""
    dali_threads: int = 4
    """DALI CPU threads (PNG/TIFF/BMP decoding and CPU operators)."""
    val_fraction: float = 0.0
    """Share of the images held out for validation (chosen by a hash of each path, so the split is stable
    as a folder grows); 0: none, unless ``val_path`` is set."""
    val_path: str = ""
    """A separate validation folder, manifest or pack (``--val-data``); overrides ``val_fraction``."""

    def __post_init__(self) -> None:
        _require_finite("data", self)
        self.scale = tuple(float(v) for v in self.scale)  # type: ignore[assignment]
        self.ratio = tuple(float(v) for v in self.ratio)  # type: ignore[assignment]
        _require(
            len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1,
            "data.scale",
            self.scale,
            "(low, high) with 0 < low <= high <= 1",
            "the released recipe uses 0.2,1.0",
        )
        _require(
            len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1],
            "data.ratio",
            self.ratio,
            "(low, high) with 0 < low <= high",
            "the released recipe uses 0.75,1.3333",
        )
        _require(0 <= self.hflip_prob <= 1, "data.hflip_prob", self.hflip_prob, "a probability in [0, 1]", "0.5")
        _require(self.std > 0, "data.std", self.std, "a positive number", "the released value is 0.2")
        _require(
            self.sixteen_bit_mode in SIXTEEN_BIT_MODES,
            "data.sixteen_bit_mode",
            self.sixteen_bit_mode,
            f"one of {SIXTEEN_BIT_MODES}",
            "'percentile' keeps the structure of raw thermal counts",
        )
        _require(
            0 <= self.low_percentile < self.high_percentile <= 100,
            "data.low_percentile",
            (self.low_percentile, self.high_percentile),
            "0 <= low_percentile < high_percentile <= 100",
            "e.g. 0.5 and 99.5",
        )
        _require(self.min_size >= 1, "data.min_size", self.min_size, "at least 1 pixel", "the default is 20")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0", "0 loads in-process")
        _require(
            self.loader in LOADERS,
            "data.loader",
            self.loader,
            "'reference' or 'dali'",
            "'dali' needs pip install nvidia-dali-cuda130",
        )
        _require(self.dali_threads >= 1, "data.dali_threads", self.dali_threads, ">= 1", "e.g. 4")
        _require(
            0 <= self.val_fraction < 1,
            "data.val_fraction",
            self.val_fraction,
            "a share in [0, 1)",
            "e.g. 0.01 holds out 1 % of the images",
        )
        _require(self.synthetic_count >= 1, "data.synthetic_count", self.synthetic_count, ">= 1", "e.g. 512")


@dataclass
class TrainConfig:
    """Optimisation and run bookkeeping (docs/specification.md, 'Fidelity choices' and 'Trainer')."""

    batch_size: int = 256
    """Images per optimizer step on one device (global batch = batch_size * accum_steps * world size)."""
    accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    epochs: float = 400
    """Passes over the training images (fractions allowed); the learning-rate schedule spans them all."""
    warmup_epochs: float = 40
    """Linear warmup length; then a half-cosine to ``min_lr``. Both are counted per iteration."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs); the schedule still spans all epochs."""
    blr: float = 1.5e-4
    """Base learning rate; lr = blr * global_batch / 256."""
    min_lr: float = 0.0
    """Learning rate at the end of the half-cosine."""
    weight_decay: float = 0.05
    """Decoupled weight decay, on tensors with 2+ dims whose names do not end in ``.bias``."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam's (beta1, beta2)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping, as released)."""
    seed: int = 0
    """Seeds the initial weights, the epoch order and every crop and flip (so a resumed run repeats them)."""
    device: str = "auto"
    """'auto' (CUDA when there, else CPU), 'cpu' or 'cuda'."""
    precision: str = "bf16"
    """'bf16' autocast on GPU (CPU always runs fp32) or 'fp32'."""
    log_every: int = 20
    """Write a progress line and a metrics.jsonl record every this many steps (and at the last step)."""
    checkpoint_every: int = 1000
    """Save a checkpoint every this many steps (and at the end)."""
    keep_last: int = 3
    """How many of the newest checkpoints to keep; older ones are deleted after each save."""
    async_checkpoint: bool = False
    """Write checkpoints in a background thread from a host copy (training stalls only for the copy);
    ``latest`` still moves only once a checkpoint is complete."""
    eval_every: int = 1000
    """Evaluate on the validation images every this many steps (and at the end), when there are any."""
    visualize_every: int = 1000
    """Write a reconstruction grid every this many steps (and at the end); 0 only at the end."""
    parallel: str = "fsdp"
    """Data parallelism over several ranks (torchrun): 'fsdp' (FSDP2 fully_shard), 'ddp' or 'none'."""
    fsdp_group: int = 2
    """ViT blocks per FSDP2 unit (the conv stages are one unit each, the decoder one unit)."""
    reshard_after_forward: bool = False
    """FSDP2: free gathered parameters after forward (saves memory, costs one all-gather per unit)."""
    activation_checkpointing: bool = False
    """Recompute every block's activations in backward (less memory, ~1/3 more compute)."""
    compile: bool = False
    """torch.compile each conv and ViT block (the masking between them stays eager)."""
    engine: str = "auto"
    """'engine' (the fast configuration, exact up to summation order, bf16 and the 4e-5 uint16 wire:
    compile, channels-last conv stages, bf16 residual stream,
    DALI when importable, cudnn.benchmark), 'reference' (every field as written: the specification's
    eager model) or 'auto' ('engine' on CUDA, 'reference' on the CPU). Resolved by
    ``infmae.config.resolve_for_device``; ``infmae config show --device cuda`` prints the result."""
    channels_last: bool = False
    """Run the conv stages in channels-last memory (NHWC strides): the LayerNorms' permutes become views
    and the convs take cuDNN's NHWC kernels. Set by ``engine``; the same numbers up to summation order."""
    bf16_residual: bool = False
    """Under bf16 autocast, carry the conv stages' residual stream in bf16 (halves the memory traffic of
    the memory-bound stages; the IAM score, the sort and the loss stay fp32). Set by ``engine`` on CUDA."""
    wire_uint16: bool = False
    """The reference loader ships each batch as uint16 codes of its [0, 1] values (2 bytes a pixel instead
    of 4) and the device applies ``codes * scale + offset`` (mean/std) in one step. Within 4e-5 of the
    float32 batch (tests/tolerances.py 'wire_uint16'), so not exact: set by ``engine`` on CUDA only."""
    cuda_graphs: bool = False
    """With ``compile``: capture the compiled blocks in CUDA graphs (torch.compile mode 'reduce-overhead')
    instead of launching their kernels one by one; needs static shapes. Off until measured on a GPU
    (README, 'The engine on a GPU')."""
    optimizer: str = "adamw"
    """'adamw' (torch, fused on CUDA), 'apex_adam' (apex FusedAdam) or 'apex_lamb' (apex FusedLAMB)."""
    tensorboard: bool = True
    """Write TensorBoard events to RUN/tensorboard when the `tensorboard` package is installed."""
    cpu_threads: int = 0
    """Compute threads of each training process on the CPU; 0: its share of the cores less one per
    loader worker (unless OMP_NUM_THREADS is set), which keeps a busy machine from slowing it several-fold."""
    collective_timeout_s: float = 600.0
    """Under torchrun: how long a rank waits in a collective for the others before the job ends with a
    message naming the rank that fell behind (a hung or stopped rank). Allow for the longest checkpoint
    write and the first step's compilation."""

    def __post_init__(self) -> None:
        _require_finite("train", self)
        self.betas = tuple(float(v) for v in self.betas)  # type: ignore[assignment]
        for name in ("batch_size", "accum_steps", "log_every", "checkpoint_every", "keep_last"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and value >= 1,
                f"train.{name}",
                value,
                "an integer >= 1",
                "set a positive whole number",
            )
        _require(self.epochs > 0, "train.epochs", self.epochs, "a positive number", "e.g. 400")
        _require(
            0 <= self.warmup_epochs <= self.epochs,
            "train.warmup_epochs",
            self.warmup_epochs,
            f"between 0 and train.epochs={self.epochs}",
            "e.g. 40 of 400",
        )
        _require(self.max_steps >= 0, "train.max_steps", self.max_steps, ">= 0", "0 runs every epoch")
        _require(self.blr > 0, "train.blr", self.blr, "a positive learning rate", "1.5e-4 (paper) or 1e-3 (released)")
        _require(0 <= self.min_lr, "train.min_lr", self.min_lr, ">= 0", "the default is 0")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0", "the default is 0.05")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas",
            self.betas,
            "two numbers in [0, 1)",
            "the default is 0.9,0.95",
        )
        _require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, ">= 0", "0 disables clipping")
        _require(self.device in DEVICES, "train.device", self.device, f"one of {DEVICES}", "'auto' picks CUDA if there")
        _require(self.precision in PRECISIONS, "train.precision", self.precision, f"one of {PRECISIONS}", "bf16")
        _require(self.eval_every >= 1, "train.eval_every", self.eval_every, "an integer >= 1", "e.g. 1000")
        _require(self.visualize_every >= 0, "train.visualize_every", self.visualize_every, ">= 0", "0: at the end")
        _require(
            self.parallel in PARALLEL_MODES,
            "train.parallel",
            self.parallel,
            f"one of {PARALLEL_MODES}",
            "'fsdp' shards parameters, gradients and optimizer state; 'ddp' replicates them",
        )
        _require(
            isinstance(self.fsdp_group, int) and self.fsdp_group >= 1,
            "train.fsdp_group",
            self.fsdp_group,
            "an integer >= 1",
            "e.g. 2 ViT blocks per FSDP unit",
        )
        _require(self.cpu_threads >= 0, "train.cpu_threads", self.cpu_threads, ">= 0", "0 picks a number per core")
        _require(
            self.collective_timeout_s > 0,
            "train.collective_timeout_s",
            self.collective_timeout_s,
            "a positive number of seconds",
            "e.g. 600 (10 minutes)",
        )
        _require(self.engine in ENGINES, "train.engine", self.engine, f"one of {ENGINES}", "'auto' picks by device")
        _require(
            self.optimizer in OPTIMIZERS,
            "train.optimizer",
            self.optimizer,
            f"one of {OPTIMIZERS}",
            "'adamw' needs nothing beyond torch",
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "paper_base"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        unknown = set(data) - {"model", "data", "train", "preset"}
        if unknown:
            raise ValueError(
                f"config: expected sections model, data, train, got {sorted(unknown)}; "
                "was this file written by another program?"
            )
        train = dict(data.get("train", {}))
        if train and "engine" not in train:
            # written before train.engine existed, i.e. by a reference run: resuming it must not switch engines
            train["engine"] = "reference"
        return cls(
            model=ModelConfig(**data.get("model", {})),
            data=DataConfig(**data.get("data", {})),
            train=TrainConfig(**train),
            preset=data.get("preset", "custom"),
        )


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------
def _demo() -> Config:
    # Small enough to train to a visibly lower loss on a 2-core CPU in a few minutes.
    return Config(
        model=ModelConfig(
            img_size=(96, 96),
            embed_dims=(32, 48, 96),
            depths=(1, 1, 2),
            num_heads=4,
            decoder_embed_dim=64,
            decoder_depth=1,
            decoder_num_heads=4,
        ),
        data=DataConfig(synthetic_count=256, num_workers=2, val_fraction=0.1),
        train=TrainConfig(
            batch_size=32,
            epochs=60,
            warmup_epochs=2,
            blr=1e-2,
            log_every=10,
            eval_every=80,
            checkpoint_every=100,
            visualize_every=0,
            keep_last=2,
        ),
        preset="demo",
    )


def _paper_base() -> Config:
    return Config(
        model=ModelConfig(score="intensity", order="descending"),
        train=TrainConfig(batch_size=256, blr=1.5e-4),
        preset="paper_base",
    )


def _official_base() -> Config:
    # The released scripts: 64 images per GPU on 4 GPUs, blr 1e-3, the frozen random score conv, ascending.
    return Config(
        model=ModelConfig(score="official", order="ascending"),
        train=TrainConfig(batch_size=256, blr=1e-3),
        preset="official_base",
    )


PRESETS = {"demo": _demo, "paper_base": _paper_base, "official_base": _official_base}


def preset(name: str) -> Config:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {sorted(PRESETS)}"
        raise ValueError(f"config: expected a preset name, got {name!r}; {hint}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# key=value overrides
# ---------------------------------------------------------------------------------------------
def _parse_value(text: str, kind: Any, key: str, current: Any) -> Any:
    """``text`` as the field's declared type ``kind`` (``float``, ``int``, ``bool``, ``str`` or a tuple of
    them), not the type of its current value: ``train.epochs`` (a float) takes 2.5 although its default is
    400; ``current`` only shows in the hint."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config: expected {key} true or false, got {text!r}; write e.g. {key}=true")
    if typing.get_origin(kind) is tuple:
        element_kinds = typing.get_args(kind) or (str,)
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        example = ",".join(str(v) for v in current) if isinstance(current, tuple) else current
        return tuple(
            _parse_value(p, element_kinds[min(i, len(element_kinds) - 1)], key, example) for i, p in enumerate(parts)
        )
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"config: expected {key} {what}, got {text!r}; e.g. {key}={current}") from None
    return text


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (e.g. ``train.blr=1e-3``), re-validating every section. Each
    value is parsed as the field's declared type (see :func:`_parse_value`)."""
    classes = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
    kinds = {section: typing.get_type_hints(cls) for section, cls in classes.items()}
    sections = {
        "model": dataclasses.asdict(config.model),
        "data": dataclasses.asdict(config.data),
        "train": dataclasses.asdict(config.train),
    }
    valid = [f"{s}.{k}" for s, d in sections.items() for k in d]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"config: expected an override key=value, got {item!r}; e.g. train.blr=1e-3")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.count(".") != 1 or key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            if not close:  # also match the bare field name: 'blr' -> 'train.blr'
                close = [v for v in valid if v.split(".")[1] == key.split(".")[-1]]
            hint = f"did you mean {close[0]!r}?" if close else "`infmae config fields` lists every field"
            raise ValueError(f"config: expected a known key, got {key!r}; {hint}")
        section, name = key.split(".")
        sections[section][name] = _parse_value(text, kinds[section][name], key, sections[section][name])
    return Config(
        model=ModelConfig(**sections["model"]),
        data=DataConfig(**sections["data"]),
        train=TrainConfig(**sections["train"]),
        preset=config.preset,
    )


# ---------------------------------------------------------------------------------------------
# device-dependent defaults: the one place they are decided
# ---------------------------------------------------------------------------------------------
def dali_importable() -> bool:
    """Whether ``nvidia.dali`` imports here (the engine then loads with DALI, packs inflated on the GPU)."""
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):  # 'nvidia' missing or a namespace package without a spec
        return False


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM or container limit, not the node's count)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_workers_per_rank(cores: int | None = None, local_ranks: int | None = None) -> int:
    """Reference-loader workers for one rank: its share of the usable cores less one for the training
    process itself, at least 2 (the CPU default)."""
    import os

    cores = cores or usable_cores()
    local_ranks = local_ranks or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(2, cores // max(1, local_ranks) - 1)


def resolve_engine(engine: str, device: str) -> str:
    """'auto' -> 'engine' on CUDA, 'reference' elsewhere; the explicit choices stay."""
    if engine != "auto":
        return engine
    return "engine" if device == "cuda" else "reference"


def resolve_for_device(config: Config, device: str) -> Config:
    """The configuration a run on ``device`` ('cpu' or 'cuda') uses: ``train.engine`` made explicit and,
    for 'engine', the fast fields set. The trainer calls this once and writes the result to the run's
    config.json; ``infmae config show --device`` prints the same. Idempotent; ``config`` is not modified.

    'engine' on CUDA: per-block torch.compile (static shapes), channels-last conv stages, bf16 autocast with
    a bf16 residual stream, DALI when importable (else the reference loader with a worker share of the
    node's cores). 'engine' on the CPU: compile and channels-last only (the CPU trains in fp32 and loads
    with the reference loader). 'reference': every field as given."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"config: expected a device 'cpu' or 'cuda', got {device!r}; e.g. --device cuda")
    resolved = Config.from_dict(config.to_dict())
    resolved.preset = config.preset
    tc, dc = resolved.train, resolved.data
    tc.engine = resolve_engine(tc.engine, device)
    if tc.engine != "engine":
        return resolved
    tc.compile = True
    tc.channels_last = True
    if device == "cuda":
        tc.precision = "bf16"
        tc.bf16_residual = True
        tc.wire_uint16 = True
        if dali_importable():
            dc.loader = "dali"
        elif dc.loader == "reference":
            dc.num_workers = max(dc.num_workers, loader_workers_per_rank())
    return resolved
