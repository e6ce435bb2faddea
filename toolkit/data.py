"""MNIST, Fashion-MNIST and CIFAR-10 from their canonical files, as uint8 NHWC arrays.

Where the files are looked for, in order (the first complete set wins):

1. the `data_dir` argument (the CLI's `--data-dir`);
2. the directory in `$TOOLKIT_DATA_DIR`;
3. the user cache, `platformdirs.user_cache_dir("tempered-dp-toolkit")`;
4. for Fashion-MNIST, the Debian package directory `/usr/share/datasets/fashion-mnist`.

In each, the files may lie directly or in a subfolder named after the dataset. MNIST and
Fashion-MNIST are the four IDX files, gzipped or raw; CIFAR-10 is `cifar-10-python.tar.gz` or
its extracted `cifar-10-batches-py/` folder. If nothing is found and `download=True`, the
canonical files are downloaded into `<cache>/<name>/`.

Checksum policy: a download is always checked against the published SHA-256 before it is moved
into the cache. Files found in the cache are checked on every load. Files in a directory the
user chose (or in the Debian directory, which dpkg manages) are only validated structurally,
unless `verify=True`. Published checksums exist for the `.gz` IDX files and the CIFAR tarball
only; raw IDX files and extracted CIFAR batches are validated structurally.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import platformdirs

from toolkit.errors import ToolkitError

DATASETS = ("mnist", "fashion-mnist", "cifar10")
ENV_VAR = "TOOLKIT_DATA_DIR"

_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")  # test last

_BASE_URL = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}
# Accepted SHA-256 of each downloadable file; its keys are what a download fetches. The canonical
# digests are the ones TFDS, Keras and torchvision publish. The Debian Fashion-MNIST files are the
# canonical ones with the gzip header normalised (name dropped, mtime set) by the Debian build,
# so they differ byte-wise but hold the same data.
_SHA256: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    },
    "fashion-mnist": {  # (canonical, Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1)
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        ),
    },
    "cifar10": {
        _CIFAR_ARCHIVE: ("6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",),
    },
}
_SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}
_APT_PACKAGE = {"fashion-mnist": "dataset-fashion-mnist"}

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
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.train_images.shape}, "
            f"test={self.test_images.shape}, source={self.source!r})"
        )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool | None = None,
) -> Dataset:
    """Loads a dataset from the first place that holds it (see the module docstring).

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
    if name not in DATASETS:
        raise ToolkitError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
    places = _search_path(name, data_dir)
    for _, base, cache in places:
        files = _find(name, base, allow_partial=cache)
        if files is not None:
            check = verify if verify is not None else cache
            return _load(name, files, check=check, strict=verify is True)
    looked = ", ".join(where for where, _, _ in places)
    if not download:
        raise ToolkitError(f"{name} not found in {looked} and download=False; {_how_to_get(name)}")
    target = _cache_root() / name
    for filename, accepted in _SHA256[name].items():
        if not (target / filename).is_file():
            url = _BASE_URL[name] + filename
            try:
                _download(url, target / filename, accepted)
            except (OSError, http.client.HTTPException) as e:
                raise ToolkitError(
                    f"{name} not found in {looked} and downloading {url} failed "
                    f"({_one_line(e)}); {_how_to_get(name)}"
                ) from e
    files = _find(name, target, allow_partial=False)
    assert files is not None, "every downloadable file is in place"
    return _load(name, files, check=verify is not False, strict=verify is True)


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
    return _parse_idx(_read_bytes(path), path)


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


def _cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("tempered-dp-toolkit"))


def _search_path(name: str, data_dir: str | os.PathLike | None) -> list[tuple[str, Path, bool]]:
    """(description, base directory, is the cache) for each place to look, in order."""
    places = []
    for label, value in (("data_dir", data_dir), (ENV_VAR, os.environ.get(ENV_VAR) or None)):
        if value is None:
            continue
        base = Path(value).expanduser()
        if not base.is_dir():
            raise ToolkitError(
                f"{label}={os.fspath(value)} is not a directory; "
                f"point it at the directory holding the {name} files"
            )
        places.append((f"{label}={base}", base, False))
    places.append((f"the cache {_cache_root()}", _cache_root(), True))
    places += [(d, Path(d), False) for d in _SYSTEM_DIRS.get(name, ())]
    return places


def _layouts(name: str, d: Path) -> list[list[tuple[Path, ...]]]:
    """The ways a dataset's files may lie in `d`: lists of slots, each the accepted paths of one."""
    if name == "cifar10":
        return [
            [(d / _CIFAR_FOLDER / b,) for b in _CIFAR_BATCHES],
            [(d / b,) for b in _CIFAR_BATCHES],
            [(d / _CIFAR_ARCHIVE,)],
        ]
    return [[(d / f"{stem}.gz", d / stem) for stem in _IDX_STEMS]]


def _find(name: str, base: Path, *, allow_partial: bool) -> list[Path] | None:
    """The dataset's files in `base` or `base/name`, or None; raises on an incomplete set."""
    partial = None
    for d in (base, base / name):
        for layout in _layouts(name, d):
            hits = [next((p for p in slot if p.is_file()), None) for slot in layout]
            if all(hits):
                return hits
            if any(hits) and partial is None:
                partial = (
                    d,
                    [slot[0].name for slot, hit in zip(layout, hits, strict=True) if hit is None],
                )
    if partial is not None and not allow_partial:
        d, missing = partial
        raise ToolkitError(
            f"{d} holds only part of {name}: {', '.join(missing)} missing; "
            f"add the missing files (from {_BASE_URL[name]}) or remove the partial set"
        )
    return None


def _how_to_get(name: str) -> str:
    files = ", ".join(_SHA256[name])
    hint = f"download {files} from {_BASE_URL[name]} into {_cache_root() / name}"
    hint += f" or into a directory passed with --data-dir or {ENV_VAR}"
    if name in _APT_PACKAGE:
        hint += f", or run `apt install {_APT_PACKAGE[name]}`"
    return hint


def _download(url: str, dest: Path, accepted: tuple[str, ...]) -> None:
    """Streams `url` to a temporary file beside `dest`, checks its SHA-256, then renames it.

    The cache directory is only created once the server answers, so a failed connection leaves
    nothing behind, and a failed or corrupt transfer removes its temporary file.
    """
    with urllib.request.urlopen(url, timeout=60) as response:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() not in accepted:
                raise ToolkitError(
                    f"download of {url} has SHA-256 {digest.hexdigest()}, expected "
                    f"{' or '.join(accepted)}; it was corrupted or changed upstream and was not "
                    f"saved; retry, or fetch it by hand into {dest.parent}"
                )
            # Atomic: readers see no file or the whole verified one. The directory is not
            # fsync'ed: a rename lost in a crash only costs another download.
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ToolkitError(f"cannot read {path} ({_one_line(e)}); check the path") from e


def _read_checked(name: str, path: Path, *, check: bool, strict: bool) -> bytes:
    """The file's bytes; with `check`, its SHA-256 must be a published one (if there is one)."""
    data = _read_bytes(path)
    if not check:
        return data
    accepted = _SHA256[name].get(path.name)
    if accepted is None:
        if strict:
            raise ToolkitError(
                f"{path}: no published SHA-256 for this file, so verify=True cannot check it; "
                f"use the canonical {', '.join(_SHA256[name])} or verify=False"
            )
        return data
    digest = hashlib.sha256(data).hexdigest()
    if digest not in accepted:
        raise ToolkitError(
            f"{path}: SHA-256 {digest} does not match the published {' or '.join(accepted)}; "
            f"replace it with {_BASE_URL[name]}{path.name} (deleting it from the cache makes "
            f"the next load download it)"
        )
    return data


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
    fix = f"it is not a canonical CIFAR-10 batch; download {_CIFAR_ARCHIVE} again"
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


def _load(name: str, files: list[Path], *, check: bool, strict: bool) -> Dataset:
    if name == "cifar10":
        train, test = _load_cifar(files, check=check, strict=strict)
    else:
        train, test = (_load_idx(name, *pair, check=check, strict=strict) for pair in _pairs(files))
    arrays = (*train, *test)
    for array in arrays:
        array.flags.writeable = False
    return Dataset(name, *arrays, num_classes=10, source=str(files[0].parent))


def _pairs(files: list[Path]) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    train_images, train_labels, test_images, test_labels = files
    return (train_images, train_labels), (test_images, test_labels)


def _load_idx(
    name: str, images_path: Path, labels_path: Path, *, check: bool, strict: bool
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (
        _parse_idx(_read_checked(name, p, check=check, strict=strict), p)
        for p in (images_path, labels_path)
    )
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ToolkitError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got "
            f"{images.dtype} {images.shape}; use the {name} image files"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ToolkitError(
            f"{labels_path}: expected uint8 labels of shape (N,), got "
            f"{labels.dtype} {labels.shape}; use the {name} label files"
        )
    _check_labels(labels, where=str(labels_path), count=len(images), num_classes=10)
    return images[..., None], labels.astype(np.int32)


def _load_cifar(
    files: list[Path], *, check: bool, strict: bool
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if len(files) == 1:  # the archive: read the batches from it without extracting to disk
        (archive,) = files
        data = _read_checked("cifar10", archive, check=check, strict=strict)
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    base = PurePosixPath(member.name).name
                    if member.isfile() and base in _CIFAR_BATCHES and base not in members:
                        members[base] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ToolkitError(
                f"{archive}: unreadable tar.gz ({_one_line(e)}); download it again"
            ) from e
        missing = [b for b in _CIFAR_BATCHES if b not in members]
        if missing:
            raise ToolkitError(
                f"{archive}: archive lacks {', '.join(missing)}; download {_CIFAR_ARCHIVE} again"
            )
        batches = [_parse_cifar_batch(members[b], f"{archive}:{b}") for b in _CIFAR_BATCHES]
    else:
        batches = [
            _parse_cifar_batch(_read_checked("cifar10", p, check=check, strict=strict), str(p))
            for p in files
        ]
    train_images, train_labels = (
        np.concatenate(parts) for parts in zip(*batches[:-1], strict=True)
    )
    test_images, test_labels = (np.ascontiguousarray(part) for part in batches[-1])
    return (train_images, train_labels), (test_images, test_labels)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())
