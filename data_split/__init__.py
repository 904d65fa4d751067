"""Spectral split of image datasets into K sub-datasets (transforms, sources, Ray Data pipeline, storage)."""

from data_split import layout
from data_split.config import ExtraSourceConfig, SourceConfig, SplitConfig, StorageConfig, SyntheticConfig
from data_split.errors import ConfigError, SpectralError
from data_split.layout import ManifestError, load_manifest
from data_split.pipeline import SplitConflictError, SplitResult, split_dataset
from data_split.shards import BranchData, read_branch
from data_split.sources import SourceError, make_source
from data_split.sources.imagefolder import IMAGE_SUFFIXES, decode_image
from data_split.storage import RunStorage, StorageError
from data_split.transforms import (
    TRANSFORMS,
    polyphase_split,
    spectral_components,
    spectral_merge,
    spectral_split,
    split_matrix,
    transform_matrix,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "TRANSFORMS",
    "BranchData",
    "ConfigError",
    "ExtraSourceConfig",
    "ManifestError",
    "RunStorage",
    "SourceConfig",
    "SourceError",
    "SpectralError",
    "SplitConfig",
    "SplitConflictError",
    "SplitResult",
    "StorageConfig",
    "StorageError",
    "SyntheticConfig",
    "decode_image",
    "layout",
    "load_manifest",
    "make_source",
    "polyphase_split",
    "read_branch",
    "spectral_components",
    "spectral_merge",
    "spectral_split",
    "split_dataset",
    "split_matrix",
    "transform_matrix",
]
