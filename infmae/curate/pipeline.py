"""``infmae curate SRC -o OUT``: scan, decide, write the manifest and the report (the CLI's glue).

Outputs in OUT: ``scan.sqlite`` (resumable per-file results), ``manifest.csv``, ``curate.json``,
``report.md`` with ``entropy_hist.png``, ``resolution_hist.png`` and ``duplicate_groups.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infmae.data.manifest import write_manifest_info

from .manifest import ANCHOR_RULES, decide, write_manifest
from .report import write_report
from .scan import ScanStats, open_store, scan
from .similarity import SIMILARITY_THRESHOLD

logger = logging.getLogger(__name__)


@dataclass
class CurateResult:
    scan: ScanStats
    counts: dict
    manifest: Path
    report: Path
    decide_seconds: float


def curate(
    src: str | os.PathLike,
    out: str | os.PathLike,
    min_size: int = 20,
    hamming: int = 6,
    anchor: str = "largest",
    sequence_aware: bool = False,
    workers: int | None = None,
    on_result: Callable[[tuple], None] | None = None,
    report: bool = True,
    rescan: bool = False,
) -> CurateResult:
    """Curate ``src`` into ``out`` (see :mod:`infmae.curate.manifest` for the rules). ``rescan``: read every
    file again instead of reusing ``OUT/scan.sqlite`` (a damaged store is set aside and rebuilt anyway)."""
    if anchor not in ANCHOR_RULES:
        raise ValueError(f"curate: expected --anchor in {ANCHOR_RULES}, got {anchor!r}; the default is 'largest'")
    src, out = Path(src), Path(out)
    stats = scan(src, out, workers=workers, on_result=on_result, rescan=rescan)
    options = {"min_size": min_size, "hamming": hamming, "anchor": anchor, "sequence_aware": sequence_aware}
    options["similarity_threshold"] = SIMILARITY_THRESHOLD  # fixed, recorded so a run says which rule it used
    connection = open_store(out, check=False)  # checked by scan a moment ago
    try:
        start = time.perf_counter()
        decisions = decide(connection, min_size=min_size, hamming=hamming, anchor=anchor, sequence_aware=sequence_aware)
        decide_seconds = time.perf_counter() - start
        manifest = write_manifest(connection, decisions, out)
        write_manifest_info(out, src, options, decisions.counts)
        report_path = write_report(connection, decisions, src, out, options) if report else out / "report.md"
    finally:
        connection.close()
    counts = decisions.counts
    logger.info(
        "curate: %d files, %d kept; dropped %d unreadable, %d too small, %d duplicates, %d near-duplicates "
        "(%d groups); manifest %s",
        counts["total"],
        counts["keep"],
        counts["unreadable"],
        counts["too_small"],
        counts["duplicate"],
        counts["near_duplicate"],
        counts["groups"],
        manifest,
    )
    return CurateResult(scan=stats, counts=counts, manifest=manifest, report=report_path, decide_seconds=decide_seconds)


def run(args: argparse.Namespace) -> int:
    """The ``infmae curate`` handler (flags defined in :func:`infmae.cli.build_parser`)."""
    result = curate(
        args.src,
        args.output,
        min_size=args.min_size,
        hamming=args.hamming,
        anchor=args.anchor,
        sequence_aware=args.sequence_aware,
        workers=args.workers,
        rescan=args.rescan,
    )
    logger.info("curate: report %s", result.report)
    return 0
