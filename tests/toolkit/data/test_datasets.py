"""Tests for toolkit.data (_datasets, _files): exact round trips, one-line errors for every
malformed file, lookup order, checksums and downloads (through file:// URLs, never the network)."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import platformdirs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.base import ToolkitError
from toolkit.data import DATASETS, load_dataset, read_idx, to_float
from toolkit.data import _datasets as data
from toolkit.data import _files as datafiles

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
_SYSTEM_DIRS = datafiles._SYSTEM_DIRS
_REAL_URLS = dict(datafiles._BASE_URL)
IDX_FILES = [f"{stem}.gz" for stem in datafiles.IDX_STEMS]
IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, no env var, no system dirs, and download URLs that go nowhere."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda appname: str(cache))
    monkeypatch.delenv(datafiles.ENV_VAR, raising=False)
    monkeypatch.setattr(datafiles, "_SYSTEM_DIRS", {})
    nowhere = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setattr(datafiles, "_BASE_URL", dict.fromkeys(DATASETS, nowhere))
    return cache


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, IDX_CODES[array.dtype.str[1:]], array.ndim])
    dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_set(d: Path, *, n_train: int, n_test: int = 4, gz: bool = True, seed: int = 0):
    """Writes the four (Fashion-)MNIST IDX files into `d`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for stem, n in zip(datafiles.IDX_STEMS, (n_train, n_train, n_test, n_test), strict=True):
        shape = (n, 28, 28) if "images" in stem else (n,)
        arrays[stem] = rng.integers(0, 256 if "images" in stem else 10, shape, dtype=np.uint8)
        raw = idx_bytes(arrays[stem])
        d.mkdir(parents=True, exist_ok=True)
        (d / (f"{stem}.gz" if gz else stem)).write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return arrays


def trust(monkeypatch: pytest.MonkeyPatch, name: str, d: Path) -> None:
    """Makes the files in `d` the published ones for `name`."""
    digests = {
        f: (hashlib.sha256((d / f).read_bytes()).hexdigest(),) for f in datafiles._SHA256[name]
    }
    monkeypatch.setitem(datafiles._SHA256, name, digests)


def cifar_batch(rng: np.random.Generator, n: int) -> dict[bytes, object]:
    return {
        b"batch_label": b"a batch",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def pickle_batch(batch: object) -> bytes:
    # Protocol 2, with numpy's global under its pre-2.0 name, as in the canonical files.
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def write_cifar(d: Path, layout: str, *, seed: int = 0, edit: dict | None = None):
    """Writes six small batches as 'folder', 'flat' or 'archive'; `edit` replaces some bytes."""
    rng = np.random.default_rng(seed)
    batches = {name: cifar_batch(rng, 3 + i) for i, name in enumerate(datafiles.CIFAR_BATCHES)}
    blobs = {name: pickle_batch(b) for name, b in batches.items()}
    blobs["batches.meta"] = pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2)
    blobs.update(edit or {})
    d.mkdir(parents=True, exist_ok=True)
    if layout == "archive":
        with tarfile.open(d / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        folder = d / "cifar-10-batches-py" if layout == "folder" else d
        folder.mkdir(exist_ok=True)
        for name, blob in blobs.items():
            (folder / name).write_bytes(blob)
    return batches


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(excinfo.value)
    assert type(excinfo.value) is ToolkitError
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("code", sorted(IDX_CODES))
def test_read_idx_round_trips_every_type_code(tmp_path: Path, code: str, gz: bool) -> None:
    array = (np.arange(2 * 3 * 5) - 7).astype(code).reshape(2, 3, 5)
    raw = idx_bytes(array)
    (tmp_path / "a.idx").write_bytes(gzip.compress(raw) if gz else raw)
    got = read_idx(tmp_path / "a.idx")
    np.testing.assert_array_equal(got, array)
    assert got.dtype == array.dtype and got.dtype.isnative
    assert not got.flags.writeable


@pytest.mark.parametrize("subfolder", [False, True])
@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_round_trips_exactly(tmp_path: Path, gz: bool, subfolder: bool) -> None:
    d = tmp_path / "data" / ("mnist" if subfolder else "")
    arrays = write_idx_set(d, n_train=6, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path / "data")
    train_x, train_y, test_x, test_y = arrays.values()
    np.testing.assert_array_equal(ds.train_images, train_x[..., None])
    np.testing.assert_array_equal(ds.train_labels, train_y)
    np.testing.assert_array_equal(ds.test_images, test_x[..., None])
    np.testing.assert_array_equal(ds.test_labels, test_y)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert (ds.name, ds.num_classes, ds.source) == ("mnist", 10, str(d))


@pytest.mark.parametrize("subfolder", [False, True])
@pytest.mark.parametrize("layout", ["folder", "flat", "archive"])
def test_load_cifar10_round_trips_exactly(tmp_path: Path, layout: str, subfolder: bool) -> None:
    base = tmp_path / "data"
    batches = write_cifar(base / "cifar10" if subfolder else base, layout)
    ds = load_dataset("cifar10", data_dir=base)
    train = list(batches.values())[:-1]
    train_data = np.concatenate([b[b"data"] for b in train])
    assert ds.train_images.shape == (len(train_data), 32, 32, 3)
    # Canonical layout: each row is 1024 red, then green, then blue values, row-major.
    i, h, w, c = 4, 5, 31, 2
    assert ds.train_images[i, h, w, c] == train_data[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(
        ds.train_images, train_data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    np.testing.assert_array_equal(ds.train_labels, sum((b[b"labels"] for b in train), []))
    test = batches["test_batch"]
    np.testing.assert_array_equal(
        ds.test_images, test[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    np.testing.assert_array_equal(ds.test_labels, test[b"labels"])
    assert ds.train_labels.dtype == np.int32 and ds.num_classes == 10


def test_dataset_is_immutable_but_replaceable(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=6)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="read-only"):
        ds.train_images[0, 0, 0, 0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "mnist"  # type: ignore[misc]
    small = dataclasses.replace(ds, train_labels=ds.train_labels[:2])
    assert len(small.train_labels) == 2 and "fashion-mnist" in repr(small)


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


_LABELS = idx_bytes(np.arange(6, dtype=np.uint8))
IDX_CORRUPTIONS: dict[str, Callable[[], bytes]] = {
    "bad gzip": lambda: b"\x1f\x8b" + b"garbage" * 5,
    "truncated gzip": lambda: _gz(_LABELS)[:-9],
    "gzip crc": lambda: _gz(_LABELS)[:-8] + b"\0" * 8,
    "bad magic": lambda: b"\x01\x02" + _LABELS[2:],
    "empty": lambda: b"",
    "unknown type code": lambda: _LABELS[:2] + b"\x07" + _LABELS[3:],
    "zero dims": lambda: b"\0\0\x08\0",
    "truncated header": lambda: _LABELS[:6],
    "truncated data": lambda: _LABELS[:-1],
    "trailing bytes": lambda: _LABELS + b"\0",
    "huge dims": lambda: b"\0\0\x08\x02" + b"\xff" * 8,
}


@pytest.mark.parametrize("case", sorted(IDX_CORRUPTIONS))
def test_read_idx_rejects_malformed_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(IDX_CORRUPTIONS[case]())
    with pytest.raises(ToolkitError) as excinfo:
        read_idx(path)
    assert_one_line_error(excinfo, str(path))


def test_read_idx_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError) as excinfo:
        read_idx(tmp_path / "absent.gz")
    assert_one_line_error(excinfo, "absent.gz")


IDX_SET_CORRUPTIONS = {
    # file to replace -> (its new contents, what the message says)
    "train-images-idx3-ubyte.gz": (idx_bytes(np.zeros(6, np.uint8)), "(N, 28, 28)"),
    "t10k-images-idx3-ubyte.gz": (idx_bytes(np.zeros((4, 27, 28), np.uint8)), "(N, 28, 28)"),
    "train-labels-idx1-ubyte.gz": (idx_bytes(np.zeros(5, np.uint8)), "5 labels for 6 images"),
    "t10k-labels-idx1-ubyte.gz": (idx_bytes(np.array([1, 2, 10, 3], np.uint8)), "label 10"),
}


@pytest.mark.parametrize("filename", sorted(IDX_SET_CORRUPTIONS))
def test_load_rejects_inconsistent_idx_set(tmp_path: Path, filename: str) -> None:
    write_idx_set(tmp_path, n_train=6)
    contents, needle = IDX_SET_CORRUPTIONS[filename]
    (tmp_path / filename).write_bytes(_gz(contents))
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    assert_one_line_error(excinfo, filename, needle)


def test_load_rejects_non_uint8_labels(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=6)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(_gz(idx_bytes(np.zeros(6, ">i4"))))
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    assert_one_line_error(excinfo, "train-labels-idx1-ubyte.gz", "int32")


def _bad_batch(**changes: object) -> bytes:
    batch = cifar_batch(np.random.default_rng(1), 3)
    batch.update({k.encode(): v for k, v in changes.items()})
    return pickle_batch(batch)


CIFAR_CORRUPTIONS: dict[str, Callable[[], bytes]] = {
    "not a pickle": lambda: b"hello, world",
    "truncated pickle": lambda: _bad_batch()[:-100],
    "empty": lambda: b"",
    "not a dict": lambda: pickle_batch([1, 2, 3]),
    "missing labels": lambda: pickle_batch({b"data": np.zeros((3, 3072), np.uint8)}),
    "str keys": lambda: pickle_batch({"data": np.zeros((3, 3072), np.uint8), "labels": [0] * 3}),
    "wrong width": lambda: _bad_batch(data=np.zeros((3, 3000), np.uint8)),
    "wrong dtype": lambda: _bad_batch(data=np.zeros((3, 3072), np.float32)),
    "data not array": lambda: _bad_batch(data=[[0] * 3072] * 3),
    "label count": lambda: _bad_batch(labels=[0, 1]),
    "label range": lambda: _bad_batch(labels=[0, 10, 1]),
    "negative label": lambda: _bad_batch(labels=[0, -1, 1]),
    "labels not ints": lambda: _bad_batch(labels=[b"a", b"b", b"c"]),
    "ragged labels": lambda: _bad_batch(labels=[[0], [1, 2], 3]),
    "foreign global": lambda: pickle.dumps(collections.OrderedDict(), protocol=2),
}


@pytest.mark.parametrize("layout", ["folder", "archive"])
@pytest.mark.parametrize("case", sorted(CIFAR_CORRUPTIONS))
def test_load_rejects_malformed_cifar_batch(tmp_path: Path, case: str, layout: str) -> None:
    write_cifar(tmp_path, layout, edit={"data_batch_3": CIFAR_CORRUPTIONS[case]()})
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path)
    assert_one_line_error(excinfo, "data_batch_3")


@pytest.mark.parametrize("case", ["garbage", "truncated", "missing member"])
def test_load_rejects_malformed_cifar_archive(tmp_path: Path, case: str) -> None:
    write_cifar(tmp_path, "archive")
    archive = tmp_path / "cifar-10-python.tar.gz"
    if case == "garbage":
        archive.write_bytes(b"\x1f\x8b not really")
    elif case == "truncated":
        archive.write_bytes(archive.read_bytes()[:2000])
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.addfile(tarfile.TarInfo("cifar-10-batches-py/readme"), io.BytesIO())
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path)
    assert_one_line_error(excinfo, "cifar-10-python.tar.gz")


def test_lookup_order_data_dir_env_cache_system(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = {
        "data_dir": tmp_path / "arg",
        "env": tmp_path / "env",
        "cache": isolated / "mnist",
        "system": tmp_path / "system",
    }
    for n_train, d in enumerate(dirs.values(), start=1):
        write_idx_set(d, n_train=n_train)  # the train size tells the sets apart
    trust(monkeypatch, "mnist", dirs["cache"])
    monkeypatch.setenv(datafiles.ENV_VAR, str(dirs["env"]))
    monkeypatch.setattr(datafiles, "_SYSTEM_DIRS", {"mnist": (str(dirs["system"]),)})

    def found_in(**kwargs: object) -> str:
        ds = load_dataset("mnist", download=False, **kwargs)
        place = next(k for k, d in dirs.items() if str(d) == ds.source)
        assert len(ds.train_labels) == list(dirs).index(place) + 1
        return place

    assert found_in(data_dir=dirs["data_dir"]) == "data_dir"
    assert found_in() == "env"
    monkeypatch.delenv(datafiles.ENV_VAR)
    assert found_in() == "cache"
    for f in dirs["cache"].iterdir():
        f.unlink()
    assert found_in() == "system"


@pytest.mark.parametrize("argument", ["data_dir", datafiles.ENV_VAR])
def test_missing_search_directory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argument: str
) -> None:
    missing = tmp_path / "typo"
    kwargs = {"data_dir": missing} if argument == "data_dir" else {}
    if argument == datafiles.ENV_VAR:
        monkeypatch.setenv(datafiles.ENV_VAR, str(missing))
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("mnist", **kwargs)
    assert_one_line_error(excinfo, f"{argument}={missing}")


def test_partial_set_names_the_missing_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=6)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "t10k-labels-idx1-ubyte.gz")


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("svhn")
    assert_one_line_error(excinfo, "'svhn'", "mnist, fashion-mnist, cifar10")


@pytest.mark.parametrize("name", DATASETS)
def test_download_disabled_says_where_it_looked_and_how_to_get_files(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(datafiles, "_BASE_URL", _REAL_URLS)
    monkeypatch.setenv(datafiles.ENV_VAR, str(tmp_path))
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset(name, download=False)
    needles = [f"TOOLKIT_DATA_DIR={tmp_path}", str(isolated), "download=False", "--data-dir"]
    needles += [_REAL_URLS[name], *datafiles._SHA256[name]]
    if name == "fashion-mnist":
        needles.append("apt install dataset-fashion-mnist")
    assert_one_line_error(excinfo, *needles)
    assert not isolated.exists()


def test_failed_download_is_one_helpful_line_and_leaves_no_cache(isolated: Path) -> None:
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("fashion-mnist")
    assert_one_line_error(excinfo, "downloading", "train-images-idx3-ubyte.gz", "apt install")
    assert not isolated.exists()


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local directory that the download URLs point at."""
    d = tmp_path / "mirror"
    d.mkdir()
    monkeypatch.setattr(datafiles, "_BASE_URL", dict.fromkeys(DATASETS, d.as_uri() + "/"))
    return d


@pytest.mark.parametrize("name", DATASETS)
def test_download_verifies_and_moves_into_cache(
    mirror: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    if name == "cifar10":
        write_cifar(mirror, "archive")
    else:
        write_idx_set(mirror, n_train=6)
    trust(monkeypatch, name, mirror)
    ds = load_dataset(name)
    cached = isolated / name
    assert ds.source == str(cached)
    assert sorted(p.name for p in cached.iterdir()) == sorted(datafiles._SHA256[name])
    for f in datafiles._SHA256[name]:
        assert (cached / f).read_bytes() == (mirror / f).read_bytes()
    again = load_dataset(name, download=False)
    np.testing.assert_array_equal(again.test_images, ds.test_images)


def test_download_with_bad_checksum_saves_nothing(
    mirror: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx_set(mirror, n_train=6)
    monkeypatch.setitem(datafiles._SHA256, "mnist", dict.fromkeys(IDX_FILES, ("0" * 64,)))
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("mnist")
    assert_one_line_error(excinfo, "SHA-256", "train-images-idx3-ubyte.gz", "0" * 64)
    assert list((isolated / "mnist").iterdir()) == []


def test_download_completes_a_partial_cache(
    mirror: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx_set(mirror, n_train=6)
    trust(monkeypatch, "mnist", mirror)
    (isolated / "mnist").mkdir(parents=True)
    (isolated / "mnist" / IDX_FILES[0]).write_bytes((mirror / IDX_FILES[0]).read_bytes())
    assert load_dataset("mnist").train_images.shape == (6, 28, 28, 1)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_cache_files_are_checksummed_on_load(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    def write(seed: int) -> None:  # same shapes, other bytes
        if name == "cifar10":
            write_cifar(isolated / name, "archive", seed=seed)
        else:
            write_idx_set(isolated / name, n_train=6, seed=seed)

    write(0)
    trust(monkeypatch, name, isolated / name)
    write(1)
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset(name, download=False)
    first = next(iter(datafiles._SHA256[name]))
    assert_one_line_error(excinfo, str(isolated / name / first), "SHA-256")
    assert load_dataset(name, download=False, verify=False).num_classes == 10


def test_user_files_are_checksummed_only_when_asked(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "gz", n_train=6)
    write_idx_set(tmp_path / "raw", n_train=6, gz=False)
    assert load_dataset("mnist", data_dir=tmp_path / "gz").num_classes == 10
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path / "gz", verify=True)
    assert_one_line_error(excinfo, "SHA-256", "does not match")
    with pytest.raises(ToolkitError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path / "raw", verify=True)
    assert_one_line_error(excinfo, "no published SHA-256", "verify=False")


def test_to_float_divides_by_255_only() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = to_float(pixels)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, pixels.astype(np.float32) / np.float32(255))
    assert got.min() == 0.0 and got.max() == 1.0
    with pytest.raises(ToolkitError, match="uint8"):
        to_float(got)


@pytest.mark.skipif(
    not REAL_FASHION.is_dir(), reason=f"{REAL_FASHION} absent (dataset-fashion-mnist)"
)
def test_real_fashion_mnist_from_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datafiles, "_SYSTEM_DIRS", _SYSTEM_DIRS)
    ds = load_dataset("fashion-mnist", download=False, verify=True)
    assert ds.source == str(REAL_FASHION)
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (
        10000,
        28,
        28,
        1,
    )
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), [1000] * 10)


_VALID_IDX = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
_hypothesis = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def corrupted(draw: st.DrawFn, valid: bytes) -> bytes:
    blob = bytearray(valid[: draw(st.integers(0, len(valid)))])
    for _ in range(draw(st.integers(0, 3))):
        if blob:
            blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    return bytes(blob)


@_hypothesis
@given(blob=st.one_of(corrupted(_VALID_IDX), corrupted(_gz(_VALID_IDX))))
def test_corrupt_idx_only_ever_raises_toolkit_error(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.gz"
    path.write_bytes(blob)
    try:
        read_idx(path)
    except ToolkitError as e:
        assert "\n" not in str(e) and str(path) in str(e)


@_hypothesis
@given(blob=corrupted(_bad_batch()))
def test_corrupt_cifar_batch_only_ever_raises_toolkit_error(tmp_path: Path, blob: bytes) -> None:
    write_cifar(tmp_path, "flat", edit={"test_batch": blob})
    try:
        load_dataset("cifar10", data_dir=tmp_path)
    except ToolkitError as e:
        assert "\n" not in str(e) and "test_batch" in str(e)


def test_locate_returns_the_files_in_layout_order_with_the_checks_to_make(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx_set(tmp_path / "user", n_train=6)
    files = datafiles.locate("mnist", data_dir=tmp_path / "user")
    assert [p.name for p in files.paths] == IDX_FILES
    assert (files.source, files.check, files.strict) == (str(tmp_path / "user"), False, False)
    assert datafiles.locate("mnist", data_dir=tmp_path / "user", verify=True).strict
    write_cifar(isolated / "cifar10", "flat")
    files = datafiles.locate("cifar10", download=False)
    assert [p.name for p in files.paths] == list(datafiles.CIFAR_BATCHES)
    assert files.paths[-1].name == "test_batch" and files.check and not files.strict


def test_data_keeps_its_public_names() -> None:
    assert data.DATASETS is datafiles.DATASETS == ("mnist", "fashion-mnist", "cifar10")
    assert data.ENV_VAR == datafiles.ENV_VAR == "TOOLKIT_DATA_DIR"
    assert {"Dataset", "load_dataset", "read_idx", "to_float"} <= set(data.__all__)
