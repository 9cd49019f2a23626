"""infmae curate end to end on a generated collection with planted duplicates,
the anchor rules, the sequence-aware mode, the CLI, and the manifest -> ImageFolderDataset path."""

from __future__ import annotations

import itertools
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infmae.cli import main
from infmae.curate import MANIFEST_COLUMNS, curate, eight_bit_view, phash64, read_manifest_rows
from infmae.data.folder import ImageFolderDataset
from infmae.data.synthetic import make_scene, to_counts16, write_image

HEIGHT, WIDTH = 256, 320
TINY = {
    "tiny/t12x12.png": (12, 12, np.uint8),
    "tiny/t19x19.png": (19, 19, np.uint8),
    "tiny/t16x5_16bit.tif": (16, 5, np.uint16),
}
CORRUPT = ("bad/truncated.png", "bad/empty.png", "bad/text_not_image.jpg", "bad/truncated16.tif")


def _scene(rng, height=HEIGHT, width=WIDTH, sixteen=False, margin=4):
    """(base [H, W], full [H+margin, W+margin]) pixels of one fresh scene."""
    scene = make_scene(height + margin, width + margin, rng)
    full = to_counts16(scene, rng) if sixteen else np.round(scene * 255).astype(np.uint8)
    return full[:height, :width], full


def _to8_minmax(counts):
    lo, hi = int(counts.min()), int(counts.max())
    return np.round((counts.astype(np.float64) - lo) / (hi - lo) * 255).astype(np.uint8)


def build_collection(root: Path, seed: int = 7, groups: int = 12, singles: int = 24):
    """Write the planted collection; -> truth {path: group label or None} for readable, large-enough files."""
    rng = np.random.default_rng(seed)
    truth: dict[str, str | None] = {}
    for g in range(groups):
        sixteen = g % 2 == 0
        base, full = _scene(rng, sixteen=sixteen)
        span = float(base.max()) - float(base.min())
        noise = base.astype(np.float64) + rng.normal(0, 0.01 * span, base.shape)
        if sixteen:
            bright = (base.astype(np.int64) + 300).astype(np.uint16)  # +300 counts: a warmer scene
            noise = np.clip(np.round(noise), 0, 65535).astype(np.uint16)
        else:
            bright = np.clip(np.round(base * 1.1 + 8), 0, 255).astype(np.uint8)
            noise = np.clip(np.round(noise), 0, 255).astype(np.uint8)
        folder = f"cam_{'abc'[g % 3]}"
        label = f"planted{g}"
        files = {
            f"{folder}/scene{g:02d}_orig.png": base,
            f"{folder}/scene{g:02d}_reencoded.tif": base,  # lossless re-encoding: pixel-identical
            f"other/{g:02d}_noise.png": noise,
            f"other/{g:02d}_shift.png": full[1 : HEIGHT + 1, 2 : WIDTH + 2],  # 1-2 px shift
            f"other/{g:02d}_bright.png": bright,
        }
        if sixteen:
            files[f"export8/{g:02d}_copy8.png"] = _to8_minmax(base)  # an 8-bit copy of the 16-bit frame
        for rel, pixels in files.items():
            write_image(root / rel, pixels)
            truth[rel] = label
        copy = f"copies/{g:02d}_bytecopy.png"  # the same bytes under another name
        (root / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / f"{folder}/scene{g:02d}_orig.png", root / copy)
        truth[copy] = label
    for k in range(singles):
        sixteen = k % 3 == 0
        height, width = [(256, 320), (120, 160), (128, 128), (96, 160)][k % 4]
        base, _ = _scene(rng, height, width, sixteen=sixteen)
        rel = f"single/s{k:02d}.{'tif' if sixteen and k % 2 else 'png'}"
        write_image(root / rel, base)
        truth[rel] = None
    write_image(root / "single/narrow_19x40.png", np.round(make_scene(40, 19, rng) * 255).astype(np.uint8))
    truth["single/narrow_19x40.png"] = None  # one side >= 20: kept
    for rel, (height, width, dtype) in TINY.items():
        pixels = make_scene(height, width, rng)
        write_image(
            root / rel, to_counts16(pixels, rng) if dtype == np.uint16 else np.round(pixels * 255).astype(np.uint8)
        )
    (root / "bad").mkdir()
    data = (root / "single/s01.png").read_bytes()
    (root / CORRUPT[0]).write_bytes(data[: len(data) // 2])
    (root / CORRUPT[1]).write_bytes(b"")
    (root / CORRUPT[2]).write_text("not an image\n")
    write_image(root / CORRUPT[3], _scene(rng, 64, 80, sixteen=True)[0])
    data = (root / CORRUPT[3]).read_bytes()
    (root / CORRUPT[3]).write_bytes(data[: len(data) // 3])
    return truth


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    src, out = root / "src", root / "out"
    truth = build_collection(src)
    result = curate(src, out, workers=2)
    rows = {row["path"]: row for row in read_manifest_rows(out / "manifest.csv")}
    return src, out, truth, result, rows


def _pairs(labels: dict[str, str]) -> set[tuple[str, str]]:
    members = defaultdict(list)
    for path, label in labels.items():
        if label:
            members[label].append(path)
    return {tuple(sorted(p)) for m in members.values() for p in itertools.combinations(m, 2)}


def test_planted_groups_recall_precision(curated):
    src, out, truth, result, rows = curated
    true_pairs = _pairs(truth)
    found_pairs = _pairs({p: rows[p]["group"] for p in truth})
    hits = len(true_pairs & found_pairs)
    recall, precision = hits / len(true_pairs), hits / max(1, len(found_pairs))
    print(f"planted pairs {len(true_pairs)}, found {len(found_pairs)}, recall {recall:.3f}, precision {precision:.3f}")
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, sorted(true_pairs - found_pairs)[:5])
    # every group keeps exactly one file, its anchor, and every member names it
    by_group = defaultdict(list)
    for row in rows.values():
        if row["group"]:
            by_group[row["group"]].append(row)
    for members in by_group.values():
        kept = [r for r in members if r["status"] == "keep"]
        assert len(kept) == 1 and all(r["anchor"] == kept[0]["path"] for r in members)
        assert all(r["reason"] in ("duplicate", "near_duplicate") for r in members if r["status"] == "drop")
        # the rule "largest": no member has more pixels than the anchor
        area = lambda r: int(r["width"]) * int(r["height"])  # noqa: E731
        assert all(area(r) <= area(kept[0]) for r in members)
    # exact copies (re-encoded and byte copy) share the pixel hash; a copy of the anchor is a "duplicate"
    for g in range(12):
        folder = f"cam_{'abc'[g % 3]}"
        trio = [
            rows[f"{folder}/scene{g:02d}_orig.png"],
            rows[f"{folder}/scene{g:02d}_reencoded.tif"],
            rows[f"copies/{g:02d}_bytecopy.png"],
        ]
        assert len({r["sha256"] for r in trio}) == 1
        # two of the three are exact copies of the third ("duplicate"); that one is kept or a near-duplicate
        assert sorted(r["reason"] for r in trio)[:2] == ["duplicate", "duplicate"]
        assert sorted(r["reason"] for r in trio)[2] in ("", "near_duplicate")
    assert result.counts["duplicate"] == 2 * 12
    for path, label in truth.items():
        if label is None:
            assert rows[path]["status"] == "keep" and rows[path]["group"] == "", rows[path]


def test_every_tiny_and_corrupt_file_has_its_reason(curated):
    src, out, truth, result, rows = curated
    for rel in TINY:
        assert rows[rel]["status"] == "drop" and rows[rel]["reason"] == "too_small", rows[rel]
    for rel in CORRUPT:
        assert rows[rel]["status"] == "drop" and rows[rel]["reason"] == "unreadable", rows[rel]
        assert rows[rel]["error"], rows[rel]
    assert "empty" in rows["bad/empty.png"]["error"]
    assert rows["single/narrow_19x40.png"]["status"] == "keep"
    assert set(rows) == set(truth) | set(TINY) | set(CORRUPT)  # one row per file, nothing else
    assert result.counts["unreadable"] == len(CORRUPT) and result.counts["too_small"] == len(TINY)


def test_manifest_contract_and_report(curated):
    src, out, truth, result, rows = curated
    with open(out / "manifest.csv", encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    required = "path status reason width height bits channels entropy sha256 phash group anchor".split()
    assert all(c in header for c in required) and tuple(header) == MANIFEST_COLUMNS
    assert list(rows) == sorted(rows)
    row = rows["cam_a/scene00_orig.png"]
    assert (row["width"], row["height"], row["bits"], row["channels"], row["format"]) == (
        "320",
        "256",
        "16",
        "1",
        "PNG",
    )
    assert rows["export8/00_copy8.png"]["bits"] == "8"
    report = (out / "report.md").read_text()
    for word in ("unreadable", "too_small", "near_duplicate", "Mean entropy", "16-bit", "TIFF"):
        assert word in report
    for name in ("entropy_hist.png", "resolution_hist.png", "duplicate_groups.png"):
        with Image.open(out / name) as img:
            img.load()
            assert img.width > 100 and img.height > 100
            assert np.asarray(img.convert("L")).std() > 5  # something is drawn


def test_sixteen_bit_frames_that_differ_are_not_merged(tmp_path):
    """16-bit data is fingerprinted at its true depth: distinct 16-bit scenes in one narrow count band stay
    apart; a saturating 8-bit view (Pillow's convert('L') clips counts above 255) would make every one of
    them the same white hash."""
    rng = np.random.default_rng(11)
    frames = []
    for k in range(16):
        counts = to_counts16(make_scene(120, 160, rng), rng)  # all counts in 7000..9500
        frames.append(counts)
        write_image(tmp_path / "src" / f"frame{k:02d}.png", counts)
    saturated = {phash64(np.clip(f, 0, 255).astype(np.uint8)) for f in frames}
    assert len(saturated) == 1  # the failure this guards against is real for these frames
    pil_white = np.asarray(Image.open(tmp_path / "src" / "frame00.png").convert("L"))
    assert (pil_white == 255).all()
    hashes = [phash64(eight_bit_view(f[..., None])) for f in frames]
    assert min((a ^ b).bit_count() for a, b in itertools.combinations(hashes, 2)) > 6
    result = curate(tmp_path / "src", tmp_path / "out", workers=1)
    rows = read_manifest_rows(tmp_path / "out" / "manifest.csv")
    assert result.counts["keep"] == 16 and all(r["group"] == "" and r["status"] == "keep" for r in rows)
    assert all(float(r["entropy"]) > 4.0 for r in rows)  # not the 0 bits of an all-white view


def test_anchor_rules(tmp_path):
    rng = np.random.default_rng(3)
    base, _ = _scene(rng, 128, 160)
    big = np.asarray(Image.fromarray(base).resize((320, 256), Image.Resampling.BICUBIC))
    flat = (base // 4 + 100).astype(np.uint8)  # same scene, fewer gray levels: lower entropy
    write_image(tmp_path / "src/a_small.png", base)
    write_image(tmp_path / "src/b_big.png", big)
    write_image(tmp_path / "src/c_flat.png", flat)
    curate(tmp_path / "src", tmp_path / "o1", workers=1, report=False)
    largest = {r["path"]: r for r in read_manifest_rows(tmp_path / "o1/manifest.csv")}
    assert {r["anchor"] for r in largest.values()} == {"b_big.png"}
    assert largest["b_big.png"]["status"] == "keep" and largest["c_flat.png"]["reason"] == "near_duplicate"
    curate(tmp_path / "src", tmp_path / "o2", workers=1, anchor="entropy", report=False)
    rows = {r["path"]: r for r in read_manifest_rows(tmp_path / "o2/manifest.csv")}
    best = max(rows.values(), key=lambda r: float(r["entropy"]))
    assert {r["anchor"] for r in rows.values()} == {best["path"]} and best["path"] != "c_flat.png"
    with pytest.raises(ValueError, match="expected --anchor in"):
        curate(tmp_path / "src", tmp_path / "o3", anchor="median")


def test_sequence_aware_keeps_a_key_frame_per_drift(tmp_path):
    """A slow pan: each frame within the threshold of the previous, the ends far apart. Default mode
    chains it into one group (one kept); sequence-aware keeps a key frame whenever the view drifts."""
    rng = np.random.default_rng(21)
    wide = np.round(make_scene(200, 300, rng) * 255).astype(np.uint8)
    frames = [wide[:, k : k + 200] for k in range(40)]  # 1 px per frame
    for k, frame in enumerate(frames):
        write_image(tmp_path / "src/seq" / f"frame{k}.png", frame)  # frame2 < frame10 in natural order
    hashes = [phash64(f) for f in frames]
    steps = [(a ^ b).bit_count() for a, b in zip(hashes, hashes[1:])]
    assert max(steps) <= 6 and (hashes[0] ^ hashes[-1]).bit_count() > 12, steps
    plain = curate(tmp_path / "src", tmp_path / "plain", workers=1, report=False)
    aware = curate(tmp_path / "src", tmp_path / "aware", workers=1, sequence_aware=True, report=False)
    assert plain.counts["keep"] == 1
    assert aware.counts["keep"] >= 3
    rows = read_manifest_rows(tmp_path / "aware/manifest.csv")
    by_path = {r["path"]: r for r in rows}
    for r in rows:  # every dropped frame is within twice the threshold of its anchor
        anchor_hash = int(by_path[r["anchor"]]["phash"], 16)
        assert (int(r["phash"], 16) ^ anchor_hash).bit_count() <= 12


def test_manifest_to_loader_trains_on_kept_images_only(curated, tmp_path):
    src, out, truth, result, rows = curated
    kept = [p for p, r in rows.items() if r["status"] == "keep"]
    # no base given: the loader resolves paths against the SRC recorded in OUT/curate.json
    dataset = ImageFolderDataset(out / "manifest.csv", img_size=(32, 32), in_chans=1, seed=0)
    assert dataset.paths == kept and dataset.dropped == []
    assert dataset.root_dir == src.resolve()
    for index in range(len(dataset)):
        image, position, skipped = dataset[index]
        assert position == index and skipped == [] and image.shape == (1, 32, 32)
    dropped = {p for p, r in rows.items() if r["status"] == "drop"}
    assert dropped and not dropped & set(dataset.paths)


def test_cli_curate(tmp_path, caplog):
    rng = np.random.default_rng(1)
    base, _ = _scene(rng, 64, 80)
    write_image(tmp_path / "src/a.png", base)
    write_image(tmp_path / "src/b.tif", base)
    write_image(tmp_path / "src/c.png", _scene(rng, 64, 80)[0])
    assert (
        main(
            [
                "curate",
                str(tmp_path / "src"),
                "-o",
                str(tmp_path / "out"),
                "--workers",
                "1",
                "--hamming",
                "4",
                "--min-size",
                "70",
                "--anchor",
                "entropy",
            ]
        )
        == 0
    )
    rows = {r["path"]: r for r in read_manifest_rows(tmp_path / "out/manifest.csv")}
    assert [rows[p]["reason"] for p in ("a.png", "b.tif", "c.png")].count("duplicate") == 1
    assert rows["c.png"]["status"] == "keep"
    assert main(["curate", str(tmp_path / "src"), "-o", str(tmp_path / "out2"), "--min-size", "81"]) == 0
    assert {r["reason"] for r in read_manifest_rows(tmp_path / "out2/manifest.csv")} == {"too_small"}
