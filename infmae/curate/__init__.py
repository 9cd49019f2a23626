"""Dataset curation (``infmae curate``): scan, fingerprint, filter, deduplicate, report.

Modules: :mod:`.hashes` (8-bit view, entropy, pixel SHA-256, pHash), :mod:`.scan` (parallel, resumable
scan into SQLite), :mod:`.index` (multi-index hashing, union-find), :mod:`.similarity` (the content
check of candidate pairs), :mod:`.manifest` (decisions and
``manifest.csv``), :mod:`.report` (statistics and PNGs), :mod:`.pipeline` (the command).
"""

from infmae.data.manifest import MANIFEST_COLUMNS, read_manifest_rows

from .hashes import eight_bit_view, entropy_bits, phash64, pixel_sha256
from .pipeline import CurateResult, curate

__all__ = [
    "CurateResult",
    "MANIFEST_COLUMNS",
    "curate",
    "eight_bit_view",
    "entropy_bits",
    "phash64",
    "pixel_sha256",
    "read_manifest_rows",
]
