"""MNIST, Fashion-MNIST and CIFAR-10 parsed from their canonical files into uint8 NHWC arrays.

`load_dataset` asks `toolkit.data._files` for a dataset's files (where they are looked for, the
cache, downloads and SHA-256 checks are described there) and parses them: the four IDX files
of (Fashion-)MNIST, gzipped or raw (`read_idx`), or CIFAR-10's six pickled batches, from the
`.tar.gz` archive (read in memory, never extracted) or its extracted folder. Every file is
validated structurally (magic numbers, dimensions, dtypes, label ranges, and for the pickles
the only globals they may name), so a damaged file is a one-line `ToolkitError` naming it.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from toolkit.base import ToolkitError
from toolkit.data import _files as datafiles
from toolkit.data._files import CIFAR_ARCHIVE, CIFAR_BATCHES, DATASETS, ENV_VAR, _one_line

__all__ = ["DATASETS", "ENV_VAR", "Dataset", "load_dataset", "read_idx", "to_float"]

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# The only globals a CIFAR-10 batch may name: a numpy array and, from Python 3 re-pickles, bytes.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split as read-only arrays (copy one to modify it).

    Attributes:
        name: One of `DATASETS`.
        train_images: uint8, (N, H, W, C): 28x28x1 for (Fashion-)MNIST, 32x32x3 for CIFAR-10.
        train_labels: int32, (N,), in [0, num_classes).
        test_images: Like `train_images`.
        test_labels: Like `train_labels`.
        num_classes: 10 for all three datasets.
        source: The directory the files were read from.
        validation: `(images, labels)` held out of the training set by `with_validation`,
            or None.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str
    validation: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.train_images.shape}, "
            f"test={self.test_images.shape}, source={self.source!r})"
        )


def with_validation(data: Dataset, size: int) -> Dataset:
    """`data` with its last `size` training examples moved to `validation` (tuning split).

    What remains in `train_*` is what a run trains on and what its accountant counts.
    """
    n = len(data.train_labels)
    if not 0 < size < n:
        raise ToolkitError(f"validation={size} must be in [1, {n - 1}] (training set of {n}).")
    if data.validation is not None:
        raise ToolkitError("this dataset already holds a validation split.")
    return dataclasses.replace(
        data,
        train_images=data.train_images[: n - size],
        train_labels=data.train_labels[: n - size],
        validation=(data.train_images[n - size :], data.train_labels[n - size :]),
    )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool | None = None,
) -> Dataset:
    """Loads a dataset from the first place that holds it (the order is `toolkit.data._files`').

    Args:
        name: One of `DATASETS`.
        data_dir: A directory searched first; it must exist.
        download: Whether to download the canonical files into the cache if none are found.
        verify: Whether to check SHA-256 digests of the files found. `None` checks files in the
            cache only; `True` checks every file and refuses ones without a published digest;
            `False` checks none. Downloads are always checked.

    Returns:
        The dataset, with uint8 NHWC images and int32 labels.

    Raises:
        ToolkitError: For an unknown name, files not found (the message says where it looked and
            how to get them) or a malformed file (the message names it).
    """
    return _load(datafiles.locate(name, data_dir=data_dir, download=download, verify=verify))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzipped or raw, into a read-only native-endian array.

    Args:
        path: The file; gzip is recognised by its magic bytes, not by the name.

    Returns:
        The array, with the dtype and shape declared in the file's header.

    Raises:
        ToolkitError: If the file cannot be read, is not valid gzip, has a bad magic number or
            type code, no dimensions, or a payload that does not match its dimensions.
    """
    path = Path(path)
    return _parse_idx(datafiles.read_bytes(path), path)


def to_float(images: np.ndarray) -> np.ndarray:
    """Maps uint8 pixels to float32 in [0, 1] by dividing by 255, and nothing else.

    >>> to_float(np.array([0, 51, 255], dtype=np.uint8))
    array([0. , 0.2, 1. ], dtype=float32)
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ToolkitError(
            f"images dtype={images.dtype}; to_float expects uint8 pixels as load_dataset returns"
        )
    return images.astype(np.float32) / np.float32(255)


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ToolkitError(
                f"{path}: corrupt gzip data ({_one_line(e)}); download the file again"
            ) from e
    fix = "it is not an IDX file or is damaged; download it again"
    if not data:
        raise ToolkitError(f"{path}: empty file; {fix}")
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ToolkitError(f"{path}: bad IDX magic number 0x{data[:4].hex()}; {fix}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ToolkitError(f"{path}: unknown IDX type code 0x{code:02x}; {fix}")
    if ndim == 0:
        raise ToolkitError(f"{path}: IDX header declares 0 dimensions; {fix}")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise ToolkitError(f"{path}: truncated IDX header ({len(data)} bytes); {fix}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    size, expected = len(data) - start, count * dtype.itemsize
    if size != expected:
        problem = "truncated" if size < expected else "trailing bytes"
        raise ToolkitError(
            f"{path}: IDX dims {dims} need {expected} data bytes, found {size} ({problem}); {fix}"
        )
    if count == 0:
        array = np.zeros(dims, dtype.newbyteorder("="))
    else:
        array = np.frombuffer(data, dtype, count, start).reshape(dims)
        array = array.astype(dtype.newbyteorder("="), copy=False)
    array.flags.writeable = False
    return array


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _parse_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    fix = f"it is not a canonical CIFAR-10 batch; download {CIFAR_ARCHIVE} again"
    # Unpickling an untrusted file can run arbitrary code. We only unpickle files the user chose
    # or whose checksum was verified, and the unpickler refuses every global but numpy arrays.
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a damaged pickle can raise almost any exception type
        raise ToolkitError(f"{where}: unreadable pickle ({_one_line(e)}); {fix}") from e
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise ToolkitError(
            f"{where}: expected a dict with b'data' and b'labels', got {keys}; {fix}"
        )
    images = batch[b"data"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2):
        raise ToolkitError(f"{where}: b'data' is not a 2-D uint8 array; {fix}")
    if images.shape[1] != 3 * 32 * 32:
        raise ToolkitError(f"{where}: b'data' has shape {images.shape}, expected (N, 3072); {fix}")
    try:
        labels = np.asarray(batch[b"labels"])
    except (ValueError, TypeError) as e:
        raise ToolkitError(f"{where}: b'labels' is not a list of ints; {fix}") from e
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ToolkitError(f"{where}: b'labels' is not a list of ints; {fix}")
    _check_labels(labels, where=where, count=len(images), num_classes=10)
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


def _check_labels(labels: np.ndarray, *, where: str, count: int, num_classes: int) -> None:
    if len(labels) != count:
        raise ToolkitError(
            f"{where}: {len(labels)} labels for {count} images; the data is damaged or mixes "
            f"files from different sets, download it again"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ToolkitError(f"{where}: label {bad} outside [0, {num_classes}); download it again")


def _load(files: datafiles.DataFiles) -> Dataset:
    if files.name == "cifar10":
        train, test = _load_cifar(files)
    else:
        train, test = (_load_idx(files, *pair) for pair in _pairs(files.paths))
    arrays = (*train, *test)
    for array in arrays:
        array.flags.writeable = False
    return Dataset(files.name, *arrays, num_classes=10, source=files.source)


def _pairs(paths: tuple[Path, ...]) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    train_images, train_labels, test_images, test_labels = paths
    return (train_images, train_labels), (test_images, test_labels)


def _load_idx(
    files: datafiles.DataFiles, images_path: Path, labels_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (_parse_idx(files.read(p), p) for p in (images_path, labels_path))
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ToolkitError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got "
            f"{images.dtype} {images.shape}; use the {files.name} image files"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ToolkitError(
            f"{labels_path}: expected uint8 labels of shape (N,), got "
            f"{labels.dtype} {labels.shape}; use the {files.name} label files"
        )
    _check_labels(labels, where=str(labels_path), count=len(images), num_classes=10)
    return images[..., None], labels.astype(np.int32)


def _load_cifar(
    files: datafiles.DataFiles,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if len(files.paths) == 1:  # the archive: read the batches from it without extracting to disk
        (archive,) = files.paths
        data = files.read(archive)
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    base = PurePosixPath(member.name).name
                    if member.isfile() and base in CIFAR_BATCHES and base not in members:
                        members[base] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ToolkitError(
                f"{archive}: unreadable tar.gz ({_one_line(e)}); download it again"
            ) from e
        missing = [b for b in CIFAR_BATCHES if b not in members]
        if missing:
            raise ToolkitError(
                f"{archive}: archive lacks {', '.join(missing)}; download {CIFAR_ARCHIVE} again"
            )
        batches = [_parse_cifar_batch(members[b], f"{archive}:{b}") for b in CIFAR_BATCHES]
    else:
        batches = [_parse_cifar_batch(files.read(p), str(p)) for p in files.paths]
    train_images, train_labels = (
        np.concatenate(parts) for parts in zip(*batches[:-1], strict=True)
    )
    test_images, test_labels = (np.ascontiguousarray(part) for part in batches[-1])
    return (train_images, train_labels), (test_images, test_labels)
