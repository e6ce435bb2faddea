"""The tables of `toolkit bias` (OUT.md) from made-up results: every point with its
interval, and paired differences only between runs of other labels and the same seed,
measured on the same examples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments import bias_tables
from tests.experiments.test_bias_plots import _result


def test_point_table_has_every_point_with_its_interval(tmp_path):
    a = _result(tmp_path, "relu-s0", "relu", 0, shift=0.05)
    table = bias_tables.point_table([a])
    rows = [r for r in table.splitlines() if r.startswith("| relu-s0")]
    assert len(rows) == 3  # epochs 0, 2, 4
    p = a.points[1]
    lo, hi = p.ci["fraction_clipped"]
    assert f"| 2 | 0.1 | {p.fraction_clipped:.3g} [{lo:.3g}, {hi:.3g}]" in rows[1]


def test_differences_pair_other_labels_of_the_same_seed_on_the_same_examples(tmp_path):
    """relu - tanh at seed 0: estimate and the interval of the replicate differences
    (both runs' replicates are value + the same spread, so the differences are constant
    and the interval has zero width); seed 1's tanh is not paired with seed 0's relu, and
    a run measured on other examples is left out."""
    relu = _result(tmp_path, "relu-s0", "relu", 0, shift=0.05)
    tanh = _result(tmp_path, "tanh-s0", "tanh", 0)
    other_seed = _result(tmp_path, "tanh-s1", "tanh", 1)
    other_examples = dataclasses.replace(_result(tmp_path, "elu-s0", "elu", 0), examples="y")
    table = bias_tables.difference_table([relu, tanh, other_seed, other_examples])
    rows = [r for r in table.splitlines()[2:]]
    assert len(rows) == 3
    assert all("relu-s0 (relu, DP-SGD, C=0.1, seed 0) - tanh-s0" in r for r in rows)
    d = relu.points[2].fraction_clipped - tanh.points[2].fraction_clipped
    assert np.isclose(d, 0.05)
    assert f"| 4 | {d:.3g} [{d:.3g}, {d:.3g}]" in rows[2]
    assert bias_tables.difference_table([relu, other_seed]) == ""


@pytest.mark.parametrize("with_pairs", [True, False])
def test_report_says_what_the_numbers_are(tmp_path, with_pairs):
    runs = [_result(tmp_path, "relu-s0", "relu", 0)]
    if with_pairs:
        runs.append(_result(tmp_path, "tanh-s0", "tanh", 0))
    text = bias_tables.report(runs)
    assert "not covered by eps" in text
    assert ("Paired differences" in text) == with_pairs
