"""Manifest rows stay inside the manifest's root: a kept row whose path leads elsewhere (``..``, an absolute
path, ``link/..``) is refused with the manifest, the line, the path and the root named, unless opted in
(``data.allow_outside_root``, ``infmae pack --allow-outside-root``); ordinary rows are unaffected."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from infmae.cli import main
from infmae.data.folder import ImageFolderDataset
from infmae.data.manifest import read_manifest
from infmae.data.synthetic import write_image

INSIDE = ["./a.png", "sub/dir/b.png", "sub/../c.png"]  # all inside the root


@pytest.fixture
def tree(tmp_path):
    """root/ with a.png, c.png, sub/dir/b.png; outside/secret.png beside it (a readable image)."""
    rng = np.random.default_rng(3)
    root, outside = tmp_path / "root", tmp_path / "outside"
    for path in (root / "a.png", root / "c.png", root / "sub/dir/b.png", outside / "secret.png"):
        write_image(path, rng.integers(0, 256, (24, 32), dtype=np.uint8))
    return root, outside


def _manifest(folder, paths, dropped=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,status,reason"] + [f"{p},keep," for p in paths] + [f"{p},drop,near_duplicate" for p in dropped]
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _dataset(manifest, **options):
    return ImageFolderDataset(manifest, img_size=(16, 16), in_chans=3, seed=0, **options)


def test_ordinary_rows_are_read(tree):
    root, _ = tree
    manifest = _manifest(root, INSIDE)
    dataset = _dataset(manifest)
    assert dataset.paths == INSIDE and not dataset.dropped
    for i in range(len(dataset)):
        assert dataset[i][1] == i  # read, not substituted
    assert read_manifest(manifest)[0] == INSIDE


@pytest.mark.parametrize(
    "bad",
    ["../outside/secret.png", "sub/../../outside/secret.png", "./../outside/secret.png", "ABSOLUTE"],
)
def test_a_row_outside_the_root_is_refused_naming_it(tree, bad):
    root, outside = tree
    bad = str(outside / "secret.png") if bad == "ABSOLUTE" else bad
    manifest = _manifest(root, INSIDE[:2] + [bad] + INSIDE[2:])
    with pytest.raises(ValueError) as info:
        _dataset(manifest)
    message = str(info.value)
    assert str(manifest) in message and "line 4" in message and repr(bad) in message, message
    assert str(root) in message and str(outside / "secret.png") in message, message
    assert "data.allow_outside_root=true" in message and "--allow-outside-root" in message, message
    assert message.startswith("manifest: expected ") and "; " in message and "\n" not in message


def test_the_first_offending_row_is_named(tree):
    root, _ = tree
    manifest = _manifest(root, ["./a.png", "../x/one.png", "../y/two.png"])
    with pytest.raises(ValueError, match=r"line 3 with path '\.\./x/one\.png'"):
        read_manifest(manifest)


def test_a_link_followed_by_dotdot_is_refused(tree):
    root, outside = tree
    (outside / "deeper").mkdir()
    os.symlink(outside / "deeper", root / "link")  # root/link/.. is outside/, whatever normpath says
    manifest = _manifest(root, ["./a.png", "link/../secret.png"])
    with pytest.raises(ValueError, match=r"line 3 with path 'link/\.\./secret\.png'"):
        _dataset(manifest)


def test_rows_not_kept_are_not_checked(tree):
    root, _ = tree
    manifest = _manifest(root, INSIDE, dropped=["../outside/secret.png"])
    assert _dataset(manifest).paths == INSIDE


def test_the_root_is_the_base_or_curate_source(tree, tmp_path):
    root, _ = tree
    curated = tmp_path / "curated"
    manifest = _manifest(curated, ["a.png", "../root/c.png"])  # relative to curated/: c.png leaves it
    with pytest.raises(ValueError, match="line 3"):
        _dataset(manifest)
    assert _dataset(manifest, base=root).paths == ["a.png", "../root/c.png"]  # from root/, both stay inside
    (curated / "curate.json").write_text(json.dumps({"source": str(root)}))
    manifest = _manifest(curated, ["a.png", "sub/dir/b.png"])
    assert _dataset(manifest).paths == ["a.png", "sub/dir/b.png"]


def test_opt_in_reads_rows_outside_the_root(tree, caplog):
    root, outside = tree
    rows = ["./a.png", "../outside/secret.png", str(outside / "secret.png")]
    manifest = _manifest(root, rows)
    with caplog.at_level(logging.WARNING, logger="infmae.data.folder"):
        dataset = _dataset(manifest, allow_outside_root=True)
    assert dataset.paths == rows and dataset[1][1] == 1 and dataset[2][1] == 2
    assert "2 kept rows lead outside its root" in caplog.text


def test_cli_pack_refuses_then_accepts_with_the_flag(tree, tmp_path, capsys):
    root, _ = tree
    manifest = _manifest(root, ["./a.png", "../outside/secret.png"])
    out = tmp_path / "pack"
    assert main(["pack", str(manifest), "-o", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: manifest: expected ") and "line 3" in err and "--allow-outside-root" in err
    assert not out.exists()
    assert main(["pack", str(manifest), "-o", str(out), "--workers", "1", "--allow-outside-root"]) == 0
    assert json.loads((out / "pack.json").read_text())["count"] == 2


def test_cli_pretrain_on_an_escaping_manifest_exits_2(tree, tmp_path, caplog):
    root, _ = tree
    manifest = _manifest(root, ["./a.png", "../outside/secret.png"])
    with caplog.at_level(logging.ERROR):
        code = main(
            ["pretrain", "--preset", "demo", "--data", str(manifest), "--output", str(tmp_path / "run")]
            + ["--set", "data.num_workers=0", "--set", "train.max_steps=1"]
        )
    assert code == 2
    assert "line 3 with path '../outside/secret.png'" in caplog.text


def test_cli_pretrain_opts_in_to_rows_outside_the_root(tree, tmp_path):
    root, _ = tree
    manifest = _manifest(root, ["./a.png", "../outside/secret.png", "c.png", "sub/dir/b.png"])
    settings = ["data.num_workers=0", "train.max_steps=1", "train.batch_size=4", "data.val_fraction=0"]
    settings += ["data.allow_outside_root=true"]
    command = ["pretrain", "--preset", "demo", "--data", str(manifest), "--output", str(tmp_path / "run")]
    assert main(command + [arg for item in settings for arg in ("--set", item)]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["allow_outside_root"] is True
