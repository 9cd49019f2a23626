"""Checkpoints that are never half-written: write to a temporary name, fsync, rename; then move the
``latest`` pointer the same way. The last ``keep_last`` checkpoints are kept.

Two formats, one layout. ``RUN/checkpoints/latest`` is a text file holding the name of the newest
complete checkpoint, which is either
- ``step_00001234.pt``: one ``torch.save`` file, written by a single process (no process group); or
- ``step_00001234/``: a torch Distributed Checkpoint folder, written by every rank of a distributed run:
  the DCP shards and ``.metadata`` of ``{"model", "optimizer"}`` (sharded tensors, loadable on any
  number of ranks), ``extra.pt`` (step, data position, config, skipped files, world size; rank 0) and
  ``rank_00000.pt`` ... (each rank's RNG states). It is written as ``.step_00001234.tmp/`` and renamed
  by rank 0 once every rank's files are complete; a save killed half-way leaves only that temporary
  folder (removed by the next save) and ``latest`` on the previous checkpoint.

``load_checkpoint`` reads either into one plain dict (a DCP folder is consolidated in this process).

Asynchronous saves (``train.async_checkpoint``) copy the state to host memory before returning and write
it in a background thread while training goes on; the result is the same files, published the same way
(``latest`` moves only once the checkpoint is complete). ``AsyncSave.wait()`` re-raises a failed write.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{8})\.pt$")
_DIR_NAME = re.compile(r"^step_(\d{8})$")
_TMP_DIR = re.compile(r"^\.step_\d{8}\.tmp$")
EXTRA = "extra.pt"


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


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep_last: int = 3) -> Path:
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    _atomic_write(path, lambda handle: torch.save(state, handle))
    _atomic_write(folder / "latest", lambda handle: handle.write(path.name.encode()))
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
        if self._error is not None:
            raise RuntimeError(
                f"checkpoint: expected {self.final.name} to be written, got an error in the "
                f"background save: {self._error!r}; the previous checkpoint is still `latest`; "
                "check the disk (space, permissions) and resume"
            ) from self._error
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


def _prune(run_dir: str | Path, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if pointer.is_file():
        candidate = pointer.parent / pointer.read_text().strip()
        if _complete(candidate):
            return candidate
        log.warning("latest points at %s, which is missing; using the newest complete checkpoint", candidate)
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if is_distributed_checkpoint(path):
        return path
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


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """One plain dict ``{'model': state_dict, 'step', 'config', ...}`` from a checkpoint file, a DCP
    folder (consolidated here, in one process: for export, visualize, inspection) or a run folder.
    A DCP folder's ``optimizer`` is in the FQN-keyed form of ``torch.distributed.checkpoint.state_dict``."""
    path = resolve_checkpoint(path)
    if path.is_dir():
        import warnings

        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore")
            if dist.is_available() and dist.is_initialized():
                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

                tensors: dict = {}
                dcp.load(tensors, checkpoint_id=path, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
            else:
                tensors = _load_state_dict_from_keys(checkpoint_id=str(path))
        state = torch.load(path / EXTRA, map_location=map_location, weights_only=False)
        state.update(tensors)
        if map_location is not None:
            state["model"] = {k: v.to(map_location) if torch.is_tensor(v) else v for k, v in state["model"].items()}
        return state
    return torch.load(path, map_location=map_location, weights_only=False)


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


def save_distributed_checkpoint(
    run_dir: str | Path, step: int, tensors: dict, extra: dict, rank_state: dict, keep_last: int = 3, async_group=None
) -> Path | AsyncSave:
    """Collective: every rank passes its (sharded) ``tensors`` and its own ``rank_state``; rank 0's
    ``extra`` is kept. Writes ``.step_N.tmp/``, then rank 0 renames it to ``step_N/`` and moves
    ``latest``. Returns the final folder on every rank.

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
        for stale in folder.iterdir():  # left by a save that was killed half-way
            if _TMP_DIR.match(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    _save_file(tmp / f"rank_{rank:05d}.pt", rank_state)
    if rank == 0:
        _save_file(tmp / EXTRA, extra)

    def publish() -> None:
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run's last step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        _atomic_write(folder / "latest", lambda handle: handle.write(name.encode()))
        _prune(run_dir, keep_last)
        log.info("saved checkpoint %s", final)

    if async_group is not None:
        return AsyncSave(_write_shards_async(tensors, tmp, async_group), final, publish if rank == 0 else None)
    _write_shards(tensors, tmp)  # collective; returns once every rank's shards and the metadata are written
    _barrier()
    if rank == 0:
        publish()
    _barrier()
    return final


def load_distributed_checkpoint(path: Path, tensors: dict) -> tuple[dict, dict | None]:
    """Collective: load a DCP folder into ``tensors`` (in place, resharded to this run's layout).
    -> (extra, this rank's saved rank_state or None when the run had fewer ranks)."""
    import torch.distributed.checkpoint as dcp

    dcp.load(tensors, storage_reader=dcp.FileSystemReader(str(path)))
    extra = torch.load(path / EXTRA, map_location="cpu", weights_only=False)
    own = path / f"rank_{_rank():05d}.pt"
    rank_state = torch.load(own, map_location="cpu", weights_only=False) if own.is_file() else None
    return extra, rank_state
