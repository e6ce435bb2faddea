"""The figures and printed lines of `toolkit bias`, from made-up results: what each panel
draws (values, colours by label, line styles by seed, bootstrap bands), the relation to
each run's test accuracy read from its summary.json, and runs without noise."""

from __future__ import annotations

import math
import warnings

import matplotlib.colors as mcolors
import numpy as np
import pytest

from experiments import bias_plots
from experiments.records import RunSkipped
from toolkit.runs import RunSummary, rundir
from toolkit.studies import BOOTSTRAPPED, BiasPoint, LayerBias, RunBias

EPOCHS = (0, 2, 4)


def _point(epoch: int, shift: float, *, noise: bool = True) -> BiasPoint:
    """Values that differ by epoch and run; R = 5 replicates spread around each value."""
    values = dict(
        cosine=0.9 - 0.1 * epoch - shift, norm_ratio=0.5 + shift,
        fraction_clipped=0.9 - 0.1 * epoch + shift, mean_grad_norm=1.0 + epoch + shift,
        projection=0.2 - 0.02 * epoch + shift, noise_direction=0.01 if noise else 0.0,
    )  # fmt: skip
    values["snr"] = values["projection"] / 0.1 if noise else math.inf
    values["noise_norm_ratio"] = 3.0 if noise else 0.0
    spread = np.array([-2, -1, 0, 1, 2]) * 0.01
    replicates = {k: list(values[k] + spread) for k in BOOTSTRAPPED}
    return BiasPoint(
        epoch=epoch, **values, layers={"fc": LayerBias(1.0, 1.0, 0.9)},
        ci={k: (min(v), max(v)) for k, v in replicates.items()}, replicates=replicates,
    )  # fmt: skip


def _result(tmp_path, name, activation, seed, *, shift=0.0, private=True, accuracy=None):
    run = tmp_path / name
    run.mkdir()
    if accuracy is not None:
        rundir.write_summary(run, RunSummary(
            dataset="fashion-mnist", activation=activation, epochs=4, num_train=100,
            private=private, noise_multiplier=1.0 if private else 0.0, epsilon={}, delta=1e-5,
            accountant="rdp-classic", sampling="poisson", privacy="", train_time_s=1.0,
            per_example_grads="vmap", metrics={"test_accuracy": accuracy},
        ))  # fmt: skip
    return RunBias(
        run=str(run), activation=activation, private=private, run_seed=seed, clip_norm=0.1,
        clipping="flat", sensitivity=0.1, noise_multiplier=1.0 if private else 0.0,
        batch_size=64, num_params=10, num_train=100, sample_size=100, sample_seed=0,
        bootstrap=5, examples="x",
        points=[_point(e, shift, noise=private) for e in EPOCHS],
    )  # fmt: skip


@pytest.fixture
def results(tmp_path):
    return [
        _result(tmp_path, "tanh-s0", "tanh", 0, accuracy=0.80),
        _result(tmp_path, "tanh-s1", "tanh", 1, shift=0.05, accuracy=0.82),
        _result(tmp_path, "relu-s0", "relu", 0, shift=-0.1, accuracy=0.70),
        _result(tmp_path, "sgd-relu", "relu", 0, private=False, accuracy=0.90),
    ]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the functions would save: {path: figure}."""
    figures = {}
    monkeypatch.setattr(
        bias_plots, "save_figure", lambda fig, out: figures.setdefault(str(out), fig) and []
    )
    return figures


def test_trace_figure_one_colour_per_label_one_style_per_seed_with_bands(results, drawn):
    bias_plots.bias_figure(results, out="b")
    fig = drawn["b"]
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
    clipped = panels["fraction clipped (||g_i|| > C)"]
    lines = clipped.get_lines()
    assert len(lines) == 4 and len(clipped.collections) == 4  # a curve and a band per run
    for line, r in zip(lines, results, strict=True):
        assert list(line.get_xdata()) == list(EPOCHS)
        assert list(line.get_ydata()) == [p.fraction_clipped for p in r.points]
    colour = [mcolors.to_hex(line.get_color()) for line in lines]
    style = [line.get_linestyle() for line in lines]
    assert colour[0] == colour[1] != colour[2] != colour[3]  # tanh DP twice; relu DP; relu SGD
    assert style[0] == style[2] == style[3] != style[1]  # seed 0 three times, seed 1 once
    band = clipped.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.9 - 0.4 - 0.02) and band.max() == pytest.approx(0.92)
    # snr: no curve for the run without noise (its snr is inf), and the note says why.
    snr = next(ax for label, ax in panels.items() if label.startswith("snr"))
    assert len([ln for ln in snr.get_lines() if ln.get_marker() == "o"]) == 3
    assert [ln.get_ydata()[0] for ln in snr.get_lines() if ln.get_marker() != "o"] == [1]
    norms = next(ax for label, ax in panels.items() if label.startswith("mean ||g_i||"))
    assert norms.get_yscale() == "log" and "log scale" in norms.get_ylabel()
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts]
    assert "seed 0" in legend and "seed 1" in legend
    assert "relu, non-private (C=0.1, no noise)" in legend
    assert "tanh, DP-SGD, C=0.1 (sigma=1, B=64)" in legend
    text = " ".join(" ".join(t.get_text() for t in fig.texts).split())  # unwrapped
    assert "not covered by eps" in text and "snr not drawn for runs without noise" in text


def test_relation_figure_one_point_per_run_at_its_accuracy(results, drawn, tmp_path):
    unfinished = _result(tmp_path, "unfinished", "tanh", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bias_plots.relation_figure([*results, unfinished], out="r")
    assert [str(w.message) for w in caught if w.category is RunSkipped] == [
        f"skipping run {unfinished.run}: no test_accuracy in its summary.json (unfinished, "
        "or a --validation run)"
    ]  # fmt: skip
    first = drawn["r"].axes[0]  # fraction clipped
    points = [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in first.containers]
    # The mean over the trained checkpoints (epochs 2 and 4): 0.9 - 0.1 * 3 + shift.
    expected = [(0.6, 0.80), (0.65, 0.82), (0.5, 0.70), (0.6, 0.90)]
    np.testing.assert_allclose(np.array(points), np.array(expected), rtol=1e-12)
    mean, ci = bias_plots.training_mean(results[0], "fraction_clipped")
    assert mean == pytest.approx(0.6) and ci == pytest.approx((0.58, 0.62))
    snr = drawn["r"].axes[3]
    assert len(snr.containers) == 3  # not the run without noise


def test_printed_lines_show_intervals_and_a_run_without_noise(results):
    line = bias_plots.point_line(results[0], results[0].points[1])
    assert line.startswith("e2: clipped 0.7 [0.68, 0.72]  proj/C 0.16 [0.14, 0.18]  cos 0.7 ")
    assert "ratio 0.5 [0.48, 0.52]  snr 1.6 [1.58, 1.62]" in line
    line = bias_plots.point_line(results[3], results[3].points[1])
    assert "snr inf (no noise: sigma = 0)" in line and "|noise|/|gclip| 0" in line
    assert bias_plots.run_line(results[3]).endswith(
        "(relu, non-private, C=0.1, no noise; 100 of 100 examples, R=5):"
    )
    assert bias_plots.run_line(results[0]).endswith(
        "(tanh, DP-SGD, C=0.1, sigma=1, B=64; 100 of 100 examples, R=5):"
    )


def test_figures_are_written_beside_each_other(results, tmp_path):
    out = tmp_path / "figs" / "bias.v2"
    written = [*bias_plots.bias_figure(results, out=out),
               *bias_plots.relation_figure(results, out=bias_plots.relation_path(out))]  # fmt: skip
    assert [p.name for p in written] == [
        "bias.v2.png", "bias.v2.pdf", "bias.v2-relation.png", "bias.v2-relation.pdf"
    ]  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in written)


def test_relation_figure_draws_an_interval_that_misses_its_estimate(tmp_path, drawn):
    """With few replicates the percentile interval of a ratio can lie on one side of the
    estimate; the point, its bar towards the interval and the whole interval are drawn."""
    result = _result(tmp_path, "skewed", "tanh", 0, accuracy=0.8)
    for p in result.points:
        p.replicates["fraction_clipped"] = [p.fraction_clipped + d for d in (0.1, 0.2, 0.3)]
    mean, (lo, hi) = bias_plots.training_mean(result, "fraction_clipped")
    assert mean < lo < hi  # the estimate is outside its interval
    bias_plots.relation_figure([result], out="r")
    ax = drawn["r"].axes[0]
    (bar,) = ax.containers
    assert bar.lines[0].get_xdata()[0] == pytest.approx(mean)
    spans = [ln.get_xdata() for ln in ax.get_lines() if len(ln.get_xdata()) == 2]
    assert any(min(x) == pytest.approx(lo) and max(x) == pytest.approx(hi) for x in spans)
