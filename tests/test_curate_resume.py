"""Resumable scanning of infmae curate: an interrupted scan (an exception after N files,
or SIGKILL of a real ``infmae curate`` process) finishes on the next run, redoes only the files that
were in flight, and writes the manifest of an uninterrupted run; a grown folder costs its new files only."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infmae.curate import curate
from infmae.data.synthetic import generate_dataset, make_scene, write_image

REPO = Path(__file__).resolve().parents[1]


def _rows_in_store(out: Path) -> int:
    try:
        connection = sqlite3.connect(f"file:{out / 'scan.sqlite'}?mode=ro", uri=True, timeout=0.1)
        try:
            return connection.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:
        return 0  # not created yet


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    src = root / "src"
    generate_dataset(src, 120, seed=5, sizes=[(256, 320), (120, 160)], include_bad=True)
    with Image.open(src / "cam_a/seq01/ir_00000_png8.png") as img:  # one exact duplicate: groups in play
        write_image(src / "copies/dup.png", np.asarray(img))
    reference = root / "reference"
    full = curate(src, reference, workers=2)
    return src, reference, full


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_scan_resumes_and_matches_uninterrupted(collection, tmp_path, workers):
    src, reference, full = collection
    total = full.scan.total
    stop_after = 37
    seen = []

    def crash(row):
        seen.append(row[0])
        if len(seen) == stop_after:
            raise _Interrupt

    out = tmp_path / "out"
    with pytest.raises(_Interrupt):
        curate(src, out, workers=workers, on_result=crash)
    assert _rows_in_store(out) == stop_after  # every file reported done is on disk
    assert not (out / "manifest.csv").exists()
    resumed = curate(src, out, workers=workers)
    assert resumed.scan.reused == stop_after and resumed.scan.processed == total - stop_after
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    assert resumed.counts == full.counts and full.counts["duplicate"] == 1 and full.counts["unreadable"] == 4


@pytest.mark.slow
def test_sigkill_during_a_real_scan(collection, tmp_path):
    src, reference, full = collection
    out = tmp_path / "out"
    command = [sys.executable, "-m", "infmae", "curate", str(src), "-o", str(out), "--workers", "2"]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )  # its own process group: the pool workers die with it
    try:
        deadline = time.monotonic() + 60
        while _rows_in_store(out) < 10 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    done = _rows_in_store(out)
    assert 10 <= done < full.scan.total, f"the kill landed outside the scan ({done} of {full.scan.total} rows)"
    resumed = curate(src, out, workers=2)
    assert resumed.scan.reused == done and resumed.scan.processed == full.scan.total - done
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()


def test_grown_folder_reads_only_new_and_changed_files(collection, tmp_path):
    src, _, _ = collection
    work = tmp_path / "src"
    work.mkdir()
    for path in sorted(src.rglob("*")):  # a private copy we can grow (hard links keep it cheap)
        target = work / path.relative_to(src)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            os.link(path, target)
    out = tmp_path / "out"
    first = curate(work, out, workers=2, report=False)
    rng = np.random.default_rng(2)
    for k in range(8):
        write_image(work / "new" / f"later_{k}.png", np.round(make_scene(120, 160, rng) * 255).astype(np.uint8))
    changed = work / "cam_a/seq02/ir_00001_png16.png"
    changed.unlink()  # break the hard link, then write other pixels under the same name
    write_image(changed, np.round(make_scene(100, 100, rng) * 255).astype(np.uint8))
    (work / "cam_a/seq01/ir_00004_tif16_lzw.tif").unlink()
    second = curate(work, out, workers=2, report=False)
    assert second.scan.total == first.scan.total + 8 - 1
    assert second.scan.processed == 9 and second.scan.reused == first.scan.total - 2
    curate(work, tmp_path / "fresh", workers=2, report=False)
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "fresh/manifest.csv").read_bytes()
    third = curate(work, out, workers=2, report=False)
    assert third.scan.processed == 0


def test_output_folder_of_another_source_is_refused(collection, tmp_path):
    src, reference, _ = collection
    other = tmp_path / "other"
    write_image(other / "a.png", np.zeros((30, 30), np.uint8))
    with pytest.raises(ValueError, match="to hold a scan of .*use another -o folder"):
        curate(other, reference, workers=1)
