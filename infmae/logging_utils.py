"""Logging for library code: rank 0 at INFO to the console and to RUN/train.log; other ranks ERROR only,
tagged with their rank. Every rank scans the same data and steps in lock-step, so their warnings would
repeat rank 0's line for line; what only one rank sees (a bad file in its shard) is gathered into rank 0's
``skipped_files.tsv`` and end-of-run summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(run_dir: str | Path | None = None, rank: int = 0) -> None:
    root = logging.getLogger()
    level = logging.INFO if rank == 0 else logging.ERROR
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_infmae", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / "train.log"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT if rank == 0 else f"[rank {rank}] {FORMAT}", datefmt="%H:%M:%S"))
        handler._infmae = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def log_failure(message: str, error: BaseException, run_dir: str | Path | None = None) -> None:
    """A fatal error: one line on the console and in RUN/train.log, its traceback in train.log only."""
    logger = logging.getLogger("infmae")
    logger.error("%s%s", message, f" (traceback in {Path(run_dir) / 'train.log'})" if run_dir else "")
    record = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 0, "traceback:", None, (type(error), error, error.__traceback__)
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and getattr(handler, "_infmae", False):
            handler.handle(record)
