"""A damaged OUT/scan.sqlite (truncated, overwritten, a database of another schema) does not stop
`infmae curate`: it is found when the store is opened, named in one warning, moved aside (nothing is
lost), and the scan starts afresh, giving the manifest of a fresh run byte for byte; --rescan replaces a
sound store on request."""

from __future__ import annotations

import functools
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from infmae.cli import main
from infmae.curate import curate
from infmae.data.synthetic import generate_dataset, write_image

SIZES = [(64, 80), (48, 64)]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    src = root / "src"
    generate_dataset(src, 16, seed=9, sizes=SIZES, include_bad=True)
    reference = root / "reference"
    full = curate(src, reference, workers=1, report=False)
    return src, reference, full


def _truncate(store: Path) -> None:
    with open(store, "r+b") as handle:
        handle.truncate(store.stat().st_size // 2)


def _garbage(store: Path) -> None:
    store.write_bytes(np.random.default_rng(0).integers(0, 256, store.stat().st_size, dtype=np.uint8).tobytes())


def _wrong_columns(store: Path) -> None:
    store.unlink()
    connection = sqlite3.connect(store)
    connection.execute("CREATE TABLE files (name TEXT PRIMARY KEY, bytes INTEGER)")
    connection.execute("INSERT INTO files VALUES ('a.png', 3)")
    connection.commit()
    connection.close()


def _other_database(store: Path) -> None:
    store.unlink()
    connection = sqlite3.connect(store)
    connection.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, title TEXT)")
    connection.commit()
    connection.close()


DAMAGE = {
    "truncated": (_truncate, "database disk image is malformed"),
    "garbage": (_garbage, "file is not a database"),
    "wrong_columns": (_wrong_columns, "table 'files' has columns ('name', 'bytes')"),
    "other_schema": (_other_database, "table 'photos' is not a table of a curate scan"),
}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "scan store" in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_store_is_set_aside_and_rebuilt(collection, tmp_path, caplog, kind):
    src, reference, full = collection
    out = tmp_path / "out"
    curate(src, out, workers=1, report=False)
    store = out / "scan.sqlite"
    damage, problem = DAMAGE[kind]
    damage(store)
    damaged_bytes = store.read_bytes()
    with caplog.at_level(logging.WARNING, logger="infmae.curate"):
        again = curate(src, out, workers=1, report=False)
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert str(store) in warnings[0] and problem in warnings[0], warnings[0]
    assert again.scan.processed == full.scan.total and again.scan.reused == 0  # scanned afresh
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    aside = sorted(out.glob("scan.sqlite.damaged-*"))
    aside = [p for p in aside if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].name in warnings[0] and aside[0].read_bytes() == damaged_bytes
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infmae.curate"):
        third = curate(src, out, workers=1, report=False)  # the rebuilt store is sound and reused
    assert third.scan.processed == 0 and not _warnings(caplog)


def test_a_damaged_store_in_a_new_output_folder(collection, tmp_path, caplog):
    src, reference, _ = collection
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.sqlite").write_bytes(b"this is not a database, it only has the name of one\n" * 40)
    with caplog.at_level(logging.WARNING, logger="infmae.curate"):
        assert main(["curate", str(src), "-o", str(out), "--workers", "1"]) == 0
    assert len(_warnings(caplog)) == 1 and "file is not a database" in _warnings(caplog)[0]
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    assert len(list(out.glob("scan.sqlite.damaged-*"))) >= 1


def test_rescan_replaces_a_sound_store(collection, tmp_path, caplog):
    src, reference, full = collection
    out = tmp_path / "out"
    curate(src, out, workers=1, report=False)
    assert curate(src, out, workers=1, report=False).scan.processed == 0
    rescanned = curate(src, out, workers=1, report=False, rescan=True)
    assert rescanned.scan.processed == full.scan.total and rescanned.scan.reused == 0
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    assert not list(out.glob("scan.sqlite.damaged-*"))  # not damaged: replaced, not set aside
    # the flag, and a store of another SRC: refused without it, replaced with it
    other = tmp_path / "other"
    write_image(other / "a.png", np.random.default_rng(1).integers(0, 256, (30, 30), dtype=np.uint8))
    assert main(["curate", str(other), "-o", str(out), "--workers", "1"]) == 2
    assert main(["curate", str(other), "-o", str(out), "--workers", "1", "--rescan"]) == 0
    assert (out / "manifest.csv").read_text().count("\n") == 2  # header + a.png


def test_a_locked_store_is_not_mistaken_for_a_damaged_one(collection, tmp_path, monkeypatch):
    src, _, _ = collection
    out = tmp_path / "out"
    curate(src, out, workers=1, report=False)
    before = (out / "scan.sqlite").read_bytes()
    holder = sqlite3.connect(out / "scan.sqlite")  # a process holding the store: "database is locked"
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, timeout=0.05))
    try:
        with pytest.raises(ValueError, match="got OperationalError: database is locked; is another `infmae curate`"):
            curate(src, out, workers=1, report=False)
    finally:
        holder.rollback()
        holder.close()
    assert not list(out.glob("scan.sqlite.damaged-*")) and (out / "scan.sqlite").read_bytes() == before
