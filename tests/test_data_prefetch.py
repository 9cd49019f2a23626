"""ThreadPrefetcher: the DALI loader's host-side preparation, run ahead in a thread."""

from __future__ import annotations

import threading
import time

import pytest

from infmae.data.prefetch import ThreadPrefetcher


def test_items_come_in_order_and_the_end_is_stop_iteration():
    items = list(ThreadPrefetcher(iter(range(100)), depth=3))
    assert items == list(range(100))
    empty = ThreadPrefetcher(iter([]), depth=1)
    with pytest.raises(StopIteration):
        next(empty)
    with pytest.raises(StopIteration):  # and stays ended
        next(empty)


def test_work_runs_in_another_thread_ahead_of_the_consumer():
    produced = []

    def slow():
        for i in range(6):
            produced.append((i, threading.current_thread().name))
            yield i

    prefetcher = ThreadPrefetcher(slow(), depth=2, name="prep-test")
    deadline = time.monotonic() + 5
    while len(produced) < 3 and time.monotonic() < deadline:  # 2 queued + 1 waiting to be queued
        time.sleep(0.01)
    assert len(produced) == 3  # bounded: depth items queued, one more produced and blocked
    assert {name for _, name in produced} == {"prep-test"}
    assert list(prefetcher) == list(range(6))


def test_an_error_is_raised_at_the_item_that_failed():
    def failing():
        yield 0
        yield 1
        raise ValueError("bad file 2")

    prefetcher = ThreadPrefetcher(failing(), depth=4)
    assert next(prefetcher) == 0 and next(prefetcher) == 1
    with pytest.raises(ValueError, match="bad file 2"):
        next(prefetcher)


def test_close_stops_the_producer_early():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    prefetcher = ThreadPrefetcher(endless(), depth=2)
    assert next(prefetcher) == 0
    prefetcher.close()
    count = len(produced)
    time.sleep(0.1)
    assert len(produced) == count <= 1 + 2 + 1  # consumed + queued + one blocked on the full queue
    with pytest.raises(StopIteration):
        next(prefetcher)
    with pytest.raises(ValueError, match="depth >= 1"):
        ThreadPrefetcher(iter([]), depth=0)
