"""The DALI input pipeline: the reference loader's batches, decoded and augmented by NVIDIA DALI.

Legend: B = per-rank batch size; H, W = a source image's size; h, w = its crop; out_h, out_w = the
training size; C = channels delivered (1 for all-gray data, else the model's in_chans).

:class:`DaliLoader` is a :class:`~infmae.data.loader.ReferenceLoader` (same epoch order, rank sharding,
``iter_epoch(epoch, start_step)`` resume, substitution of unreadable files by the next position) whose
batches are built by a DALI pipeline instead of DataLoader workers. The crop and flip of every sample are
the sample spec's own (:meth:`~infmae.data.spec.SampleSpec.augment_params`, a pure function of seed, epoch
and position) fed to DALI as per-sample inputs, so the two loaders give the same batch up to resampling
arithmetic, and a resumed run continues with exactly the batches an uninterrupted one would have given.

Two sources, one graph after the pixels exist:

- **files** (a folder or a curate manifest): encoded bytes are read in Python and decoded by
  ``fn.decoders.image`` (``mixed`` on a GPU: JPEG on the GPU, PNG/TIFF/BMP on DALI's CPU threads; ``cpu``
  in CPU mode) to ``uint16`` (8-bit files become ``x * 257`` exactly, 16-bit files are bit-exact), as
  ``GRAY`` when every file is gray, else ``RGB`` (never ``ANY_DATA``, which crashes on gray JPEG). The
  16-bit ranges are computed on the decoded images by :func:`infmae.data.mapping.image_ranges_torch`, on the
  device the images are on, with one device-to-host transfer per batch.
- **packed** (a pack folder from ``infmae pack``): the compressed chunks are read from the memory-mapped
  shards and inflated by ``fn.decoders.inflate`` on the GPU (in CPU mode, by ``lz4`` in Python, since
  DALI's inflate is GPU-only); the raw little-endian bytes become ``uint16`` values by
  ``low_byte + 256 * high_byte``, which for 8-bit data (one byte, both ends) is again ``x * 257``. The
  ranges stored in the pack are used when the pack's mapping equals the loader's, else computed.

Then, per sample, on the pipeline's device: crop (``fn.slice``), ``clip((x - lo) / (hi - lo), 0, 1)`` in
float32 (8-bit: ``lo, hi = 0, 65535`` on the ``x * 257`` values, i.e. ``x / 255``), channels (gray
broadcast to 3, or colour averaged to 1, as the reference does), bicubic antialiased resize, clamp to
[0, 1], flip + normalise + HWC->CHW (``fn.crop_mirror_normalize``), float32 or float16 out.

A file that fails to decode makes DALI fail the whole batch and invalidates the pipeline: the loader
then finds the culprit(s) among that batch's files (one-file CPU decodes, then one-file GPU decodes
when only the GPU decoder fails), records them as unreadable,
builds a new pipeline from the same step and goes on; the substitution is the reference rule, so the
batch equals what the reference loader gives with the same bad files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .batch import Batch
from .folder import ImageFolderDataset
from .io import ImageReadError
from .loader import ReferenceLoader
from .mapping import SixteenBitMapping
from .prefetch import ThreadPrefetcher

logger = logging.getLogger(__name__)

DALI_INSTALL = "pip install nvidia-dali-cuda130 (or pip install -e '.[dali]'); never the PyPI package 'nvidia-dali'"
#: ``lo`` that maps every uint16 value below 0 (after clipping: 0), used for flat images (the reference maps them to 0).
_FLAT_LO = 65536.0


def import_dali():
    """Import DALI or fail with the install command."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn  # noqa: F401
        import nvidia.dali.types  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"data.loader='dali' needs NVIDIA DALI ({exc}): {DALI_INSTALL}") from None
    return dali


def dali_available() -> bool:
    """Whether DALI imports here."""
    try:
        import_dali()
    except ImportError:
        return False
    return True


def _lo_denominator(lo: float, hi: float) -> tuple[float, float]:
    """The reference's ``(x - lo) / (hi - lo)`` operands; a flat image (``hi <= lo``) maps to zeros."""
    if not hi > lo:
        return _FLAT_LO, 1.0
    return lo, hi - lo


def batch_ranges(mapping: SixteenBitMapping):
    """A ``dl_tensor_python_function`` body: per-sample ``[2]`` float32 ``(lo, hi - lo)`` of the decoded
    uint16 images, on the images' device. Inputs: images ``[H, W, C]`` uint16 and ``[2]`` int32
    ``(native channels, bits)``; 8-bit images (``x * 257``) get ``(0, 65535)``; a gray file decoded as
    RGB is measured on one channel (the reference pools the file's own channels)."""

    def compute(images, kinds):
        xs = [torch.from_dlpack(capsule) for capsule in images]
        if not xs:
            return []
        with _on_dali_stream(xs[0].device):
            # one transfer for the kinds and one (inside image_ranges_torch) for the ranges: no per-sample sync
            host_kinds = torch.stack([torch.from_dlpack(k) for k in kinds]).cpu().tolist()
            wide = [i for i, (_, bits) in enumerate(host_kinds) if bits == 16]
            ranges = [(0.0, 65535.0)] * len(xs)
            measured = mapping.ranges_torch([xs[i][..., : host_kinds[i][0]] for i in wide])
            for i, value in zip(wide, measured):
                ranges[i] = value
            pairs = torch.tensor([_lo_denominator(lo, hi) for lo, hi in ranges], dtype=torch.float32)
            pairs = pairs.to(xs[0].device)
            return [torch.utils.dlpack.to_dlpack(pair) for pair in pairs.unbind(0)]

    return compute


def _on_dali_stream(device: torch.device):
    """On a GPU, torch's work inside a DALI python function goes to DALI's stream: ordered with the
    decoder before it and the operators after it (which read the outputs on that stream), and off the
    training loop's stream, whose queued steps the syncs here would otherwise wait for."""
    if device.type != "cuda":
        return nullcontext()
    from nvidia.dali.python_function_plugin import current_dali_stream

    return torch.cuda.stream(torch.cuda.ExternalStream(current_dali_stream(), device=device))


def _decode_image(encoded, gpu: bool, rgb: bool):
    """DALI's image decoder as both sources and the probes use it: uint16, gray or RGB (never ANY_DATA).
    The GPU (nvJPEG) decoder upsamples JPEG chroma the CPU decoder's and Pillow's way ('fancy'), which it
    does not by default: colour JPEGs would otherwise differ from the reference loader's."""
    from nvidia.dali import fn, types

    return fn.decoders.image(
        encoded,
        device="mixed" if gpu else "cpu",
        dtype=types.UINT16,
        output_type=types.RGB if rgb else types.GRAY,
        jpeg_fancy_upsampling=True,
    )


def decode_file(path: str | os.PathLike, rgb: bool = False, device_id: int | None = None) -> np.ndarray:
    """Decode one file with DALI exactly as the files source does: ``[H, W, 1 or 3]`` uint16 (8-bit files
    as ``x * 257``). ``device_id=None``: the CPU decoder; a GPU id: the ``mixed`` decoder (nvJPEG on that
    GPU), which can fail on files the CPU decoder reads. For tests and for finding the file that failed
    a batch.

    Raises:
        ImageReadError: DALI cannot decode it (the first error line of DALI's message as the reason).
    """
    from nvidia.dali import fn, pipeline_def

    data = np.fromfile(path, dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id)
    def probe():
        encoded = fn.external_source(source=lambda: [data], batch=True)
        return _decode_image(encoded, device_id is not None, rgb)

    try:
        pipe = probe()
        pipe.build()
        (out,) = pipe.run()
    except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError/ValueError with a long trace
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if line.startswith("Failed to decode")),
            next((line for line in lines if line.startswith("Error in")), type(exc).__name__),
        )
        if detail.startswith(("Failed to decode", "Error in")):
            detail = "corrupt or truncated pixel data"
        raise ImageReadError(path, f"DALI cannot decode it ({detail[:200]})") from None
    return np.array(out[0] if device_id is None else out.as_cpu()[0])


@dataclass
class _Prepared:
    """Host inputs of one batch: the positions actually read, files skipped for it, and per-sample arrays."""

    positions: list[int]
    skipped: list[tuple[str, str]]
    feeds: tuple[list[np.ndarray], ...]


# ----------------------------------------------------------------------------------------------
# the DALI graph: pure functions of a GraphPlan and the fed inputs (the loader only feeds and runs it)
@dataclass(frozen=True)
class GraphPlan:
    """Everything the graph depends on, fixed for a loader.

    Attributes:
        packed: the source is a pack (else encoded files).
        device_id: the GPU the graph runs on; None = CPU mode.
        decode_rgb: files are decoded as RGB (some file is colour), else GRAY.
        channels: channels delivered, C (1 or 3).
        average_colour: colour files are averaged to one channel (``in_chans == 1``).
        stored_ranges: the pack's stored 16-bit ranges are fed (its mapping is the spec's), else computed.
        mapping: the 16-bit rule, for computed ranges.
        img_size: (out_h, out_w).
        mean, std: per delivered channel.
        half: deliver float16 (else float32).
    """

    packed: bool
    device_id: int | None
    decode_rgb: bool
    channels: int
    average_colour: bool
    stored_ranges: bool
    mapping: SixteenBitMapping
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    half: bool

    @property
    def gpu(self) -> bool:
        return self.device_id is not None

    @property
    def feed_names(self) -> tuple[str, ...]:
        """The per-sample inputs the graph uses, in the external source's output order."""
        names = ["payload", "start", "shape", "flip"]
        if self.packed:
            names.append("layout")  # [H, W, C, bytes per sample, raw bytes, inflated chunk length]
            if self.gpu:
                names.append("chunk_sizes")  # compressed sizes of the chunks, for fn.decoders.inflate
        names.append("ranges" if self.stored_ranges else "kind")  # stored (lo, hi - lo), or what computes it
        return tuple(names)


def packed_pixels(feeds: dict, gpu: bool):
    """``[H, W, C]`` uint16 from a pack's chunks: inflated on the GPU (already inflated in CPU mode), the
    padding dropped, and the little-endian bytes joined (``low + 256 * high``; 8-bit: ``x * 257``)."""
    from nvidia.dali import fn, types

    payload, layout = feeds["payload"], feeds["layout"]
    if gpu:
        chunks = fn.decoders.inflate(
            payload.gpu(), shape=layout[5:6], chunk_sizes=feeds.get("chunk_sizes"), dtype=types.UINT8
        )
    else:
        chunks = payload  # [chunks, chunk_len]
    flat = fn.reshape(chunks, shape=[-1])
    flat = fn.slice(flat, start=[0], shape=layout[4:5], axes=[0])  # drop the padding
    pairs = fn.reshape(flat, shape=layout[0:4])  # [H, W, C, bps], little-endian bytes
    low_byte = fn.cast(pairs[:, :, :, 0], dtype=types.UINT16)
    high_byte = fn.cast(pairs[:, :, :, -1], dtype=types.UINT16)
    return low_byte + high_byte * types.Constant(256, dtype=types.UINT16)


def range_operands(image, feeds: dict, plan: GraphPlan):
    """Per-sample ``[2]`` float32 ``(lo, hi - lo)``: fed (stored ranges) or computed on the decoded images."""
    from nvidia.dali import fn

    if plan.stored_ranges:
        return feeds["ranges"].gpu() if plan.gpu else feeds["ranges"]
    kind = feeds["kind"]
    return fn.dl_tensor_python_function(
        image,
        kind.gpu() if plan.gpu else kind,
        function=batch_ranges(plan.mapping),
        batch_processing=True,
        num_outputs=1,
        device="gpu" if plan.gpu else "cpu",
    )


def sample_ops(image, feeds: dict, lo_den, plan: GraphPlan):
    """The reference sample from ``[H, W, C]`` uint16 pixels: crop, ``clip((x - lo) / (hi - lo), 0, 1)`` in
    float32, channels, bicubic antialiased resize, clamp to [0, 1], flip + normalise + HWC->CHW."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    crop = fn.slice(image, start=feeds["start"], shape=feeds["shape"], axes=[0, 1])
    x = dmath.clamp((fn.cast(crop, dtype=types.FLOAT) - lo_den[0]) / lo_den[1], 0.0, 1.0)
    if plan.channels == 3:
        x = x * types.Constant(np.ones((1, 1, 3), np.float32))  # gray [h,w,1] -> [h,w,3]; colour unchanged
    elif plan.average_colour:
        x = fn.reductions.mean(x, axes=[2], keep_dims=True)
    out_h, out_w = plan.img_size
    x = fn.resize(x, size=[out_h, out_w], interp_type=types.INTERP_CUBIC, antialias=True, dtype=types.FLOAT)
    x = dmath.clamp(x, 0.0, 1.0)
    return fn.crop_mirror_normalize(
        x,
        mirror=feeds["flip"],
        mean=list(plan.mean),
        std=list(plan.std),
        output_layout="CHW",
        dtype=types.FLOAT16 if plan.half else types.FLOAT,
    )


def build_pipeline(plan: GraphPlan, source: Callable[[], tuple], batch_size: int, num_threads: int, prefetch: int):
    """A built pipeline whose external source calls ``source()`` once per iteration for the batch's feeds
    (in :attr:`GraphPlan.feed_names` order): the source's pixels, then :func:`sample_ops`."""
    from nvidia.dali import fn, pipeline_def

    names = plan.feed_names

    @pipeline_def(
        batch_size=batch_size, num_threads=num_threads, device_id=plan.device_id, prefetch_queue_depth=prefetch
    )
    def pipeline():
        feeds = dict(zip(names, fn.external_source(source=source, num_outputs=len(names), batch=True)))
        if plan.packed:
            image = packed_pixels(feeds, plan.gpu)
        else:
            image = _decode_image(feeds["payload"], plan.gpu, plan.decode_rgb)
        return sample_ops(image, feeds, range_operands(image, feeds, plan), plan)

    pipe = pipeline()
    pipe.build()
    return pipe


class _Feed:
    """The external source: the next prepared batch's feeds; each batch stays in ``inflight`` until DALI
    delivers it (a failed batch is the oldest one there)."""

    def __init__(self, prepared: Iterator[_Prepared]):
        self.prepared = prepared
        self.inflight: list[_Prepared] = []

    def __call__(self) -> tuple:
        item = next(self.prepared)  # StopIteration past the last step ends DALI's epoch
        self.inflight.append(item)
        return item.feeds


class DaliLoader(ReferenceLoader):
    """Rank-sharded, resumable batches decoded and augmented by DALI (see the module docstring).

    Args:
        dataset: an :class:`ImageFolderDataset` over a folder, a manifest or a pack; its catalogue gives the
            files and its sample spec the crop/flip rule, mapping and normalisation applied. Every image's
            size, channels and bit depth must be known (headers checked, or a manifest with
            width/height/channels/bits).
        batch_size, seed, rank, world_size: as :class:`ReferenceLoader`.
        device_id: the CUDA device DALI runs on; ``None`` = CPU mode (every operator on the CPU).
        num_threads: DALI CPU threads (decoding PNG/TIFF/BMP, CPU operators).
        dtype: delivered image dtype, ``torch.float32`` or ``torch.float16`` (bf16: cast in ``Batch.to``).
        prefetch: batches DALI prepares ahead.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device_id: int | None = None,
        num_threads: int = 4,
        dtype: torch.dtype = torch.float32,
        prefetch: int = 2,
    ):
        super().__init__(
            dataset, batch_size, seed, num_workers=0, drop_last=True, rank=rank, world_size=world_size, pin_memory=False
        )
        import_dali()
        if not isinstance(dataset, ImageFolderDataset):
            raise TypeError(
                f"DaliLoader: expected an ImageFolderDataset, got {type(dataset).__name__}; "
                "build one over a folder, a manifest or a pack"
            )
        self.catalogue = dataset.catalogue
        unknown = self.catalogue.unknown()
        if unknown:
            raise ValueError(
                f"DaliLoader: expected every image's size, channels and bit depth, got none for {len(unknown)} "
                f"(e.g. {unknown[0]}); build the dataset with check_headers=True or from a complete curate manifest"
            )
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"DaliLoader: expected dtype float32 or float16, got {dtype}; cast bf16 in Batch.to")
        if num_threads < 1 or prefetch < 1:
            raise ValueError(f"DaliLoader: expected num_threads >= 1 and prefetch >= 1, got {num_threads}, {prefetch}")
        self.device_id = device_id
        self.num_threads = int(num_threads)
        self.dtype = dtype
        self.prefetch = int(prefetch)
        self.packed = self.catalogue.packed
        self.source = "packed" if self.packed is not None else "files"
        spec = dataset.spec
        any_colour = any(k[0] == 3 for k in self.catalogue.kinds)
        channels = 1 if spec.in_chans == 1 else (3 if (any_colour or spec.gray_expands) else 1)
        self.stored_ranges = self.packed is not None and self.packed.mapping == spec.mapping
        self.decode_rgb = any_colour
        self.channels = channels
        self._average_colour = any_colour and channels == 1
        self._mean, self._std = spec.normalisation(channels)
        logger.info(
            "DALI loader: %s source, %s, %d threads, %s decode, %d channel(s) out%s",
            self.source,
            "CPU mode" if device_id is None else f"GPU {device_id}",
            self.num_threads,
            "RGB" if self.decode_rgb else "GRAY",
            self.channels,
            ", stored 16-bit ranges" if self.stored_ranges else "",
        )

    @property
    def plan(self) -> GraphPlan:
        """The graph this loader builds (read at build time: ``device_id`` may be changed before a run)."""
        return GraphPlan(
            packed=self.packed is not None,
            device_id=self.device_id,
            decode_rgb=self.decode_rgb,
            channels=self.channels,
            average_colour=self._average_colour,
            stored_ranges=self.stored_ranges,
            mapping=self.dataset.spec.mapping,
            img_size=self.dataset.spec.img_size,
            mean=self._mean,
            std=self._std,
            half=self.dtype == torch.float16,
        )

    # ------------------------------------------------------------------------------------------
    # host side: which files, their bytes and their per-sample parameters
    def _mark_unreadable(self, path: str, reason: str) -> None:
        self.catalogue.unreadable.mark(path, reason)
        self._skipped.setdefault(path, reason)

    def _payload(self, position: int) -> np.ndarray:
        """The bytes DALI starts from: encoded file (files), compressed chunks (packed, GPU) or inflated
        chunks ``[chunks, chunk_len]`` (packed, CPU mode). Raises ImageReadError / OSError."""
        if self.packed is None:
            path = self.catalogue.path(position)
            data = np.fromfile(path, dtype=np.uint8)
            if data.size == 0:
                raise ImageReadError(path, "empty file (0 bytes)")
            return data
        row = self.catalogue.pack_row(position)
        if self.device_id is None:
            return self.packed.raw_chunks(row)
        return np.frombuffer(self.packed.compressed(row), dtype=np.uint8)

    def _prepare(self, batch: Sequence[int], epoch: int, plan: GraphPlan) -> _Prepared:
        catalogue, spec = self.catalogue, self.dataset.spec
        positions: list[int] = []
        skipped: list[tuple[str, str]] = []
        feeds: dict[str, list[np.ndarray]] = {name: [] for name in plan.feed_names}
        for index in batch:
            payload, position, missed = catalogue.read(index, self._payload, (ImageReadError, OSError))
            skipped += missed
            positions.append(position)
            width, height = catalogue.sizes[position]
            channels, bits = catalogue.kinds[position]
            params = spec.augment_params(position, height, width, epoch)
            feeds["payload"].append(payload)
            feeds["start"].append(np.array([params.top, params.left], np.int32))
            feeds["shape"].append(np.array([params.height, params.width], np.int32))
            feeds["flip"].append(np.array(int(params.flip), np.int32))
            if "kind" in feeds:
                feeds["kind"].append(np.array([channels, bits], np.int32))
            if plan.packed:
                entry = self.packed.entries[catalogue.pack_row(position)]
                feeds["layout"].append(
                    np.array(
                        [entry.height, entry.width, entry.channels, bits // 8, entry.nbytes, entry.chunk_len], np.int32
                    )
                )
                if "chunk_sizes" in feeds:
                    feeds["chunk_sizes"].append(np.array(entry.chunk_sizes, np.int32))
                if "ranges" in feeds:
                    lo, hi = (0.0, 65535.0) if bits == 8 else (entry.lo, entry.hi)
                    feeds["ranges"].append(np.array(_lo_denominator(lo, hi), np.float32))
        return _Prepared(positions, skipped, tuple(feeds[name] for name in plan.feed_names))

    def _to_tensor(self, output) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = output.as_tensor()
        device = torch.device("cpu") if self.device_id is None else torch.device("cuda", self.device_id)
        out = torch.empty(tensor.shape(), dtype=self.dtype, device=device)
        stream = None if self.device_id is None else torch.cuda.current_stream(device)
        feed_ndarray(tensor, out, cuda_stream=stream)
        return out

    # ------------------------------------------------------------------------------------------
    def find_undecodable(self, positions: Sequence[int]) -> list[tuple[str, str]]:
        """Decode each file one at a time, as the pipeline would; ``(path, reason)`` of failures.

        First with the CPU decoder (cheap; finds truncated and corrupt files). When the loader decodes
        on a GPU and the CPU decoder reads every suspect, the failure is the GPU decoder's own (nvJPEG
        rejects some files libjpeg reads), so the suspects are probed again with the ``mixed`` decoder.
        """

        def probe(device_id: int | None) -> list[tuple[str, str]]:
            bad = []
            for position in positions:
                path = str(self.catalogue.path(position))
                try:
                    if self.packed is not None:
                        self.packed.read(self.catalogue.pack_row(position))
                    else:
                        decode_file(path, rgb=self.decode_rgb, device_id=device_id)
                except Exception as exc:  # noqa: BLE001 - any decoder failure marks the file
                    reason = getattr(exc, "reason", None) or str(exc)
                    bad.append((path, reason if device_id is None else f"{reason} on the GPU decoder"))
            return bad

        bad = probe(None)
        if not bad and self.packed is None and self.device_id is not None:
            bad = probe(self.device_id)
        return bad

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` from ``start_step`` on, on the pipeline's device (see the class doc)."""
        steps = self.steps_per_epoch
        if not 0 <= start_step <= steps:
            raise ValueError(
                f"DaliLoader.iter_epoch: expected 0 <= start_step <= {steps}, got {start_step}; "
                "resume from the step stored in the checkpoint"
            )
        batches = self.epoch_batches(epoch)
        self.dataset.set_epoch(epoch)
        plan = self.plan
        step = start_step
        while step < steps:
            # host-side preparation runs ahead in a thread, off the training loop's thread
            prepared = ThreadPrefetcher(
                (self._prepare(b, epoch, plan) for b in batches[step:]), depth=self.prefetch + 1, name="dali-prepare"
            )
            feed = _Feed(prepared)
            pipe = build_pipeline(plan, feed, self.batch_size, self.num_threads, self.prefetch)
            try:
                while step < steps:
                    (images,) = pipe.run()
                    item = feed.inflight.pop(0)
                    batch = Batch(
                        images=self._to_tensor(images),
                        indices=torch.tensor(item.positions, dtype=torch.int64),
                        skipped=item.skipped,
                    )
                    for path, reason in item.skipped:
                        self._skipped.setdefault(path, reason)
                    step += 1
                    yield batch
            except RuntimeError as exc:
                prepared.close()  # batches prepared ahead are stale once files are marked unreadable
                if "decod" not in str(exc).lower():
                    raise
                # the failing batch is the oldest one DALI took in and has not delivered
                suspects = [p for item in feed.inflight for p in item.positions]
                bad = self.find_undecodable(suspects)
                if not bad:
                    raise
                for path, reason in bad:
                    self._mark_unreadable(path, reason)
            finally:
                prepared.close()
                del pipe
