"""Run an iterator ahead in a background thread (the DALI loader's host-side batch preparation).

DALI calls an external source's callback from ``pipe.run()``, i.e. in the training loop's thread: the
per-sample host work (reading the encoded bytes, the crop and flip draws) would then stall the thread
that launches the GPU work. :class:`ThreadPrefetcher` moves that work to a daemon thread a few items
ahead; file reads, LZ4 and torch's CPU ops release the GIL, and the training thread mostly waits on the
GPU anyway. Items come out in order; an exception of the iterator is raised at the ``next`` that would
have returned its item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class ThreadPrefetcher(Generic[T]):
    """Iterate ``iterable`` in a daemon thread, at most ``depth`` items ahead of the consumer.

    ``close()`` stops the thread (the items it already produced are dropped); call it when the consumer
    stops early, e.g. before rebuilding from another position.
    """

    def __init__(self, iterable: Iterable[T], depth: int = 2, name: str = "prefetch"):
        if depth < 1:
            raise ValueError(f"ThreadPrefetcher: expected depth >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(iter(iterable),), name=name, daemon=True)
        self._thread.start()

    def _put(self, entry: tuple) -> bool:
        """Block until the queue takes ``entry`` or ``close`` is called; -> whether it was taken."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator: Iterator[T]) -> None:
        try:
            for item in iterator:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((_END, exc))

    def __iter__(self) -> ThreadPrefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item, error = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the thread and drop what it prepared."""
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
