"""Checkpoints you can trust: never half-written, checked on load, read without running code.

Two formats, one layout. ``RUN/checkpoints/latest`` is a text file holding the name of the newest
complete checkpoint, which is either
- ``step_00001234.pt``: one ``torch.save`` file, written by a single process (no process group), with
  ``step_00001234.pt.sha256`` beside it; or
- ``step_00001234/``: a torch Distributed Checkpoint folder, written by every rank of a distributed run:
  the DCP shards and ``.metadata`` of ``{"model", "optimizer"}`` (sharded tensors, loadable on any
  number of ranks), ``extra.pt`` (step, data position, config, skipped files, world size; rank 0),
  ``rank_00000.pt`` ... (each rank's RNG states) and ``SHA256SUMS``. It is written as
  ``.step_00001234.tmp/`` and renamed by rank 0 once every rank's files are complete; a save killed
  half-way leaves only that temporary folder (removed by the next save) and ``latest`` on the previous
  checkpoint.

Safety: every file is read with ``torch.load(weights_only=True)``: tensors and plain data only, so a
crafted pickle cannot run code (``safe_load``). Checkpoints hold nothing else: the config as a dict of
primitives, RNG states as tensors. Older checkpoints of this project (numpy RNG state as an array) and
the released InfMAE files (``{'model': ...}``, possibly with an ``argparse.Namespace`` of arguments)
still load: those few classes are allowed by name, and they build data, not code.

Integrity: the SHA-256 of every file is written last (``sha256sum -c`` reads it) and checked on load.
A damaged checkpoint raises ``CheckpointError`` naming the file and what is wrong; ``--resume`` then
falls back to the newest intact one (``open_newest_intact``). Checkpoints written before checksums
existed load unverified (a damaged zip structure is still caught by the reader).

Asynchronous saves (``train.async_checkpoint``) copy the state to host memory before returning and write
it in a background thread while training goes on; the result is the same files, published the same way.
``Checkpointer`` owns all of this for the trainer: formats, sync/async, integrity, pruning, clean-up.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import logging
import os
import pickle
import re
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{8})\.pt$")
_DIR_NAME = re.compile(r"^step_(\d{8})$")
_TMP_DIR = re.compile(r"^\.step_\d{8}\.tmp$")
_TMP_FILE = re.compile(r"^\..+\.tmp-\d+$")  # _atomic_write's temporary names, left by a killed save
EXTRA = "extra.pt"
SUMS = "SHA256SUMS"  # in a DCP folder
SUMS_SUFFIX = ".sha256"  # beside a single-file checkpoint
FORMAT_VERSION = 2  # 2: weights_only-safe contents and checksums


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, incomplete, or not ours. The message is one line that
    names the file."""


class CheckpointWriteError(RuntimeError):
    """A save that failed (disk full, permissions): the previous checkpoint is still ``latest``."""


# ---------------------------------------------------------------------------------------------
# reading without running code
# ---------------------------------------------------------------------------------------------
def _allowed_globals() -> list:
    """Classes a checkpoint may name besides torch's own: data containers, no code. Older checkpoints of
    this project hold numpy's RNG state (a uint32 array); released MAE-style checkpoints may hold their
    training arguments as an ``argparse.Namespace``."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed = [
        argparse.Namespace,
        np.ndarray,
        np.dtype,
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    allowed += [type(np.dtype(kind)) for kind in ("uint32", "int64", "float64", "float32", "uint8")]
    return allowed


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def safe_load(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with one-line errors: ``CheckpointError`` for a file that
    is damaged, not a torch file, or whose pickle asks for code (it is not run)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error) and "global" not in str(error).lower():
            raise CheckpointError(
                f"checkpoint: expected a torch checkpoint, got {path} that does not unpickle "
                f"({_first_line(error)}); the file is damaged or not a checkpoint"
            ) from None
        try:
            names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) or "unknown"
        except Exception:  # noqa: BLE001 - only to name them; the refusal stands either way
            names = "unknown"
        raise CheckpointError(
            f"checkpoint: expected tensors and plain data, got {path} whose pickle needs code ({names}); it was "
            "not loaded, since loading it could run that code. If you trust its source, re-save just its "
            "tensors in a trusted environment"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError) as error:
        if isinstance(error, FileNotFoundError):
            raise CheckpointError(f"checkpoint: expected a file, got {path} (no such file); check the path") from None
        raise CheckpointError(
            f"checkpoint: expected a readable checkpoint, got {path} that is damaged or truncated "
            f"({_first_line(error)}); use an earlier checkpoint"
        ) from None


# ---------------------------------------------------------------------------------------------
# integrity
# ---------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _format_sums(sums: dict[str, str]) -> bytes:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()


def _parse_sums(path: Path) -> dict[str, str]:
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise CheckpointError(
                f"checkpoint: expected '<sha256>  <file>' lines in {path}, got line {number}: {line!r}"
            )
        sums[name] = digest
    return sums


def _sums_file(path: Path) -> Path:
    """Where the checksums of a checkpoint (file or DCP folder) are."""
    return path / SUMS if path.is_dir() else path.with_name(path.name + SUMS_SUFFIX)


def verify_checkpoint(path: Path) -> bool:
    """Check a checkpoint against its checksums. -> True when verified, False when it has none (written
    before checksums existed). Raises ``CheckpointError`` naming the damaged or missing file."""
    path = Path(path)
    sums_path = _sums_file(path)
    if not sums_path.is_file():
        return False
    base = path if path.is_dir() else path.parent
    for name, digest in _parse_sums(sums_path).items():
        member = base / name
        if not member.is_file():
            raise CheckpointError(f"checkpoint: expected {member} (listed in {sums_path.name}), got no such file")
        if sha256_of(member) != digest:
            raise CheckpointError(
                f"checkpoint: expected {member} to match its SHA-256 in {sums_path.name}, got different bytes; "
                "the file is damaged"
            )
    return True


# ---------------------------------------------------------------------------------------------
# writing: temporary name, fsync, rename
# ---------------------------------------------------------------------------------------------
def describe_write_error(error: BaseException) -> str:
    """One line for a failed write: the OS's reason when there is one in the chain (torch's zip writer
    hides ENOSPC behind its own 'enforce fail' message)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    for errno_code in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO):
        if os.strerror(errno_code) in text:
            return os.strerror(errno_code)
    return _first_line(error)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(path: Path, obj) -> None:
    """``torch.save`` to a temporary name, fsync, rename: the file is complete or absent, never half-written."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def _point_latest(checkpoint: Path) -> None:
    """Move ``latest`` (beside the checkpoint) to name it, atomically."""
    name = checkpoint.name.encode()
    _atomic_write(checkpoint.parent / "latest", lambda handle: handle.write(name))


def _write_failed(path: Path, error: BaseException) -> CheckpointWriteError:
    previous = latest_checkpoint(path.parent.parent)  # path is RUN/checkpoints/<name>
    kept = f"{previous.name} is still `latest`" if previous is not None else "no earlier checkpoint exists"
    return CheckpointWriteError(
        f"checkpoint: could not write {path}: {describe_write_error(error)}; {kept}. Free space or fix the "
        f"folder's permissions (df -h {path.parent}), then resume"
    )


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep_last: int = 3) -> Path:
    """Write ``state`` as ``step_N.pt`` (temporary name, fsync, rename), then its checksum, then move
    ``latest``. A failure raises ``CheckpointWriteError`` with ``latest`` unchanged."""
    folder = Path(run_dir) / "checkpoints"
    path = folder / f"step_{step:08d}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda handle: torch.save(state, handle))
        _atomic_write(_sums_file(path), lambda handle: handle.write(_format_sums({path.name: sha256_of(path)})))
        _point_latest(path)
    except (OSError, RuntimeError) as error:
        raise _write_failed(path, error) from error
    _prune(run_dir, keep_last)
    log.info("saved checkpoint %s", path)
    return path


class AsyncSave:
    """A checkpoint being written in the background. ``wait()`` -> its path once it is complete and
    published, or the write's error (the previous checkpoint stays ``latest``)."""

    def __init__(self, write: Future, final: Path, publish: Callable[[], None] | None = None):
        self.final = final
        self._finished = threading.Event()
        self._error: BaseException | None = None

        def finish(done: Future) -> None:  # runs in the writer thread
            try:
                done.result()
                if publish is not None:
                    publish()
            except BaseException as error:  # noqa: BLE001 - handed to wait()
                self._error = error
            finally:
                self._finished.set()

        write.add_done_callback(finish)

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self) -> Path:
        self._finished.wait()
        if isinstance(self._error, CheckpointWriteError):
            raise CheckpointWriteError(str(self._error)) from self._error
        if self._error is not None:
            raise _write_failed(self.final, self._error) from self._error
        return self.final


def _to_host(obj):
    """A copy of ``obj`` with every tensor copied to host memory: training may change the originals."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _to_host(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(value) for value in obj)
    return obj


_single_writer: ThreadPoolExecutor | None = None


def save_checkpoint_async(run_dir: str | Path, step: int, state: dict, keep_last: int = 3) -> AsyncSave:
    """``save_checkpoint`` in a background thread, on a host copy of ``state`` made before returning."""
    global _single_writer
    if _single_writer is None:
        _single_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infmae-checkpoint")
    host_state = _to_host(state)
    write = _single_writer.submit(save_checkpoint, run_dir, step, host_state, keep_last)
    return AsyncSave(write, Path(run_dir) / "checkpoints" / f"step_{step:08d}.pt")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        _sums_file(path).unlink(missing_ok=True)


def _prune(run_dir: str | Path, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        _remove(old)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove what a killed save left (``.step_N.tmp/`` folders, ``.NAME.tmp-PID`` files). Call it only
    when no save of this run is in flight. -> what was removed."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TMP_DIR.match(p.name) or _TMP_FILE.match(p.name)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary file(s) of an interrupted save in %s", len(stale), folder)
    return stale


# ---------------------------------------------------------------------------------------------
# finding checkpoints
# ---------------------------------------------------------------------------------------------
def is_distributed_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and (path / EXTRA).is_file()


def _complete(path: Path) -> bool:
    return (path.is_file() and bool(_NAME.match(path.name))) or (
        bool(_DIR_NAME.match(path.name)) and is_distributed_checkpoint(path)
    )


def _step_of(path: Path) -> int:
    return int(path.name[5:13])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (files and DCP folders), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _complete(p)), key=lambda p: (_step_of(p), p.name))


def _pointed(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.is_file() else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    candidate = _pointed(run_dir)
    if candidate is not None:
        if _complete(candidate):
            return candidate
        log.warning("latest points at %s, which is missing; using the newest complete checkpoint", candidate)
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def newest_first(run_dir: str | Path) -> Iterator[Path]:
    """The run's checkpoints to try on resume: the one ``latest`` names, then the others, newest first."""
    pointed = _pointed(run_dir)
    found = list_checkpoints(run_dir)
    if pointed is not None and pointed in found:
        yield pointed
    yield from (p for p in reversed(found) if p != pointed)


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the way (kept for inspection, never tried again)."""
    target = path.with_name(path.name + ".damaged")
    if target.exists():
        _remove(target)
    os.replace(path, target)
    sums = _sums_file(path) if not path.is_dir() else None
    if sums is not None and sums.exists():
        os.replace(sums, target.with_name(target.name + SUMS_SUFFIX))
    return target


def _describe_folder(folder: Path) -> str:
    if not folder.exists():
        return "no such folder"
    if not folder.is_dir():
        return "a file, not a run folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "an empty folder"
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"a folder holding {shown} but no checkpoint"


def require_checkpoint(run_dir: str | Path) -> None:
    """``--resume`` on a folder without a checkpoint is an error, not a new run: a mistyped --output must
    not silently start from step 0."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir) is None:
        raise ValueError(
            f"pretrain --resume: expected a run folder with a checkpoint, got {run_dir}: "
            f"{_describe_folder(run_dir)}; check --output, or use --resume=auto to start a new run when there "
            "is nothing to continue"
        )


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if is_distributed_checkpoint(path):
        return path
    if path.is_dir() and _DIR_NAME.match(path.name.removesuffix(".damaged")):
        missing = [name for name in (".metadata", EXTRA) if not (path / name).is_file()]
        raise CheckpointError(
            f"checkpoint: expected a complete distributed checkpoint, got {path} without {' and '.join(missing)}; "
            "use an earlier checkpoint"
        )
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(
                f"checkpoint: expected a checkpoint in {path}/checkpoints, found none; "
                "pass a .pt file or a run folder that has saved one"
            )
        return found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected a file, got {path} (no such file); check the path")
    return path


def _check_contents(path: Path, state) -> dict:
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint: expected a dict of tensors (e.g. {{'model': state_dict}}), got {path} holding a "
            f"{type(state).__name__}; is this an InfMAE checkpoint?"
        )
    return state


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """One plain dict ``{'model': state_dict, 'step', 'config', ...}`` from a checkpoint file, a DCP
    folder (consolidated here, in one process: for export, visualize, inspection) or a run folder.
    Checked against its checksums first; read without running code. A DCP folder's ``optimizer`` is in
    the FQN-keyed form of ``torch.distributed.checkpoint.state_dict``."""
    path = resolve_checkpoint(path)
    if not verify_checkpoint(path):  # a released file, an export, or one written before checksums
        log.info("%s has no checksum file: loading it without an integrity check", path)
    if not path.is_dir():
        return _check_contents(path, safe_load(path, map_location))
    import warnings

    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore")
            if dist.is_available() and dist.is_initialized():
                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

                tensors: dict = {}
                dcp.load(tensors, checkpoint_id=path, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
            else:
                tensors = _load_state_dict_from_keys(checkpoint_id=str(path))
    except Exception as error:  # noqa: BLE001 - DCP raises many kinds for a damaged folder
        raise CheckpointError(
            f"checkpoint: expected a readable distributed checkpoint, got {path} whose shards do not load "
            f"({_first_line(error)}); use an earlier checkpoint"
        ) from None
    state = _check_contents(path / EXTRA, safe_load(path / EXTRA, map_location))
    state.update(tensors)
    if map_location is not None:
        state["model"] = {k: v.to(map_location) if torch.is_tensor(v) else v for k, v in state["model"].items()}
    return state


def open_newest_intact(run_dir: str | Path, load: bool = True) -> tuple[Path | None, dict | None]:
    """For ``--resume``: the newest checkpoint that passes its checks -> (path, its state when ``load``
    and it is a file, else None). Damaged ones are set aside with a WARNING naming them and the one used;
    (None, None) when there is no checkpoint at all. Raises ``CheckpointError`` when all are damaged."""
    damaged: list[str] = []
    for path in newest_first(run_dir):
        try:
            if not verify_checkpoint(path):
                log.warning("%s has no checksums (written by an older version): resuming from it unverified", path)
            if path.is_dir():
                safe_load(path / EXTRA)  # the shards are covered by the checksums (when written by this version)
                state = None
            else:
                state = _check_contents(path, safe_load(path)) if load else None
        except CheckpointError as error:
            aside = set_aside(path)
            log.warning("%s; it was renamed %s", str(error), aside.name)
            damaged.append(path.name)
            continue
        if damaged:
            log.warning("resuming from %s instead of the damaged %s", path.name, ", ".join(damaged))
            _point_latest(path)
        return path, state
    if damaged:
        raise CheckpointError(
            f"checkpoint: expected an intact checkpoint in {Path(run_dir) / 'checkpoints'}, got only damaged "
            f"ones ({', '.join(damaged)}, now renamed *.damaged); start a new run or restore them from a backup"
        )
    return None, None


class Checkpointer:
    """The trainer's one handle on its checkpoints: the format (a file for one process, a DCP folder
    under a process group), synchronous or background writes (one in flight at a time; its error
    surfaces at the next call), and what the newest complete checkpoint is.

    ``save`` is collective under a process group: every rank calls it at the same step."""

    def __init__(self, run_dir: str | Path, keep_last: int, background: bool, distributed: bool):
        self.run_dir, self.keep_last, self.background, self.distributed = (
            Path(run_dir),
            keep_last,
            background,
            distributed,
        )
        # background DCP writes run their collectives on a gloo group of their own: on the training's group
        # they would interleave with the gradient collectives of the main thread
        self.group = dist.new_group(backend="gloo") if background and distributed else None
        self.pending: AsyncSave | None = None
        self.last: Path | None = None  # the newest complete checkpoint of this run
        if _rank() == 0:  # no save of this run is in flight yet: what is half-written was left by a killed one
            remove_stale_temporaries(self.run_dir)

    def save(self, step: int, state: Callable[[], dict], sharded: Callable[[], tuple[dict, dict, dict]]) -> Path:
        """Save ``state()`` (one process) or ``sharded()`` -> (tensors, extra, rank_state) (every rank).
        -> the path the checkpoint has (or will have, when written in the background)."""
        self.wait()
        if not self.distributed:
            if self.background:
                self.pending = save_checkpoint_async(self.run_dir, step, state(), self.keep_last)
                return self.pending.final
            self.last = save_checkpoint(self.run_dir, step, state(), self.keep_last)
            return self.last
        tensors, extra, rank_state = sharded()
        saved = save_distributed_checkpoint(self.run_dir, step, tensors, extra, rank_state, self.keep_last, self.group)
        if isinstance(saved, AsyncSave):
            self.pending = saved
            return saved.final
        self.last = saved
        return saved

    def wait(self) -> Path | None:
        """Wait for the background save in flight, if any (collective: every rank calls it together) ->
        the newest complete checkpoint. Raises the write's ``CheckpointWriteError``."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.last = pending.wait()
            _barrier()  # rank 0 published the folder when its write completed: after this, every rank sees it
        return self.last

    def last_good(self) -> Path | None:
        """Without waiting: the background save if it has completed, else the previous one."""
        if self.pending is not None and self.pending.done():
            try:
                return self.pending.wait()
            except CheckpointWriteError:
                return self.last
        return self.last


# ---------------------------------------------------------------------------------------------
# torch Distributed Checkpoint (every rank calls these together)
# ---------------------------------------------------------------------------------------------
def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _save_file(path: Path, obj) -> None:
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _write_shards(tensors: dict, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(folder), sync_files=True))


def _write_shards_async(tensors: dict, folder: Path, group) -> Future:
    """Stages ``tensors`` in host memory, then writes them in DCP's writer thread; its collectives run on
    ``group`` (gloo), apart from the training's process group."""
    import torch.distributed.checkpoint as dcp

    return dcp.async_save(
        tensors, storage_writer=dcp.FileSystemWriter(str(folder), sync_files=True), process_group=group
    )


def _write_folder_sums(folder: Path) -> None:
    """SHA-256 of every file in a finished DCP folder, written last (rank 0, every rank's files done)."""
    sums = {p.name: sha256_of(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != SUMS}
    _atomic_write(folder / SUMS, lambda handle: handle.write(_format_sums(sums)))


def save_distributed_checkpoint(
    run_dir: str | Path,
    step: int,
    tensors: dict,
    extra: dict,
    rank_state: dict,
    keep_last: int = 3,
    async_group=None,
) -> Path | AsyncSave:
    """Collective: every rank passes its (sharded) ``tensors`` and its own ``rank_state``; rank 0's
    ``extra`` is kept. Writes ``.step_N.tmp/``, then rank 0 writes the checksums, renames it to
    ``step_N/`` and moves ``latest``. Returns the final folder on every rank.

    With ``async_group`` (a gloo process group of the same ranks, used by no one else) the shards are
    written in the background and an ``AsyncSave`` is returned; rank 0 publishes the folder when its write
    completes, which DCP completes only after every rank's shards are written (the metadata is written
    last, from every rank's write results), and the rank files and ``extra`` were written before that."""
    folder = Path(run_dir) / "checkpoints"
    name = f"step_{step:08d}"
    final, tmp = folder / name, folder / f".{name}.tmp"
    rank = _rank()
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        tmp.mkdir()
    _barrier()
    try:
        _save_file(tmp / f"rank_{rank:05d}.pt", rank_state)
        if rank == 0:
            _save_file(tmp / EXTRA, extra)
    except (OSError, RuntimeError) as error:
        raise _write_failed(tmp, error) from error

    def publish() -> None:
        _write_folder_sums(tmp)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run's last step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        _point_latest(final)
        _prune(run_dir, keep_last)
        log.info("saved checkpoint %s", final)

    if async_group is not None:
        return AsyncSave(_write_shards_async(tensors, tmp, async_group), final, publish if rank == 0 else None)
    try:
        _write_shards(tensors, tmp)  # collective; returns once every rank's shards and the metadata are written
        _barrier()
        if rank == 0:
            publish()
    except (OSError, RuntimeError) as error:
        raise _write_failed(final, error) from error
    _barrier()
    return final


def load_distributed_checkpoint(path: Path, tensors: dict) -> tuple[dict, dict | None]:
    """Collective: load a DCP folder into ``tensors`` (in place, resharded to this run's layout).
    -> (extra, this rank's saved rank_state or None when the run had fewer ranks)."""
    import torch.distributed.checkpoint as dcp

    dcp.load(tensors, storage_reader=dcp.FileSystemReader(str(path)))
    extra = safe_load(path / EXTRA)
    own = path / f"rank_{_rank():05d}.pt"
    rank_state = safe_load(own) if own.is_file() else None
    return extra, rank_state
