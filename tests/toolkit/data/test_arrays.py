"""Tests for toolkit.data._arrays: a user's data set from one .npz or .csv file.

Values are compared exactly (`np.testing.assert_array_equal`, no tolerance): the loader
only reads and casts integer-valued labels, so any difference is a bug. Every refusal is
a `ToolkitError` with a one-line message (the CLI prints it as the whole error).
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import numpy as np
import pytest

from toolkit.base import ToolkitError
from toolkit.data import FORMATS, ArrayData, load_arrays


def _refused(path: Path, *needles: str) -> str:
    """The one-line message of the ToolkitError that loading `path` raises."""
    with pytest.raises(ToolkitError) as e:
        load_arrays(path)
    message = str(e.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def _npz(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.fixture
def images() -> tuple[np.ndarray, np.ndarray]:
    """Six 4x4x1 uint8 images and labels 0..2, drawn from a fixed seed."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 4, 4, 1), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2])


def test_formats_are_npz_and_csv():
    assert FORMATS == (".npz", ".csv")


# --- .npz ------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", [np.uint8, np.int16, np.float16, np.float32, np.float64])
def test_npz_round_trips_x_exactly_in_its_dtype(tmp_path, images, x_dtype):
    x, y = images[0].astype(x_dtype), images[1]
    data = load_arrays(_npz(tmp_path, x=x, y=y))
    assert isinstance(data, ArrayData)
    # Catches: a float cast of x (uint8 images must stay uint8; `to_float` scales them
    # where a model needs it), or any reshaping or reordering of the examples.
    assert data.x.dtype == x_dtype
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    assert data.test is None
    assert data.path == str(tmp_path / "data.npz")


@pytest.mark.parametrize("y_dtype", [np.uint8, np.int64, np.uint32, np.bool_])
def test_npz_labels_are_returned_as_int32(tmp_path, images, y_dtype):
    x, y = images[0], (images[1] % 2).astype(y_dtype)
    data = load_arrays(_npz(tmp_path, x=x, y=y))
    # Catches: returning labels in their stored dtype (int64 labels into a jit step
    # under strict promotion, or bool labels that cannot index a one-hot).
    assert data.y.dtype == np.int32
    np.testing.assert_array_equal(data.y, y.astype(np.int64))
    np.testing.assert_array_equal(data.classes, [0, 1])


def test_npz_negative_integer_labels_are_kept(tmp_path, images):
    y = np.array([-1, 1, -1, 1, 1, -1])  # {-1, +1}: a binary data set as bound-check reads
    data = load_arrays(_npz(tmp_path, x=images[0], y=y))
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_array_equal(data.classes, [-1, 1])


def test_npz_with_a_test_split(tmp_path, images):
    x, y = images
    x_test, y_test = x[:2] + 1, np.array([2, 1], dtype=np.float32)
    data = load_arrays(_npz(tmp_path, x=x, y=y, x_test=x_test, y_test=y_test, extra=x))
    assert data.test is not None
    tx, ty = data.test
    # Catches: swapping the splits, dropping the test split, or not casting its labels.
    assert tx.dtype == np.uint8 and ty.dtype == np.int32
    np.testing.assert_array_equal(tx, x_test)
    np.testing.assert_array_equal(ty, [2, 1])
    np.testing.assert_array_equal(data.x, x)


def test_npz_float_labels_with_integer_values_are_accepted(tmp_path, images):
    y = np.array([0.0, 1.0, 2.0, 9.0, -0.0, 3.0], dtype=np.float64)
    data = load_arrays(_npz(tmp_path, x=images[0], y=y))
    # Catches: refusing every float label (a CSV's labels are always read as floats).
    assert data.y.dtype == np.int32
    np.testing.assert_array_equal(data.y, [0, 1, 2, 9, 0, 3])


@pytest.mark.parametrize("bad", [0.5, 2.0000001, np.nan, np.inf])
def test_npz_non_integer_float_labels_are_refused(tmp_path, images, bad):
    y = np.array([0.0, 1.0, bad, 0.0, 1.0, 2.0])
    # Catches: `astype(int32)` truncating 0.5 to class 0 (or NaN to INT_MIN) silently.
    _refused(_npz(tmp_path, x=images[0], y=y), "data.npz", "y holds non-integer labels")


def test_npz_non_integer_test_labels_are_refused_by_name(tmp_path, images):
    x, y = images
    path = _npz(tmp_path, x=x, y=y, x_test=x[:2], y_test=np.array([0.0, 0.25]))
    # Catches: validating the labels of the training split only.
    _refused(path, "y_test holds non-integer labels")


def test_npz_labels_outside_int32_are_refused(tmp_path, images):
    y = np.array([0, 1, 2**31, 0, 1, 2], dtype=np.int64)
    # Catches: a wrap-around cast (2**31 -> -2**31) that makes a new, wrong class.
    _refused(_npz(tmp_path, x=images[0], y=y), "outside int32")


@pytest.mark.parametrize("name", ["x", "x_test"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_nan_or_inf_inputs_are_refused(tmp_path, images, name, bad):
    x, y = images[0].astype(np.float32), images[1]
    arrays = {"x": x, "y": y, "x_test": x[:2].copy(), "y_test": y[:2]}
    arrays[name][1, 2, 3, 0] = bad
    # Catches: a check on the training inputs only, or on NaN but not inf.
    _refused(_npz(tmp_path, **arrays), f"{name} holds NaN or inf")


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"y": np.zeros(3)}, "no array 'x'"),
        ({"x": np.zeros((3, 2))}, "no array 'y'"),
        ({"inputs": np.zeros((3, 2)), "labels": np.zeros(3)}, "no array 'x' or 'y'"),
    ],
)
def test_npz_missing_x_or_y_is_named(tmp_path, arrays, needle):
    message = _refused(_npz(tmp_path, **arrays), needle)
    # Catches: a KeyError from `f["x"]`; the message lists what the file does hold.
    assert all(k in message for k in arrays)


@pytest.mark.parametrize("only", ["x_test", "y_test"])
def test_npz_only_one_of_the_test_pair_is_refused(tmp_path, images, only):
    x, y = images
    one = {"x_test": x[:2], "y_test": y[:2]}[only]
    # Catches: silently ignoring a lone x_test (the run would evaluate on the training
    # data's usual fallback instead of the split the user meant).
    _refused(_npz(tmp_path, x=x, y=y, **{only: one}), "give both x_test and y_test")


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"x": np.zeros((3, 2)), "y": np.zeros(4)}, "x (3, 2) and y (4,)"),  # lengths differ
        ({"x": np.zeros(3), "y": np.zeros(3)}, "x (3,) and y (3,)"),  # no feature axis
        ({"x": np.zeros((0, 2)), "y": np.zeros(0)}, "x (0, 2) and y (0,)"),  # no examples
        ({"x": np.zeros((3, 2)), "y": np.zeros((3, 1))}, "y has shape (3, 1)"),  # 2-D labels
    ],
)
def test_npz_inconsistent_shapes_are_refused(tmp_path, arrays, needle):
    _refused(_npz(tmp_path, **arrays), needle)


def test_npz_test_split_with_another_example_shape_is_refused(tmp_path, images):
    x, y = images
    path = _npz(tmp_path, x=x, y=y, x_test=np.zeros((2, 4, 5, 1)), y_test=y[:2])
    _refused(path, "x_test has example shape (4, 5, 1), x has (4, 4, 1)")


def test_npz_non_numeric_arrays_are_refused(tmp_path):
    path = _npz(tmp_path, x=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    _refused(path, "array 'x' has dtype <U1")


class _Payload:
    """Unpickling this creates `marker`: proof that the loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    x = np.empty((2, 1), dtype=object)
    x[0, 0], x[1, 0] = _Payload(marker), _Payload(marker)
    path = _npz(tmp_path, x=x, y=np.array([0, 1]))
    message = _refused(path, "data.npz is not a readable .npz file")
    assert "Object arrays cannot be loaded" in message
    # Catches: `allow_pickle=True`, which runs the file's code (here: touches a file).
    assert not marker.exists()
    # The payload does run when unpickled, so the assertion above can fail.
    with np.load(path, allow_pickle=True) as f:
        f["x"]
    assert marker.exists()


def test_corrupt_npz_is_a_one_line_error(tmp_path):
    path = tmp_path / "random.npz"
    blob = np.random.default_rng(1).bytes(4096)
    # Neither a zip ("PK") nor a .npy (b"\x93NUMPY"): np.load reads it as a pickle, refused.
    assert not blob.startswith((b"PK", b"\x93NUMPY"))
    path.write_bytes(blob)
    _refused(path, "random.npz is not a readable .npz file")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04" + b"\x00" * 64])
def test_empty_or_truncated_zip_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    # Catches: letting EOFError / zipfile.BadZipFile through (both are raised by np.load).
    _refused(path, "broken.npz is not a readable .npz file")


def test_empty_zip_archive_is_read_and_refused_for_its_missing_arrays(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # a valid zip with no members
    _refused(path, "empty.npz has no array 'x' or 'y' (it holds [])")


def test_npz_suffix_is_case_insensitive(tmp_path, images):
    path = _npz(tmp_path, x=images[0], y=images[1]).rename(tmp_path / "DATA.NPZ")
    np.testing.assert_array_equal(load_arrays(path).x, images[0])


# --- .csv ------------------------------------------------------------------------------------


def test_csv_without_header_puts_the_label_last(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("0.5,-1,2e-3,1\n3,4,5,0\n\n6.25,7,8,2\n")  # a blank line is skipped
    data = load_arrays(path)
    # Catches: taking the first column as the label, or dropping the first data row as
    # a header when it is numeric.
    np.testing.assert_array_equal(data.x, [[0.5, -1, 2e-3], [3, 4, 5], [6.25, 7, 8]])
    assert data.x.dtype == np.float64
    np.testing.assert_array_equal(data.y, [1, 0, 2])
    assert data.y.dtype == np.int32
    assert data.test is None


def test_csv_with_header_skips_it(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("height,weight,label\n1.5,60,1\n1.8,80,0\n")
    data = load_arrays(path)
    # Catches: a header read as a data row (a ValueError) or the first data row dropped.
    np.testing.assert_array_equal(data.x, [[1.5, 60], [1.8, 80]])
    np.testing.assert_array_equal(data.y, [1, 0])


def test_csv_ragged_rows_are_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,3,0\n4,5,1\n")
    # Catches: np.asarray of ragged rows (an object array or a numpy ValueError).
    _refused(path, "data.csv", "same number (>= 2) of columns")


def test_csv_of_one_column_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("0\n1\n")
    # Catches: inputs with zero features (labels only).
    _refused(path, "same number (>= 2) of columns")


def test_csv_non_numeric_row_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,0\n3,4,1\n5,oops,1\n")
    # Catches: a bare ValueError from float("oops"), or a message that does not say where.
    _refused(path, "data.csv: row 3 ('5,oops,1') is not all numbers")


def test_csv_non_integer_label_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,0\n3,4,0.5\n")
    _refused(path, "y holds non-integer labels")


def test_csv_nan_feature_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,0\n3,nan,1\n")  # float("nan") parses: the NaN check must catch it
    _refused(path, "x holds NaN or inf")


@pytest.mark.parametrize("content", ["", "\n\n", "a,b,label\n"])
def test_csv_without_data_rows_is_refused(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_text(content)
    _refused(path, "has no data rows")


def test_csv_that_is_not_text_is_a_one_line_error(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xff\xfe\x00\x81,1\n")
    _refused(path, "data.csv is not a readable text file")


# --- the path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["data.txt", "data.npy", "data"])
def test_unknown_suffix_names_the_data_option(tmp_path, name):
    path = tmp_path / name
    path.write_text("1,2,0\n")
    # Catches: guessing a format from the contents (a .txt read as CSV, a .npy via np.load).
    message = _refused(path, f"--data={str(path)!r}: unknown format", ".npz, .csv")
    assert message.startswith("--data=")


def test_missing_file_names_the_data_option(tmp_path):
    path = tmp_path / "absent.npz"
    # Catches: a FileNotFoundError traceback from np.load.
    _refused(path, f"--data={str(path)!r} is not a file")


def test_a_directory_is_not_a_file(tmp_path):
    path = tmp_path / "folder.csv"
    path.mkdir()
    _refused(path, "is not a file")


def test_repr_names_path_and_shapes(tmp_path, images):
    x, y = images
    data = load_arrays(_npz(tmp_path, x=x, y=y, x_test=x[:2], y_test=y[:2]))
    # The repr must not print the arrays (a large data set in a log line or a traceback).
    assert (
        repr(data)
        == f"ArrayData({str(tmp_path / 'data.npz')!r}, x=(6, 4, 4, 1), test=(2, 4, 4, 1))"
    )


# --- files that are not what their name says, and numbers that are not real ---------------


def test_npy_contents_under_an_npz_name_is_a_one_line_error(tmp_path):
    path = tmp_path / "data.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros((3, 2)))  # a .npy file, named .npz
    _refused(path, "data.npz")


@pytest.mark.parametrize("name", ["x", "y"])
def test_npz_complex_arrays_are_refused(tmp_path, name):
    arrays = {"x": np.zeros((3, 2)), "y": np.array([0, 1, 2])}
    arrays[name] = arrays[name].astype(np.complex64)
    _refused(_npz(tmp_path, **arrays), f"array {name!r} has dtype complex64")
