"""Packed training copies: raw pixels, LZ4-compressed, in a few large shard files (``infmae pack``).

Legend: N = images; H, W = an image's stored size; C = stored channels (1, or 3 for colour sources);
bps = bytes per sample (1 for 8-bit, 2 for 16-bit).

Why: PNG and TIFF decode on the CPU even in DALI's ``mixed`` decoder, so a GPU that trains on thousands
of images per second starves. A packed copy holds every image as raw little-endian ``uint8``/``uint16``
pixels compressed with LZ4 (block format, what ``fn.decoders.inflate`` reads on the GPU), so every
format and bit depth reaches the GPU undecoded. The reference loader reads the same shards on the CPU
(``lz4.block``), so the two loaders stay comparable on identical pixels.

Layout of a pack folder::

    pack.json         format, version, counts, chunk size, the mapping the ranges were computed with, the
                      source ``root`` (absolute) and the files left out, ``skipped``: [relative path, reason]
    index.csv         one row per image (INDEX_COLUMNS), in the source's sorted order
    shard-00000.bin   concatenated compressed chunks

An image's raw bytes (``H*W*C*bps``, C-order ``[H, W, C]``) are zero-padded to ``chunks * chunk_len``
and cut into ``chunks`` equal pieces of ``chunk_len`` bytes (at most :data:`CHUNK_BYTES`), each
compressed on its own: ``inflate`` requires equal inflated chunk shapes, and several chunks let the GPU
inflate a 6912x1024 frame in parallel. The row stores the compressed chunk sizes; the chunks lie back to
back from ``offset`` in the shard, and ``crc32`` is the CRC-32 of those compressed bytes: LZ4 inflates many
damaged blocks without an error (a changed literal byte is just another pixel), on the GPU as on the CPU,
so both loaders check it when they read an image (about 0.1 ms for a 640x512 frame, the GIL released).

Packing is lossless unless ``max_side`` is given: then images whose longer side exceeds it are resized
(bicubic, antialiased, rounded) so that side equals ``max_side``. ``lo``/``hi`` are the image's range
under the pack's mapping (:func:`infmae.data.mapping.image_range` on the stored pixels) so a loader with
the same mapping need not compute it; 8-bit rows store ``0, 255``.

Files that cannot be read (reason ``unreadable: ...``) and tiny images (width AND height under
``min_size``, default 20 px, the rule of ``infmae curate`` and the folder dataset; reason ``too_small: ...``)
are left out and listed in ``pack.json`` with the ``min_size`` used; a dataset opened on the pack reports
them under their source paths (``root`` / path), so a run's ``skipped_files.tsv`` names the real files.
Packs written before ``root`` was recorded load as packs with nothing skipped.

The folder is written under a temporary name and renamed when complete: a pack is never half-written.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import mmap
import os
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .io import ImageReadError, read_image
from .mapping import DEFAULT_MAPPING, SixteenBitMapping

logger = logging.getLogger(__name__)

PACK_FORMAT = "infmae-pack"
PACK_VERSION = 1
CHUNK_BYTES = 1 << 20
INDEX_COLUMNS: tuple[str, ...] = (
    "path",
    "shard",
    "offset",
    "chunk_len",
    "chunk_sizes",
    "height",
    "width",
    "channels",
    "bits",
    "lo",
    "hi",
    "source_height",
    "source_width",
    "crc32",
)


def _lz4_block():
    try:
        import lz4.block
    except ImportError:
        raise ImportError("packed data needs the lz4 package (a core dependency): pip install lz4") from None
    return lz4.block


def is_pack(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a pack folder (holds ``pack.json``)."""
    return (Path(path) / "pack.json").is_file()


@dataclass(frozen=True)
class PackedEntry:
    """One index row (see the module docstring); ``chunk_sizes`` are compressed sizes in bytes."""

    path: str
    shard: int
    offset: int
    chunk_len: int
    chunk_sizes: tuple[int, ...]
    height: int
    width: int
    channels: int
    bits: int
    lo: float
    hi: float
    crc32: int | None = None  # of the compressed chunks; None: not stored (not checked)
    source_height: int | None = None  # the source file's size, before max_side; None: not stored
    source_width: int | None = None

    @property
    def nbytes(self) -> int:
        """Raw (inflated, unpadded) size: ``H * W * C * bps``."""
        return self.height * self.width * self.channels * (self.bits // 8)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def chunk_layout(nbytes: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, int]:
    """``(chunks, chunk_len)``: the fewest equal chunks of at most ``chunk_bytes`` covering ``nbytes``."""
    if nbytes <= 0:
        raise ValueError(f"chunk_layout: expected nbytes > 0, got {nbytes}; an image has at least one pixel")
    chunks = math.ceil(nbytes / chunk_bytes)
    return chunks, math.ceil(nbytes / chunks)


def cap_longer_side(array: np.ndarray, max_side: int) -> np.ndarray:
    """Resize ``[H, W, C]`` uint8/uint16 so its longer side is ``max_side`` (bicubic, antialiased, rounded
    and clipped to the dtype); returned unchanged when it already fits."""
    height, width = array.shape[:2]
    if max(height, width) <= max_side:
        return array
    factor = max_side / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 2, 0), dtype=np.float32))[None]
    y = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)[0]
    top = 255.0 if array.dtype == np.uint8 else 65535.0
    y = y.round_().clamp_(0.0, top).numpy().astype(array.dtype)
    return np.ascontiguousarray(np.moveaxis(y, 0, 2))


def compress_image(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, list[bytes]]:
    """LZ4-block-compress ``[H, W, C]`` pixels as equal padded chunks: ``(chunk_len, [chunk, ...])``."""
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    chunks, chunk_len = chunk_layout(len(raw), chunk_bytes)
    raw = raw + bytes(chunks * chunk_len - len(raw))
    block = _lz4_block()
    return chunk_len, [
        block.compress(raw[i * chunk_len : (i + 1) * chunk_len], store_size=False) for i in range(chunks)
    ]


def too_small_reason(width: int, height: int, min_size: int) -> str:
    """The reason a dataset or a pack gives for an image whose both sides are under ``min_size``."""
    return f"too_small: {width}x{height} has both sides under {min_size} px"


def _pack_one(job: tuple[str, str, int | None, int, SixteenBitMapping, int]) -> dict:
    """Worker: read, cap, measure and compress one file; returns a row dict with its chunks, or the reason
    it is left out (``error``: ``unreadable: ...`` or ``too_small: ...``)."""
    rel, path, max_side, chunk_bytes, mapping, min_size = job
    try:
        array = read_image(path)
    except ImageReadError as exc:
        return {"path": rel, "error": f"unreadable: {exc.reason}"}
    source_h, source_w = array.shape[:2]
    if source_w < min_size and source_h < min_size:
        return {"path": rel, "error": too_small_reason(source_w, source_h, min_size)}
    if max_side:
        array = cap_longer_side(array, max_side)
    lo, hi = mapping.range(array)
    chunk_len, chunks = compress_image(array, chunk_bytes)
    return {
        "path": rel,
        "chunk_len": chunk_len,
        "chunks": chunks,
        "height": array.shape[0],
        "width": array.shape[1],
        "channels": array.shape[2],
        "bits": array.dtype.itemsize * 8,
        "lo": lo,
        "hi": hi,
        "source_height": source_h,
        "source_width": source_w,
    }


class _ShardWriter:
    """Appends compressed chunks to ``shard-NNNNN.bin`` files in ``folder``, starting a new shard once one
    holds ``shard_bytes`` or more."""

    def __init__(self, folder: Path, shard_bytes: int):
        self.folder = folder
        self.shard_bytes = shard_bytes
        self.names: list[str] = []
        self.written = 0  # compressed bytes in all shards
        self._handle = None
        self._fill = 0

    def write(self, chunks: Sequence[bytes]) -> tuple[int, int, list[int], int]:
        """Write one image's chunks back to back: ``(shard, offset, chunk sizes, CRC-32 of the chunks)``."""
        if self._handle is None or self._fill >= self.shard_bytes:
            self.close()
            self.names.append(f"shard-{len(self.names):05d}.bin")
            self._handle = open(self.folder / self.names[-1], "wb")
            self._fill = 0
        offset, crc = self._fill, 0
        for chunk in chunks:
            self._handle.write(chunk)
            crc = zlib.crc32(chunk, crc)
        sizes = [len(c) for c in chunks]
        self._fill += sum(sizes)
        self.written += sum(sizes)
        return len(self.names) - 1, offset, sizes, crc

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _index_row(row: dict, shard: int, offset: int, sizes: list[int], crc: int) -> list:
    """One ``index.csv`` row (:data:`INDEX_COLUMNS`) of a packed image."""
    return [
        row["path"],
        shard,
        offset,
        row["chunk_len"],
        ";".join(map(str, sizes)),
        row["height"],
        row["width"],
        row["channels"],
        row["bits"],
        repr(float(row["lo"])),
        repr(float(row["hi"])),
        row["source_height"],
        row["source_width"],
        crc,
    ]


def pack_dataset(
    files: Sequence[str],
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_side: int | None = None,
    shard_bytes: int = 1 << 30,
    chunk_bytes: int = CHUNK_BYTES,
    workers: int | None = None,
    mapping: SixteenBitMapping = DEFAULT_MAPPING,
    source: str = "",
    min_size: int = 20,
) -> dict:
    """Write a pack of ``files`` (paths relative to ``root``) to the folder ``out``.

    Args:
        files: relative paths, e.g. from :func:`infmae.data.catalogue.scan_folder` or a manifest's kept rows.
        root: the folder they are relative to.
        out: the pack folder to create (must not exist).
        max_side: cap the longer side at this many pixels (lossy); ``None`` keeps every pixel.
        shard_bytes: start a new shard after this many compressed bytes.
        chunk_bytes: the largest inflated chunk (nvCOMP's LZ4 allows up to 16 MiB).
        workers: processes reading and compressing (default: all cores).
        mapping: the 16-bit rule whose per-image range is stored (match the training config).
        source: a description of the source, recorded in ``pack.json``.
        min_size: leave out images whose width AND height are both under it (``too_small``); 0 keeps all.

    Returns:
        the ``pack.json`` dict, including ``skipped``: (relative path, reason) of the files left out,
        unreadable (``unreadable: ...``) or too small (``too_small: ...``), and ``root``, the absolute
        folder they are relative to.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"pack: expected a new output folder, got existing {out}; remove it or choose another -o")
    if max_side is not None and max_side < 16:
        raise ValueError(f"pack: expected max_side >= 16 (one patch), got {max_side}; e.g. --max-side 1024")
    if not 1 <= chunk_bytes <= 1 << 24:
        raise ValueError(f"pack: expected 1 <= chunk_bytes <= 16 MiB (nvCOMP's LZ4 limit), got {chunk_bytes}")
    if min_size < 0:
        raise ValueError(f"pack: expected min_size >= 0, got {min_size}; e.g. --min-size 20 (0 keeps every image)")
    _lz4_block()
    root = Path(root)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    workers = workers or os.cpu_count() or 1
    jobs = [(rel, str(root / rel), max_side, chunk_bytes, mapping, min_size) for rel in files]
    skipped: list[tuple[str, str]] = []
    raw_bytes = 0
    start = time.monotonic()
    with (
        open(tmp / "index.csv", "w", newline="", encoding="utf-8") as index_handle,
        _ShardWriter(tmp, shard_bytes) as shards,
    ):
        writer = csv.writer(index_handle)
        writer.writerow(INDEX_COLUMNS)
        pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
        results: Iterator[dict] = pool.map(_pack_one, jobs, chunksize=8) if pool else map(_pack_one, jobs)
        try:
            for done, row in enumerate(results, 1):
                if "error" in row:
                    logger.warning("pack: skipping %s: %s", root / row["path"], row["error"])
                    skipped.append((row["path"], row["error"]))
                    continue
                writer.writerow(_index_row(row, *shards.write(row["chunks"])))
                raw_bytes += row["height"] * row["width"] * row["channels"] * row["bits"] // 8
                if done % 5000 == 0 or done == len(jobs):
                    elapsed = time.monotonic() - start
                    logger.info("pack: %d / %d files (%.0f files/s)", done, len(jobs), done / max(elapsed, 1e-9))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    packed_bytes = shards.written
    count = len(jobs) - len(skipped)
    if count == 0:
        shutil.rmtree(tmp)
        raise ValueError(
            f"pack: expected at least one readable image with a side of at least {min_size} px among {len(jobs)} "
            f"files in {root}, got none; check the path (or lower --min-size)"
        )
    info = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "count": count,
        "shards": shards.names,
        "chunk_bytes": chunk_bytes,
        "max_side": max_side,
        "mapping": mapping.to_dict(),
        "raw_bytes": raw_bytes,
        "packed_bytes": packed_bytes,
        "source": source or str(root),
        "root": os.path.abspath(root),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "min_size": min_size,
        "skipped": skipped,
    }
    (tmp / "pack.json").write_text(json.dumps(info, indent=1))
    os.replace(tmp, out)
    logger.info(
        "pack: %d images, %.1f MB raw -> %.1f MB in %d shard(s) (%.2fx), %d skipped, in %s",
        count,
        raw_bytes / 1e6,
        packed_bytes / 1e6,
        len(shards.names),
        raw_bytes / max(packed_bytes, 1),
        len(skipped),
        out,
    )
    return info


class PackedReader:
    """Random access to a pack's images (memory-mapped shards; safe to use from DataLoader workers).

    Args:
        root: a pack folder written by :func:`pack_dataset`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.info = json.loads((self.root / "pack.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"PackedReader: expected {self.root}/pack.json written by `infmae pack`, got {exc}"
            ) from None
        if self.info.get("format") != PACK_FORMAT or self.info.get("version") != PACK_VERSION:
            raise ValueError(
                f"PackedReader: expected format {PACK_FORMAT} version {PACK_VERSION}, got "
                f"{self.info.get('format')} version {self.info.get('version')} in {self.root}; re-run `infmae pack`"
            )
        self.entries: list[PackedEntry] = []
        with open(self.root / "index.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                self.entries.append(
                    PackedEntry(
                        path=row["path"],
                        shard=int(row["shard"]),
                        offset=int(row["offset"]),
                        chunk_len=int(row["chunk_len"]),
                        chunk_sizes=tuple(int(s) for s in row["chunk_sizes"].split(";")),
                        height=int(row["height"]),
                        width=int(row["width"]),
                        channels=int(row["channels"]),
                        bits=int(row["bits"]),
                        lo=float(row["lo"]),
                        hi=float(row["hi"]),
                        crc32=int(row["crc32"]) if row.get("crc32") else None,
                        source_height=int(row["source_height"]) if row.get("source_height") else None,
                        source_width=int(row["source_width"]) if row.get("source_width") else None,
                    )
                )
        if len(self.entries) != self.info["count"]:
            raise ValueError(
                f"PackedReader: expected {self.info['count']} index rows in {self.root}, got {len(self.entries)}; "
                "the pack is damaged: re-run `infmae pack`"
            )
        self._maps: dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def source_path(self, path: str) -> Path:
        """The source file an index ``path`` was packed from (``root / path``); for a pack that did not
        record its ``root`` (an older one), the path inside the pack."""
        root = self.info.get("root")
        return Path(root) / path if root else self.root / path

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(source path, reason)`` of the files ``infmae pack`` left out (unreadable or too small); empty
        for a pack that did not record its ``root`` (an older one)."""
        if not self.info.get("root"):
            return []
        return [(str(self.source_path(rel)), str(reason)) for rel, reason in self.info.get("skipped", [])]

    @property
    def min_size(self) -> int:
        """The ``min_size`` the pack was written with (0 for an older pack: nothing was left out as small)."""
        return int(self.info.get("min_size", 0))

    @property
    def mapping(self) -> SixteenBitMapping:
        """The 16-bit rule the stored ranges were computed with."""
        return SixteenBitMapping.from_dict(self.info["mapping"])

    def __getstate__(self) -> dict:  # mmaps do not pickle; workers reopen them
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _shard(self, shard: int) -> mmap.mmap:
        if shard not in self._maps:
            with open(self.root / self.info["shards"][shard], "rb") as handle:
                self._maps[shard] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[shard]

    def compressed(self, index: int) -> memoryview:
        """The image's compressed chunks, back to back (``sum(chunk_sizes)`` bytes, no copy), checked
        against the stored CRC-32.

        Raises:
            ImageReadError: the bytes are not those that were packed (a damaged shard).
        """
        entry = self.entries[index]
        data = memoryview(self._shard(entry.shard))[entry.offset : entry.offset + sum(entry.chunk_sizes)]
        if entry.crc32 is not None:
            found = zlib.crc32(data)
            if found != entry.crc32:
                raise ImageReadError(
                    self.root / entry.path,
                    f"damaged pack: CRC-32 {found:08x} of the packed bytes, "
                    f"{entry.crc32:08x} stored; re-run `infmae pack` (the shard changed on disk)",
                )
        return data

    def raw_chunks(self, index: int) -> np.ndarray:
        """``[chunks, chunk_len]`` uint8: the inflated padded chunks (what ``fn.decoders.inflate`` outputs).

        Raises:
            ImageReadError: a chunk that does not inflate to ``chunk_len`` bytes (a damaged shard).
        """
        entry = self.entries[index]
        data = self.compressed(index)
        block = _lz4_block()
        out = np.empty((len(entry.chunk_sizes), entry.chunk_len), np.uint8)
        start = 0
        for i, size in enumerate(entry.chunk_sizes):
            try:
                raw = block.decompress(data[start : start + size], uncompressed_size=entry.chunk_len)
            except Exception as exc:  # noqa: BLE001 - lz4 raises LZ4BlockError on damaged data
                raise ImageReadError(self.root / entry.path, f"damaged packed chunk {i} ({exc})") from None
            if len(raw) != entry.chunk_len:
                raise ImageReadError(
                    self.root / entry.path, f"packed chunk {i} inflated to {len(raw)} bytes, expected {entry.chunk_len}"
                )
            out[i] = np.frombuffer(raw, np.uint8)
            start += size
        return out

    def read(self, index: int) -> np.ndarray:
        """The stored image: ``[H, W, C]`` uint8 or uint16 (native byte order)."""
        entry = self.entries[index]
        flat = self.raw_chunks(index).reshape(-1)[: entry.nbytes]
        dtype = np.dtype("<u2") if entry.bits == 16 else np.dtype(np.uint8)
        return flat.view(dtype).reshape(entry.shape).astype(dtype.newbyteorder("="), copy=False)
