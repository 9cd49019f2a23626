"""The scan stage of ``infmae curate``: read every image once, in parallel, streaming results to SQLite.

One row per file goes to ``OUT/scan.sqlite`` (table ``files``) as soon as a worker finishes it, in its
own committed transaction (WAL journal), so memory stays bounded (no list of decoded arrays, only
small rows) and a scan that is killed loses at most the files that were in flight. A row is keyed by
the file's relative path, size in bytes and modification time (ns): on the next run a file whose key
is unchanged is not read again, so an interrupted scan resumes where it stopped and a grown folder
costs only its new (or modified) files. Rows of files that disappeared are deleted.

Each row holds: ``format`` (Pillow's, e.g. PNG/TIFF/JPEG/BMP), ``width``, ``height``, ``bits`` (8/16),
``channels`` (1/3), ``entropy`` (bits, of the 8-bit view), ``sha256`` (of the decoded pixels),
``phash`` (64-bit pHash as 16 hex digits), ``phash256`` (the 256-bit pHash that verifies pairs)
and ``error`` (the reader's reason when the file is unreadable; then the pixel columns are empty, the size is
kept when the header could be read).
See :mod:`infmae.curate.hashes` for the definitions.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from infmae.data.folder import scan_folder
from infmae.data.io import ImageReadError, read_image, read_image_header

from .hashes import dct_hashes, eight_bit_view, entropy_bits, pixel_sha256

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "path",
    "size",
    "mtime_ns",
    "format",
    "width",
    "height",
    "bits",
    "channels",
    "entropy",
    "sha256",
    "phash",
    "phash256",
    "error",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, format TEXT, width INTEGER, height INTEGER,
    bits INTEGER, channels INTEGER, entropy REAL, sha256 TEXT, phash TEXT, phash256 TEXT, error TEXT
)
"""


@dataclass
class ScanStats:
    """What a scan did: ``total`` files found, ``reused`` unchanged rows, ``processed`` files read now."""

    total: int
    reused: int
    processed: int
    seconds: float

    @property
    def files_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def _format_of(path: Path) -> str:
    try:
        with Image.open(path) as img:
            return img.format or ""
    except Exception:  # noqa: BLE001 - the format column is informative only
        return ""


def scan_file(src: str, rel: str, size: int, mtime_ns: int) -> tuple:
    """Read one file and fingerprint it -> a row in :data:`COLUMNS` order. Never raises for a bad file."""
    path = Path(src) / rel
    row = dict.fromkeys(COLUMNS)
    row.update(path=rel, size=size, mtime_ns=mtime_ns)
    try:
        array = read_image(path)
        view = eight_bit_view(array)
        phash, phash256 = dct_hashes(view)
        row.update(
            format=_format_of(path),
            height=int(array.shape[0]),
            width=int(array.shape[1]),
            bits=16 if array.dtype.itemsize == 2 else 8,
            channels=int(array.shape[2]),
            entropy=entropy_bits(view),
            sha256=pixel_sha256(array),
            phash=f"{phash:016x}",
            phash256=phash256,
        )
    except ImageReadError as exc:
        row["error"] = exc.reason
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a 300k-file scan
        row["error"] = f"unexpected {type(exc).__name__}: {exc}"
    if row["error"] is not None:
        row["format"] = _format_of(path)
        try:
            row["width"], row["height"], _ = read_image_header(path)
        except ImageReadError:
            pass
    return tuple(row[c] for c in COLUMNS)


def _scan_task(task: tuple[str, str, int, int]) -> tuple:
    return scan_file(*task)


def _worker_init() -> None:
    try:  # a forked worker must not start torch's thread pool (numpy/Pillow do the work here)
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001
        pass


def open_store(out: str | os.PathLike) -> sqlite3.Connection:
    """Open (creating) ``OUT/scan.sqlite``; WAL journal, so each per-file commit is cheap."""
    Path(out).mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(Path(out) / "scan.sqlite")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(_SCHEMA)
    connection.commit()
    return connection


def _check_source(connection: sqlite3.Connection, src: Path, out: Path) -> None:
    """The store belongs to one SRC: rows are keyed by relative path, so another SRC must not reuse them."""
    connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    source = str(src.resolve())
    found = connection.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
    if found is None:
        connection.execute("INSERT INTO meta VALUES ('source', ?)", (source,))
        connection.commit()
    elif found[0] != source:
        raise ValueError(
            f"curate: expected OUT {str(out)!r} to hold a scan of {source}, got a scan of {found[0]}; "
            "use another -o folder or delete OUT/scan.sqlite"
        )


def list_files(src: Path) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of every image under ``src``, sorted (the loader's folder rule)."""
    listing = []
    for rel in scan_folder(src):
        try:
            stat = (src / rel).stat()
        except OSError:
            continue  # vanished between the listing and the stat
        listing.append((rel, int(stat.st_size), int(stat.st_mtime_ns)))
    return listing


def scan(
    src: str | os.PathLike,
    out: str | os.PathLike,
    workers: int | None = None,
    on_result: Callable[[tuple], None] | None = None,
    progress_seconds: float = 5.0,
) -> ScanStats:
    """Scan ``src`` into ``OUT/scan.sqlite``, reading only files whose (path, size, mtime) is new.

    Args:
        src: the folder tree to curate.
        out: output folder (holds the SQLite store).
        workers: processes to read with (default: every core); 1 reads in this process.
        on_result: called with each row after it is committed (progress hooks, fault-injection tests).
        progress_seconds: interval of the progress log line.

    Returns:
        :class:`ScanStats`.
    """
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"curate: expected SRC to be a folder, got {str(src)!r}; pass the image folder to curate")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"curate: expected --workers >= 1, got {workers}; use the number of cores")
    start = time.perf_counter()
    listing = list_files(src)
    connection = open_store(out)
    try:
        _check_source(connection, src, Path(out))
        known = {
            path: (size, mtime) for path, size, mtime in connection.execute("SELECT path, size, mtime_ns FROM files")
        }
        current = {rel for rel, _, _ in listing}
        stale = [(path,) for path in known if path not in current]
        if stale:
            connection.executemany("DELETE FROM files WHERE path = ?", stale)
            connection.commit()
        todo = [(str(src), rel, size, mtime) for rel, size, mtime in listing if known.get(rel) != (size, mtime)]
        del known, current
        logger.info(
            "curate scan: %d files under %s, %d already scanned, %d to read with %d worker(s)",
            len(listing),
            src,
            len(listing) - len(todo),
            len(todo),
            workers,
        )
        insert = f"INSERT OR REPLACE INTO files ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        last_log = time.perf_counter()
        done = 0

        def record(row: tuple) -> None:
            nonlocal done, last_log
            connection.execute(insert, row)
            connection.commit()
            done += 1
            if on_result is not None:
                on_result(row)
            now = time.perf_counter()
            if now - last_log >= progress_seconds or done == len(todo):
                rate = done / max(now - start, 1e-9)
                logger.info(
                    "curate scan: %d / %d files (%.0f files/s, ETA %.0f s)",
                    done,
                    len(todo),
                    rate,
                    (len(todo) - done) / max(rate, 1e-9),
                )
                last_log = now

        if workers == 1 or len(todo) <= 1:
            for task in todo:
                record(_scan_task(task))
        else:
            chunksize = max(1, min(16, len(todo) // (workers * 8)))
            with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
                for row in pool.imap_unordered(_scan_task, todo, chunksize=chunksize):
                    record(row)
    finally:
        connection.close()
    seconds = time.perf_counter() - start
    return ScanStats(total=len(listing), reused=len(listing) - len(todo), processed=len(todo), seconds=seconds)
