"""`bound-check --data` and `analysis.check_datasets`: the theory checks on a user's data set.

The data set is real: T-shirts (label 0) against trousers (label 1) from the Fashion-MNIST
training set, 60 of each, every fourth pixel (7 x 7, d = 49, so that the tests take seconds).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis import datasets, suite, theorem1
from analysis.datasets import Dataset, from_arrays
from analysis.precision import EPS
from toolkit.base import ToolkitError
from toolkit.cli import app
from toolkit.data import load_dataset

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not REAL_FASHION.is_dir(), reason=f"{REAL_FASHION} absent (dataset-fashion-mnist)"
)
runner = CliRunner()
# A 2 x 2 grid: T > C at (4, 0.5) and (1, 0.5), no clipping possible at C = 8 >= T.
GRID = ["--temperatures", "1,4", "--clip-norms", "0.5,8", "--quick"]
SKIPPED = [
    "5 tightness search",
    "6 conservativeness",
    "7 sharp constant",
    "9 noisy clipped GD",
    "10 multiclass",
]


@pytest.fixture(scope="module")
def tshirt_trouser() -> tuple[np.ndarray, np.ndarray]:
    fm = load_dataset("fashion-mnist", data_dir=REAL_FASHION, download=False)
    labels = fm.train_labels
    idx = np.concatenate([np.flatnonzero(labels == c)[:60] for c in (0, 1)])
    return fm.train_images[idx, ::4, ::4, 0], labels[idx]


@pytest.fixture(scope="module")
def data_file(tshirt_trouser, tmp_path_factory) -> Path:
    """The slice with its own labels {0, 1}, as a user's .npz."""
    x, y = tshirt_trouser
    path = tmp_path_factory.mktemp("zero-one") / "tshirt_trouser.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def records(tshirt_trouser, data_file, tmp_path_factory) -> dict:
    """One `bound-check --data` run per label encoding: {0, 1} and {-1, +1}, same file stem."""
    x, y = tshirt_trouser
    pm = tmp_path_factory.mktemp("plus-minus") / "tshirt_trouser.npz"
    np.savez(pm, x=x, y=np.where(y == 1, 1, -1))
    out = {}
    for key, path in (("01", data_file), ("pm1", pm)):
        json_path = path.parent / "record.json"
        result = runner.invoke(app, ["bound-check", "--data", str(path), *GRID, "--json",
                                     str(json_path)])  # fmt: skip
        out[key] = (path, result, json.loads(json_path.read_text()))
    return out


def test_bound_check_on_real_data_passes_and_records_file_n_d_scaling_labels(
    records, tshirt_trouser
):
    path, result, record = records["01"]
    assert result.exit_code == 0, result.output
    assert "all checks pass" in result.stdout and "Skipped" in result.stdout
    assert all(name in result.stdout for name in SKIPPED)

    x, _ = tshirt_trouser
    (data,) = record["config"]["data"]
    assert (data["source"], data["n"], data["d"]) == (str(path), 120, 49)
    assert data["example_shape"] == [7, 7]
    assert data["label_map"] == {"0": -1, "1": 1}
    assert data["class_counts"] == {"-1": 60, "+1": 60}
    assert data["scaling"] == datasets.SCALING
    # The same float64 norm as the record's (JSON keeps every digit): round-off only.
    largest = np.linalg.norm(x.reshape(120, -1).astype(np.float64), axis=1).max()
    assert data["scale"] == pytest.approx(largest, rel=4 * EPS)
    assert data["max_norm"] == pytest.approx(1.0, abs=4 * EPS)
    assert record["config"]["n"] is None and record["config"]["dim"] is None

    assert record["passed"] is True and all(c["passed"] for c in record["checks"])
    names = [c["name"] for c in record["checks"]]
    assert "Thm 1: PGD vs scipy SLSQP, |diff|" in names  # d = 49 <= SCIPY_MAX_DIM
    assert "Thm 1: Frank-Wolfe gap/(4R||G||)" in names
    assert [s["name"] for s in record["skipped"]] == SKIPPED
    assert all(len(s["reason"]) > 20 for s in record["skipped"])

    cells = {(c["inverse_temp"], c["clip_norm"]): c for c in record["theorem1_grid"]}
    assert sorted(cells) == [(1.0, 0.5), (1.0, 8.0), (4.0, 0.5), (4.0, 8.0)]
    for (t, c), cell in cells.items():
        # The bound from its definition, 2 max(T - C, 0) times the diameter 2R, exactly.
        assert cell["bound"] == 2 * max(t - c, 0.0) * 2 * cell["radius"]
        # Theorem 1 two-sided, each end within its certificate (<= 2R 1e-10).
        assert -cell["cert_unclipped"] <= cell["excess"] <= cell["bound"] + cell["cert_clipped"]
        # Proved in analysis.theorem1: excess <= G < bound / 4.
        assert cell["excess"] <= cell["sharpened"] + cell["cert_clipped"]
        if c >= t * cell["max_norm"]:  # no gradient reaches C: no clipping, no bias
            assert not cell["ever_clipped"]
            assert abs(cell["excess"]) <= cell["cert_clipped"] + cell["cert_unclipped"]
    # Not vacuous: at T = 4, C = 0.5 clipping fires and the bias is far above round-off
    # and the certificates (measured 9.3e-4 on this slice).
    assert cells[(4.0, 0.5)]["ever_clipped"] and cells[(4.0, 0.5)]["excess"] > 1e-5


def test_labels_01_and_pm1_give_identical_results(records):
    (path01, result01, rec01), (path_pm, result_pm, rec_pm) = records["01"], records["pm1"]
    assert result01.exit_code == result_pm.exit_code == 0
    assert rec_pm["config"]["data"][0]["label_map"] == {"-1": -1, "1": 1}
    # Both files become the same (z, y) bit for bit...
    a, b = datasets.from_file(path01), datasets.from_file(path_pm)
    assert np.array_equal(a.z, b.z) and np.array_equal(a.y, b.y)

    # ...so every number of the two records is identical (no tolerance: the same float64
    # inputs through the same deterministic CPU computation), all but the file's own
    # description and the timings.
    def comparable(record: dict) -> dict:
        record = json.loads(json.dumps(record))
        for key in ("source", "label_map"):
            del record["config"]["data"][0][key]
        del record["seconds"]
        return record

    assert comparable(rec01) == comparable(rec_pm)


def test_a_wrong_bound_is_reported_as_a_violation(monkeypatch, data_file, tmp_path):
    # A planted sign error, max(C - T, 0): the bound is 0 wherever T > C, while the
    # measured excess on this data is ~1e-3 there, far above the certificates.
    def wrong_bound(inverse_temp: float, clip_norm: float, radius: float) -> float:
        return 2.0 * max(clip_norm - inverse_temp, 0.0) * 2.0 * radius

    monkeypatch.setattr(theorem1, "paper_bound", wrong_bound)
    out = tmp_path / "record.json"
    result = runner.invoke(app, ["bound-check", "--data", str(data_file), "--temperatures", "4",
                                 "--clip-norms", "0.5", "--quick", "--json", str(out)])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout
    record = json.loads(out.read_text())
    failed = {c["name"] for c in record["checks"] if not c["passed"]}
    assert record["passed"] is False
    assert {"Thm 1: max excess/(4R max(T-C,0))", "Thm 1: bound vs 2(T-C)+ diam(Theta)"} <= failed
    (cell,) = record["theorem1_grid"]
    assert cell["bound"] == 0.0 and cell["excess"] > 1e-5 > cell["cert_clipped"]


def test_a_scaling_that_breaks_unit_norm_is_refused(tshirt_trouser):
    mine = from_arrays(*tshirt_trouser, name="mine")
    unscaled = Dataset(name="twice", z=2.0 * mine.z, y=mine.y)  # max ||z_i|| = 2
    with pytest.raises(ToolkitError, match=r"max \|\|z_i\|\| = 2; Theorem 1 needs"):
        suite.check_datasets([unscaled], temperatures=(4.0,), clip_norms=(0.5,))


@pytest.mark.parametrize(
    "labels, needles",
    [
        ([0, 1, 2], ["{0, 1, 2}", "(3 classes)"]),
        ([1, 2], ["{1, 2}", "(2 classes)"]),
        ([-1, 0, 1], ["{-1, 0, 1}", "(3 classes)"]),
        ([1], ["{1}", "(1 classes)"]),
    ],
    ids=["three-classes", "other-values", "mixed-encodings", "one-class"],
)
def test_labels_that_are_not_binary_exit_2_naming_data(tshirt_trouser, tmp_path, labels, needles):
    x, _ = tshirt_trouser
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=np.resize(labels, len(x)))
    _assert_input_error(tmp_path, ["--data", str(path)], [f"--data={path}", *needles,
                                                          "{0, 1} or {-1, +1}"])  # fmt: skip


def test_missing_data_file_exits_2(tmp_path):
    missing = tmp_path / "none.npz"
    _assert_input_error(tmp_path, ["--data", str(missing)], ["--data=", "is not a file"])


@pytest.mark.parametrize("option", [["--n", "16"], ["--dim", "3"]], ids=["n", "dim"])
def test_data_with_a_synthetic_option_exits_2(data_file, tmp_path, option):
    given = f"{option[0]}={option[1]}"
    _assert_input_error(tmp_path, ["--data", str(data_file), *option], [given, "with --data"])


def _assert_input_error(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    """Exit 2, one `error:` line holding every needle, and no --json / --plot file written."""
    out = tmp_path / "out"
    out.mkdir()
    result = runner.invoke(app, ["bound-check", *args, "--quick", "--json", str(out / "r.json"),
                                 "--plot", str(out / "fig")])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in result.output and list(out.iterdir()) == []


def test_above_scipy_max_dim_slsqp_is_skipped_with_its_reason(monkeypatch, tshirt_trouser):
    monkeypatch.setattr(theorem1, "SCIPY_MAX_DIM", 40)  # the slice has d = 49
    mine = from_arrays(*tshirt_trouser, name="mine")
    result = suite.check_datasets([mine], temperatures=(4.0,), clip_norms=(0.5,), quick=True)
    assert result.passed
    names = [c.name for c in result.checks]
    assert not any("SLSQP" in name for name in names)
    skip = result.skipped[0]
    assert skip.name == "Thm 1: PGD vs scipy SLSQP" and "d = 49 > 40" in skip.reason
    # The Frank-Wolfe gap still certifies both runs: <= 4R ||G|| (solvers.frank_wolfe_gap).
    (fw,) = [c for c in result.checks if c.name.startswith("Thm 1: Frank-Wolfe")]
    assert fw.passed and fw.value <= 1.0


def test_from_arrays_flattens_divides_by_the_largest_norm_and_maps_labels():
    x = np.arange(16, dtype=np.uint8).reshape(4, 2, 2)
    mine = from_arrays(x, np.array([0, 1, 1, 0]), name="tiny")
    flat = x.reshape(4, 4).astype(np.float64)
    scale = np.linalg.norm(flat[3])  # the largest row
    assert mine.z.shape == (4, 4) and mine.z.dtype == np.float64
    # One division per entry: within an ulp of x / scale.
    np.testing.assert_allclose(mine.z, flat / scale, rtol=2 * EPS, atol=0)
    assert mine.max_norm == pytest.approx(1.0, abs=2 * EPS) and mine.max_norm <= 1.0
    np.testing.assert_array_equal(mine.y, [-1.0, 1.0, 1.0, -1.0])
    assert mine.prepared.example_shape == (2, 2) and mine.prepared.scale == scale
    # Booleans are {0, 1}; {-1, +1} is kept as it is.
    assert from_arrays(x, np.array([False, True, True, False]), name="b").y.tolist() == [
        -1.0, 1.0, 1.0, -1.0,
    ]  # fmt: skip
    assert from_arrays(x, np.array([1, -1, -1, 1]), name="c").y.tolist() == [1, -1, -1, 1]


@pytest.mark.parametrize(
    "x, y, needle",
    [
        (np.ones((3, 2)), np.array([0.0, 1.0, 0.5]), "{0, 0.5, 1} (3 classes)"),
        (np.array([[1.0, math.nan], [1.0, 2.0]]), np.array([0, 1]), "NaN or inf"),
        (np.zeros((2, 3)), np.array([0, 1]), "largest example norm is 0"),
        (np.ones(3), np.array([0, 1, 1]), "one example per row"),
        (np.ones((1, 3)), np.array([1]), "at least 2 examples"),
    ],
    ids=["fractional-label", "nan", "all-zero", "1-d-x", "one-example"],
)
def test_from_arrays_errors_name_the_dataset_and_the_value(x, y, needle):
    with pytest.raises(ToolkitError, match="dataset 'mine'") as info:
        from_arrays(x, y, name="mine")
    assert needle in str(info.value) and "\n" not in str(info.value)
