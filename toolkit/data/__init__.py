"""toolkit.data."""

from toolkit.data._arrays import FORMATS, ArrayData, load_arrays
from toolkit.data._datasets import (
    DATASETS,
    ENV_VAR,
    Dataset,
    load_dataset,
    read_idx,
    to_float,
    with_validation,
)
from toolkit.data._files import (
    CIFAR_ARCHIVE,
    CIFAR_BATCHES,
    IDX_STEMS,
    DataFiles,
    locate,
    read_bytes,
)

__all__ = [
    "ArrayData",
    "CIFAR_ARCHIVE",
    "CIFAR_BATCHES",
    "DATASETS",
    "DataFiles",
    "Dataset",
    "ENV_VAR",
    "FORMATS",
    "IDX_STEMS",
    "load_arrays",
    "load_dataset",
    "locate",
    "read_bytes",
    "read_idx",
    "to_float",
    "with_validation",
]
