"""Data: the batch contract, image reading at true bit depth, the catalogue of images (folder, manifest,
pack; the unreadable registry), the manifest format, the sample spec (crop, flip, 16-bit mapping,
normalisation), the released augmentation, the reference dataset and loader, packed training copies,
and a synthetic infrared source. The augmentation's functions are in :mod:`infmae.data.transforms`; the
DALI loader lives in :mod:`infmae.data.dali` (imported only when chosen)."""

from .batch import Batch
from .catalogue import Catalogue, UnreadableFiles, scan_folder
from .folder import ImageFolderDataset
from .io import IMAGE_EXTENSIONS, ImageInfo, ImageReadError, read_image, read_image_header, read_image_info
from .loader import ReferenceLoader, collate
from .manifest import MANIFEST_COLUMNS, read_manifest, read_manifest_rows
from .mapping import (
    DEFAULT_MAPPING,
    SIXTEEN_BIT_MODES,
    SixteenBitMapping,
    apply_range,
    image_range,
    image_range_torch,
    to_unit_float,
)
from .packed import PackedReader, is_pack, pack_dataset
from .spec import SampleSpec
from .synthetic import BAD_FILES, IGNORED_FILES, generate_dataset, make_scene, write_image
from .transforms import AugmentParams

__all__ = [
    "DEFAULT_MAPPING",
    "Catalogue",
    "SampleSpec",
    "SixteenBitMapping",
    "UnreadableFiles",
    "IMAGE_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "SIXTEEN_BIT_MODES",
    "BAD_FILES",
    "IGNORED_FILES",
    "AugmentParams",
    "ImageInfo",
    "PackedReader",
    "Batch",
    "ImageFolderDataset",
    "ImageReadError",
    "ReferenceLoader",
    "apply_range",
    "collate",
    "generate_dataset",
    "image_range",
    "image_range_torch",
    "is_pack",
    "pack_dataset",
    "make_scene",
    "read_image",
    "read_image_header",
    "read_image_info",
    "read_manifest",
    "read_manifest_rows",
    "scan_folder",
    "to_unit_float",
    "write_image",
]
