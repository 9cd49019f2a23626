"""The curation report: statistics, histogram PNGs (drawn with Pillow), a duplicate-group sample sheet.

``OUT/report.md`` holds the counts per reason, the mean entropy (all readable images and kept images),
tables of bit depths, channels, formats and the commonest resolutions, and links to:

- ``entropy_hist.png``: entropy of the readable images, 32 bins over [0, 8] bits;
- ``resolution_hist.png``: long side of the readable images, log2 bins;
- ``duplicate_groups.png``: up to ``sheet_groups`` of the largest groups, one row each, the anchor first
  (green frame) then dropped members (red frame: exact duplicate; orange: near-duplicate), each tile
  labelled with its file name (shortened) and its pHash distance and content similarity to the anchor;
  ``report.md`` lists the same members with their full paths, so a person can check each merge;
- the closest candidate pairs that were NOT merged (most similar first, up to
  :data:`~infmae.curate.manifest.CLOSEST_REJECTED`), so a person can see the confirmation's margin.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw

from infmae.data.io import ImageReadError, read_image

from .hashes import eight_bit_view, hamming
from .manifest import REASONS, Decisions
from .similarity import SIMILARITY_THRESHOLD, detail_maps, similarity, thumbs_from_blobs

logger = logging.getLogger(__name__)

SHEET_GROUPS = 8  # groups drawn in duplicate_groups.png (largest first)
SHEET_PER_GROUP = 6  # members drawn per group, anchor first


def bar_chart(values: list[float], labels: list[str], title: str, path: Path, size=(720, 360)) -> Path:
    """A bar chart PNG: one bar per value, a label under every few bars, the maximum on the y axis."""
    width, height = size
    left, right, top, bottom = 50, 10, 28, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 6), title, fill="black")
    peak = max(values) if values and max(values) > 0 else 1.0
    plot_w, plot_h = width - left - right, height - top - bottom
    bar = plot_w / max(1, len(values))
    step = max(1, math.ceil(len(values) / 12))
    for k, value in enumerate(values):
        x0 = left + k * bar
        y0 = top + plot_h * (1.0 - value / peak)
        draw.rectangle([x0 + 1, y0, x0 + bar - 1, top + plot_h], fill=(70, 110, 180))
        if k % step == 0:
            draw.text((x0, top + plot_h + 6), labels[k], fill="black")
    draw.line([left, top, left, top + plot_h, width - right, top + plot_h], fill="black")
    draw.text((4, top - 4), f"{peak:g}", fill="black")
    draw.text((4, top + plot_h - 10), "0", fill="black")
    image.save(path)
    return path


def _tile(src: Path, rel: str, side: int) -> Image.Image:
    try:
        view = eight_bit_view(read_image(src / rel))
        tile = Image.fromarray(view)
        tile.thumbnail((side, side))
    except ImageReadError:
        tile = Image.new("L", (side, side), 0)
    return tile.convert("RGB")


def short_name(rel: str, width: float, measure) -> str:
    """The file name of ``rel`` (no folders), its middle cut out (``..``) until ``measure(text)`` fits
    ``width`` pixels: the start and the end of a name (prefix, frame number, extension) tell files apart."""
    name = PurePosixPath(rel).name
    if measure(name) <= width:
        return name
    for keep in range(len(name) - 1, 1, -1):
        head = (keep + 1) // 2
        text = f"{name[:head]}..{name[len(name) - (keep - head) :]}"
        if measure(text) <= width:
            return text
    return name[:2] + ".."


def sample_sheet(
    src: Path,
    decisions: Decisions,
    phash: dict[int, int],
    path: Path,
    similarity_to_anchor: dict[int, float] | None = None,
    sheet_groups: int = SHEET_GROUPS,
    per_group: int = SHEET_PER_GROUP,
    side: int = 112,
) -> Path | None:
    """Write the duplicate-group sheet (largest groups first); ``None`` when there is no group. Each tile is
    labelled with its file name (shortened) and, for a dropped member, its pHash distance ``d`` and content
    similarity ``s`` to the anchor (``s`` absent when the store has no thumbnail for the pair)."""
    groups = sorted(decisions.groups.items(), key=lambda item: (-len(item[1]), item[0]))[:sheet_groups]
    if not groups:
        return None
    similarity_to_anchor = similarity_to_anchor or {}
    pad, label = 6, 28
    sheet = Image.new("RGB", (per_group * (side + pad) + pad + 60, len(groups) * (side + pad + label) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (gid, members) in enumerate(groups):
        y = pad + row * (side + pad + label)
        draw.text((4, y + side // 2), gid, fill="black")
        head = members[0]
        for col, i in enumerate(members[:per_group]):
            x = 60 + pad + col * (side + pad)
            tile = _tile(src, decisions.paths[i], side)
            sheet.paste(tile, (x + (side - tile.width) // 2, y + (side - tile.height) // 2))
            colour = "green" if i == head else ("red" if decisions.reason[i] == "duplicate" else "orange")
            draw.rectangle([x - 2, y - 2, x + side + 1, y + side + 1], outline=colour, width=2)
            draw.text((x, y + side + 2), short_name(decisions.paths[i], side, draw.textlength), fill="black")
            if i == head:
                text = "anchor (kept)"
            else:
                text = f"d={hamming(phash[i], phash[head])}"
                if i in similarity_to_anchor:
                    text += f" s={similarity_to_anchor[i]:.2f}"
            draw.text((x, y + side + 14), text, fill="black")
    sheet.save(path)
    return path


def _similarity_to_anchors(connection: sqlite3.Connection, decisions: Decisions, groups: list[str]) -> dict[int, float]:
    """Content similarity of each member of ``groups`` to its group's anchor, from the stored thumbnails."""
    members = [i for gid in groups for i in decisions.groups[gid]]
    blobs = {}
    for i in members:
        found = connection.execute("SELECT thumb FROM files WHERE path = ?", (decisions.paths[i],)).fetchone()
        if found and found[0]:
            blobs[i] = found[0]
    pairs = [(i, decisions.groups[gid][0]) for gid in groups for i in decisions.groups[gid][1:]]
    pairs = [(i, head) for i, head in pairs if i in blobs and head in blobs]
    if not pairs:
        return {}
    maps = detail_maps(thumbs_from_blobs([blobs[i] for pair in pairs for i in pair]))
    scores = similarity(maps[0::2], maps[1::2])
    return {i: float(score) for (i, _), score in zip(pairs, scores)}


def _closest_rejected(decisions: Decisions, hamming_bits: int) -> list[str]:
    lines = [
        f"Closest pairs NOT merged (candidates of the pHash index within {hamming_bits} bits whose "
        f"content similarity stayed under {SIMILARITY_THRESHOLD}; {decisions.pairs_checked} candidate pairs "
        f"compared, {decisions.pairs_confirmed} merged): the margin of the confirmation.",
        "",
    ]
    if not decisions.closest_rejected:
        return lines + ["None: every candidate pair was merged (or there were none).", ""]
    lines += ["| file A | file B | pHash distance | similarity |", "|---|---|---:|---:|"]
    for i, j, distance, score in decisions.closest_rejected:
        lines.append(f"| `{decisions.paths[i]}` | `{decisions.paths[j]}` | {distance} | {score:.3f} |")
    return lines + [""]


def _table(title: str, counter: Counter, limit: int = 12) -> list[str]:
    lines = [f"| {title} | images |", "|---|---:|"]
    lines += [f"| {key} | {count} |" for key, count in counter.most_common(limit)]
    return lines + [""]


def write_report(connection: sqlite3.Connection, decisions: Decisions, src: Path, out: Path, options: dict) -> Path:
    """Write ``OUT/report.md`` and its PNGs; returns the report's path. Streams the store once."""
    out = Path(out)
    entropy_bins = np.zeros(32, np.int64)
    side_bins: Counter = Counter()
    bits: Counter = Counter()
    channels: Counter = Counter()
    formats: Counter = Counter()
    resolutions: Counter = Counter()
    entropy_sum = kept_sum = 0.0
    readable = kept = 0
    in_groups = {i for members in decisions.groups.values() for i in members}
    phash: dict[int, int] = {}
    cursor = connection.execute(
        "SELECT width, height, bits, channels, entropy, format, phash, error FROM files ORDER BY path"
    )
    for i, (width, height, nbits, nchan, entropy, fmt, ph, error) in enumerate(cursor):
        formats[fmt or "?"] += 1
        if error is not None:
            continue
        readable += 1
        entropy_sum += entropy
        if not decisions.reason[i]:
            kept += 1
            kept_sum += entropy
        entropy_bins[min(31, int(entropy / 8.0 * 32))] += 1
        side_bins[int(math.floor(math.log2(max(width, height))))] += 1
        bits[f"{nbits}-bit"] += 1
        channels[str(nchan)] += 1
        resolutions[f"{width}x{height}"] += 1
        if i in in_groups:
            phash[i] = int(ph, 16)
    bar_chart(
        entropy_bins.tolist(),
        [f"{8 * k / 32:.1f}" for k in range(32)],
        "entropy of the 8-bit view (bits), readable images",
        out / "entropy_hist.png",
    )
    sides = list(range(min(side_bins, default=0), max(side_bins, default=0) + 1))
    bar_chart(
        [side_bins[s] for s in sides],
        [f"{2**s}" for s in sides],
        "long side (px, log2 bins), readable images",
        out / "resolution_hist.png",
    )
    shown = [gid for gid, _ in sorted(decisions.groups.items(), key=lambda item: (-len(item[1]), item[0]))]
    shown = shown[:SHEET_GROUPS]
    to_anchor = _similarity_to_anchors(connection, decisions, shown)
    sheet = sample_sheet(src, decisions, phash, out / "duplicate_groups.png", to_anchor, sheet_groups=SHEET_GROUPS)
    counts = decisions.counts
    lines = [
        "# Curation report",
        "",
        f"Source: `{Path(src).resolve()}`; options: " + ", ".join(f"{k}={v}" for k, v in options.items()),
        "",
        f"{counts['total']} files, {counts['keep']} kept, {counts['total'] - counts['keep']} dropped, "
        f"{counts['groups']} duplicate / near-duplicate groups.",
        "",
        "| reason | files |",
        "|---|---:|",
    ]
    lines += [f"| {r} | {counts[r]} |" for r in REASONS] + [f"| (kept) | {counts['keep']} |", ""]
    mean_all = entropy_sum / readable if readable else float("nan")
    mean_kept = kept_sum / kept if kept else float("nan")
    lines += [
        f"Mean entropy (Shannon, 256-bin histogram of the 8-bit view): {mean_all:.3f} bits over "
        f"{readable} readable images, {mean_kept:.3f} bits over {kept} kept images "
        "(Inf30: 6.44, ImageNet-1K: 7.19).",
        "",
        "![entropy](entropy_hist.png)",
        "",
        "![long side](resolution_hist.png)",
        "",
    ]
    lines += _table("bit depth", bits) + _table("channels", channels) + _table("format (all files)", formats)
    lines += _table("resolution (W x H), commonest", resolutions)
    if sheet is not None:
        lines += [
            "Duplicate groups (largest first; green = anchor kept, red = exact duplicate, orange = "
            "near-duplicate; under each tile its file name, then d = Hamming distance of the pHash to the "
            "anchor's and s = content similarity to the anchor):",
            "",
            "![groups](duplicate_groups.png)",
            "",
            "| group | file | kept / dropped | d | s |",
            "|---|---|---|---:|---:|",
        ]
        for gid in shown:
            head = decisions.groups[gid][0]
            for i in decisions.groups[gid][:SHEET_PER_GROUP]:
                role = "anchor, kept" if i == head else decisions.reason[i]
                d = "" if i == head else hamming(phash[i], phash[head])
                score = f"{to_anchor[i]:.3f}" if i in to_anchor else ""
                lines.append(f"| {gid} | `{decisions.paths[i]}` | {role} | {d} | {score} |")
        lines.append("")
    lines += _closest_rejected(decisions, options.get("hamming", 6))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
