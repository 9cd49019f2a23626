"""The scan stage of ``infmae curate``: read every image once, in parallel, streaming results to SQLite.

One row per file goes to ``OUT/scan.sqlite`` (table ``files``) as soon as a worker finishes it, in its
own committed transaction (WAL journal), so memory stays bounded (no list of decoded arrays, only
small rows) and a scan that is killed loses at most the files that were in flight. A row is keyed by
the file's relative path, size in bytes and modification time (ns): on the next run a file whose key
is unchanged is not read again, so an interrupted scan resumes where it stopped and a grown folder
costs only its new (or modified) files. Rows of files that disappeared are deleted. A damaged store
(truncated, overwritten, or a database of another schema) is found when it is opened, moved aside to
``scan.sqlite.damaged-<time>`` with a warning, and the scan starts afresh; ``--rescan`` replaces the
store on request.

Each row holds: ``format`` (Pillow's, e.g. PNG/TIFF/JPEG/BMP), ``width``, ``height``, ``bits`` (8/16),
``channels`` (1/3), ``entropy`` (bits, of the 8-bit view), ``sha256`` (of the decoded pixels),
``phash`` (64-bit pHash as 16 hex digits), ``phash256`` (the 256-bit pHash), ``error`` (the reader's
reason when the file is unreadable; then the pixel columns are empty, the size is kept when the header
could be read) and ``thumb`` (the 32x32 uint8 thumbnail of the 8-bit view, 1024 bytes, which confirms
near-duplicate pairs). A store written before ``thumb`` existed gains the column when opened and its
readable files are read again on the next scan (their rows have no thumbnail yet).
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

from infmae.data.catalogue import scan_folder
from infmae.data.io import ImageReadError, read_image, read_image_header

from .hashes import eight_bit_view, entropy_bits, fingerprints, pixel_sha256

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
    "thumb",  # last: a store written before it gains it with ALTER TABLE (see _add_thumb_column)
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, format TEXT, width INTEGER, height INTEGER,
    bits INTEGER, channels INTEGER, entropy REAL, sha256 TEXT, phash TEXT, phash256 TEXT, error TEXT,
    thumb BLOB
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
        phash, phash256, thumb = fingerprints(view)
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
            thumb=thumb,
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


STORE_NAME = "scan.sqlite"
_COMPANIONS = ("-wal", "-shm")  # SQLite's files beside a WAL-mode database
_TABLES = {"files": COLUMNS, "meta": ("key", "value")}


class DamagedStore(Exception):
    """The scan store cannot be used as it is (see :func:`_store_problem`)."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """SQLite's "file is not a database" and "database disk image is malformed" (SQLITE_NOTADB and
    SQLITE_CORRUPT) arrive as a plain DatabaseError; a locked, read-only or unopenable store arrives as an
    OperationalError, which is no reason to set the file aside."""
    return type(exc) is sqlite3.DatabaseError


def _store_problem(connection: sqlite3.Connection) -> str | None:
    """What is wrong with an opened store (one line), or None: ``PRAGMA quick_check`` (every page read,
    about 0.2 s for 300k rows), then the tables and columns this module writes."""
    try:
        found = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
        if found != ["ok"]:
            return "quick_check: " + "; ".join(" ".join(str(r).split()) for r in found)[:300]
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table not in _TABLES:
                return f"table {table!r} is not a table of a curate scan (files, meta): another schema"
            columns = tuple(row[1] for row in connection.execute(f"PRAGMA table_info({table})"))
            if columns != _TABLES[table] and not (table == "files" and columns == COLUMNS[:-1]):
                return f"table {table!r} has columns {columns}, expected {_TABLES[table]}"
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        return str(exc)
    return None


def _set_aside(store: Path, problem: str) -> Path:
    """Rename a damaged store (and its -wal/-shm) to ``scan.sqlite.damaged-<time>``; nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = store.with_name(f"{store.name}.damaged-{stamp}")
    count = 1
    while aside.exists():
        count += 1
        aside = store.with_name(f"{store.name}.damaged-{stamp}-{count}")
    os.replace(store, aside)
    for suffix in _COMPANIONS:
        companion = store.with_name(store.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    logger.warning(
        "curate: the scan store %s is damaged (%s); moved it to %s and scanning every file again",
        store,
        " ".join(problem.split()),
        aside.name,
    )
    return aside


def _add_thumb_column(connection: sqlite3.Connection) -> None:
    """A store of the schema before ``thumb`` (the same columns less the last) gains it, empty; the scan
    then reads its readable files again (a row without a thumbnail is not reused); rows of unreadable
    files are kept as they are."""
    columns = tuple(row[1] for row in connection.execute("PRAGMA table_info(files)"))
    if columns == COLUMNS[:-1]:
        connection.execute("ALTER TABLE files ADD COLUMN thumb BLOB")
        connection.commit()
        logger.info("curate: the scan store predates thumbnails; its readable files will be read again")


def _connect(store: Path, check: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(store)
    try:
        problem = _store_problem(connection) if check else None
        if problem is not None:
            raise DamagedStore(problem)
        _add_thumb_column(connection)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(_SCHEMA)
        connection.commit()
    except sqlite3.DatabaseError as exc:
        connection.close()
        if not _is_damage(exc):
            raise
        raise DamagedStore(str(exc)) from None
    except DamagedStore:
        connection.close()
        raise
    return connection


def open_store(out: str | os.PathLike, check: bool = True, rescan: bool = False) -> sqlite3.Connection:
    """Open (creating) ``OUT/scan.sqlite``; WAL journal, so each per-file commit is cheap.

    Args:
        out: the output folder.
        check: first check the store (``PRAGMA quick_check``, tables and columns); a damaged one (not a
            database, malformed pages, another schema) is logged as a warning, moved to
            ``scan.sqlite.damaged-<time>`` and replaced by an empty store, so the scan starts afresh.
        rescan: delete an existing store first (``infmae curate --rescan``).
    """
    Path(out).mkdir(parents=True, exist_ok=True)
    store = Path(out) / STORE_NAME
    if rescan:
        for path in (store, *(store.with_name(store.name + suffix) for suffix in _COMPANIONS)):
            if path.exists():
                path.unlink()
                logger.info("curate: --rescan: removed %s", path)
    try:
        try:
            return _connect(store, check)
        except DamagedStore as exc:
            _set_aside(store, str(exc))
        return _connect(store, check)
    except sqlite3.OperationalError as exc:  # locked, read-only, cannot be opened: not damage, left alone
        raise ValueError(
            f"curate: expected to open the scan store {store}, got {type(exc).__name__}: {exc}; is another "
            f"`infmae curate` writing to {out}? Check that the folder is writable"
        ) from exc


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
            "use another -o folder, or pass --rescan to replace that scan"
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
    rescan: bool = False,
) -> ScanStats:
    """Scan ``src`` into ``OUT/scan.sqlite``, reading only files whose (path, size, mtime) is new.

    Args:
        src: the folder tree to curate.
        out: output folder (holds the SQLite store).
        workers: processes to read with (default: every core); 1 reads in this process.
        on_result: called with each row after it is committed (progress hooks, fault-injection tests).
        progress_seconds: interval of the progress log line.
        rescan: ignore (delete) an existing store and read every file again. A damaged store is set aside
            and rebuilt without being asked (see :func:`open_store`).

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
    connection = open_store(out, rescan=rescan)
    try:
        _check_source(connection, src, Path(out))
        known = {
            path: (size, mtime) if complete else None  # no thumbnail (an older store's row): read again
            for path, size, mtime, complete in connection.execute(
                "SELECT path, size, mtime_ns, error IS NOT NULL OR thumb IS NOT NULL FROM files"
            )
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
