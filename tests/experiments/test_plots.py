"""Sweeps (local and Ray executors, resume after a crash), tables and figures from run records."""

from __future__ import annotations

import json
import warnings

import pytest
from typer.testing import CliRunner

from experiments import plots, records, sweep, tables
from tests.run_fakes import fake_run, replace_config
from toolkit.cli import app
from toolkit.runs import rundir

runner = CliRunner()


def _spec(data_dir, **grid):
    base = {
        "dataset": "fashion-mnist", "data_dir": str(data_dir), "epochs": 2, "batch_size": 100,
        "lr": 0.5, "clip_norm": 1.0, "noise_multiplier": 1.0, "limit_train": 300,
        "max_physical_batch": 128,
    }  # fmt: skip
    return {"base": base, "grid": grid or {"activation": ["relu", "tanh"], "seed": [0, 1]}}


def test_expand_names_and_tempered_grid(tiny_data_dir):
    runs = sweep.expand(_spec(tiny_data_dir))
    assert [n for n, _ in runs] == [
        "activation=relu_seed=0", "activation=relu_seed=1",
        "activation=tanh_seed=0", "activation=tanh_seed=1",
    ]  # fmt: skip
    grid = sweep.expand(_spec(tiny_data_dir, scale=[1.0, 2.0], inverse_temp=[2.0], offset=[0.5]))
    assert [c.activation.label for _, c in grid] == [
        "tempered(s=1,T=2,o=0.5)", "tempered(s=2,T=2,o=0.5)"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="learning_rate is not a setting"):
        sweep.expand(_spec(tiny_data_dir, learning_rate=[0.1]))
    with pytest.raises(ValueError, match="preset='nope'"):
        sweep.expand({"base": {"preset": "nope"}, "grid": {"seed": [0]}})


def test_sweep_resumes_after_crash_and_skips_finished(tiny_data_dir, tmp_path, monkeypatch):
    runs = sweep.expand(_spec(tiny_data_dir, activation=["tanh"], seed=[0, 1, 2]))
    root = tmp_path / "sweep"
    # A clean reference for the run that will crash.
    sweep.run_sweep([runs[1]], tmp_path / "ref")
    # First attempt: run 0 finishes, run 1 is killed after its first epoch's checkpoint.
    sweep.run_sweep([runs[0]], root)
    real = rundir.write_epochs

    def crash(out, history):
        real(out, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_epochs", crash)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep([runs[1]], root)
    monkeypatch.setattr(rundir, "write_epochs", real)
    finished_before = (root / runs[0][0] / "summary.json").stat().st_mtime_ns
    status = sweep.run_sweep(runs, root)
    assert status == {runs[0][0]: "skipped", runs[1][0]: "resumed", runs[2][0]: "trained"}
    assert (root / runs[0][0] / "summary.json").stat().st_mtime_ns == finished_before
    a = records.load_run(root / runs[1][0])
    b = records.load_run(tmp_path / "ref" / runs[1][0])
    assert a.series("test_accuracy") == b.series("test_accuracy")
    assert a.series("grad_norm.median") == b.series("grad_norm.median")


def test_sweep_refuses_a_directory_of_another_config(tiny_data_dir, tmp_path):
    runs = sweep.expand(_spec(tiny_data_dir, activation=["tanh"], seed=[0]))
    sweep.run_sweep(runs, tmp_path)
    (tmp_path / runs[0][0] / "summary.json").unlink()
    changed = sweep.expand({**_spec(tiny_data_dir, activation=["tanh"], seed=[0])})
    changed = [(n, c.__class__(**{**c.__dict__, "lr": 0.25})) for n, c in changed]
    with pytest.raises(ValueError, match="different config"):
        sweep.run_sweep(changed, tmp_path)


def test_ray_executor_runs_the_same_configs(tiny_data_dir, tmp_path):
    ray = pytest.importorskip("ray")
    # One point: what is checked is that a Ray task trains the numbers a local run does.
    runs = sweep.expand(_spec(tiny_data_dir, activation=["relu"], seed=[0]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        status = sweep.run_sweep(runs, tmp_path / "ray", executor="ray")
    finally:
        ray.shutdown()
    assert set(status.values()) == {"trained"}
    sweep.run_sweep(runs, tmp_path / "local")
    for name, _ in runs:
        ray_run = records.load_run(tmp_path / "ray" / name)
        local_run = records.load_run(tmp_path / "local" / name)
        assert ray_run.series("test_accuracy") == local_run.series("test_accuracy")


@pytest.fixture(scope="module")
def four_runs(tiny_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("four")
    spec = _spec(tiny_data_dir)
    sweep.run_sweep(sweep.expand(spec), root / "dp")
    nonprivate = {**spec, "base": {**spec["base"], "private": False, "noise_multiplier": None}}
    sweep.run_sweep(
        sweep.expand({**nonprivate, "grid": {"activation": ["relu", "tanh"]}}), root / "sgd"
    )
    return root


def test_table_pools_seeds(four_runs):
    found = records.find_runs([four_runs / "dp"])
    rows = tables.accuracy_rows(found, accountant="pld")
    assert [(r["activation"], r["seeds"]) for r in rows] == [("relu", 2), ("tanh", 2)]
    for row in rows:
        accs = [r.summary.test_accuracy for r in found if r.activation_label == row["activation"]]
        assert row["accuracy_mean"] == pytest.approx(sum(accs) / 2)
        assert row["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
        assert row["epsilon"] == found[0].summary.epsilon["pld"]
    md = tables.to_markdown(rows)
    assert md.count("\n") == 4 and "(pld)" in md


def test_pareto_frontier_is_non_dominated():
    pts = [(1.0, 50.0), (2.0, 60.0), (2.5, 55.0), (3.0, 70.0), (0.5, 40.0), (3.0, 65.0)]
    assert plots.pareto_frontier(pts) == [(0.5, 40.0), (1.0, 50.0), (2.0, 60.0), (3.0, 70.0)]


def test_cli_table_pareto_figures_write_outputs(four_runs, tmp_path):
    res = runner.invoke(app, ["table", str(four_runs), "--out", str(tmp_path / "t3")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t3.md").exists() and (tmp_path / "t3.csv").exists()
    res = runner.invoke(
        app, ["pareto", str(four_runs), "--accountant", "rdp", "--out", str(tmp_path / "p")]
    )
    assert res.exit_code == 0, res.output
    for kind in ("grad-norms", "act-norms"):
        res = runner.invoke(
            app, ["figures", str(four_runs), "--kind", kind, "--out", str(tmp_path / kind)]
        )
        assert res.exit_code == 0, res.output
    for stem in ("p", "grad-norms", "act-norms"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
        assert (tmp_path / f"{stem}.pdf").stat().st_size > 1000
    bad = runner.invoke(app, ["pareto", str(four_runs), "--accountant", "gdp", "--out", "x"])
    assert bad.exit_code == 2 and "accountant='gdp'" in bad.output


def test_grid_best_triplets(tiny_data_dir, tmp_path):
    spec = _spec(tiny_data_dir, scale=[1.0, 2.0], inverse_temp=[1.0, 2.0], offset=[0.5])
    spec["base"]["epochs"] = 1
    sweep.run_sweep(sweep.expand(spec), tmp_path)
    found = records.find_runs([tmp_path])
    table, best = plots.best_triplets(found)
    assert len(table) == 4 and list(table[:, 3]) == sorted(table[:, 3], reverse=True)
    assert list(best) == list(table[0, :3])  # 10% of 4 rounds up to the single best
    with pytest.warns(UserWarning, match=r"one value of offset o \(0.5\) among its 4 "):
        written = plots.grid_figure(found, accountant="rdp-classic", out=tmp_path / "fig2")
    assert all(p.stat().st_size > 1000 for p in written)
    assert json.loads((tmp_path / found[0].path.name / "summary.json").read_text())


def _tempered(out, s, t, o, accuracy):
    fake_run(out, activation="tempered", accs=(0.5, 0.6, accuracy))
    replace_config(out, activation={"name": "tempered", "scale": s, "inverse_temp": t,
                                    "offset": o})  # fmt: skip


@pytest.fixture
def drawn(monkeypatch):
    """The figures `plots` would save: {out: figure}."""
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.setdefault(out, fig))
    return figures


def test_grid_of_one_run_warns_and_draws_one_colour_without_a_colour_bar(tmp_path, drawn):
    _tempered(tmp_path / "one", 1.97, 2.27, 1.15, 0.8)
    with pytest.warns(UserWarning) as caught:
        plots.grid_figure(records.find_runs([tmp_path]), accountant="rdp-classic", out="g")
    assert [str(w.message) for w in caught] == [
        "the grid figure has one value of scale s (1.97), inverse temperature T (2.27), "
        "offset o (1.15) among its 1 tempered-sigmoid run(s): no grid along them; give runs "
        "with at least two values of each."
    ]  # fmt: skip
    fig = drawn["g"]
    assert len(fig.axes) == 3  # the three panels, no colour bar
    for ax in fig.axes:
        ax.collections[0].update_scalarmappable()  # the colours, as drawing maps them
    colours = {tuple(ax.collections[0].get_facecolors()[0]) for ax in fig.axes}
    assert len(colours) == 1  # the run has one colour in every panel


def test_grid_shares_one_colour_scale_and_warns_only_for_an_axis_of_one_value(tmp_path, drawn):
    for i, (s, t, accuracy) in enumerate([(1.0, 1.0, 0.70), (2.0, 1.0, 0.75), (1.0, 2.0, 0.8)]):
        _tempered(tmp_path / f"r{i}", s, t, 0.5, accuracy)
    with pytest.warns(UserWarning, match=r"one value of offset o \(0.5\) among its 3 "):
        plots.grid_figure(records.find_runs([tmp_path]), accountant="rdp-classic", out="g")
    fig = drawn["g"]
    panels, bars = fig.axes[:3], fig.axes[3:]
    assert len(bars) == 1 and bars[0].get_ylabel() == "test accuracy (%)"
    points = [ax.collections[0] for ax in panels]
    for p in points:
        p.update_scalarmappable()  # the colours, as drawing maps them
    by_accuracy = [
        {y: tuple(c) for (_, y), c in zip(p.get_offsets(), p.get_facecolors())} for p in points
    ]
    assert by_accuracy[0] == by_accuracy[1] == by_accuracy[2]  # one scale for the panels
    assert sorted(by_accuracy[0]) == pytest.approx([70.0, 75.0, 80.0])


def test_log_axes_of_trace_figures_say_so_and_label_two_ticks(tmp_path, drawn):
    """Figure 5's norms (10 to 12 here) span less than a decade: still two labelled ticks."""
    fake_run(tmp_path / "r")
    found = records.find_runs([tmp_path])
    for field, ylabel in (("first_conv_activation_norm", "L2 norm of conv1 activations"),
                          ("grad_norm.mean", "mean pre-clip per-example grad norm")):  # fmt: skip
        plots.trace_figure(found, field=field, ylabel=ylabel, out=field)
        ax = drawn[field].axes[0]
        assert ax.get_yscale() == "log"
        assert ax.get_ylabel().replace("\n", " ") == f"{ylabel} (log scale)"
        lo, hi = ax.get_ylim()
        shown = [t.get_text() for t, y in zip(ax.get_yticklabels(), ax.get_yticks())
                 if lo <= y <= hi and t.get_text()]  # fmt: skip
        assert len(shown) >= 2, shown
    plots.trace_figure(found, field="grad_norm.mean", ylabel="norm", out="linear", log=False)
    assert drawn["linear"].axes[0].get_ylabel() == "norm"


def test_pareto_draws_the_non_private_baseline_at_its_final_accuracy(tmp_path, drawn):
    fake_run(tmp_path / "dp", accs=(0.5, 0.6, 0.7))
    fake_run(tmp_path / "sgd", private=False, noise_multiplier=None, accs=(0.6, 0.7, 0.85))
    curves, front = plots.pareto_curves(records.find_runs([tmp_path]), accountant="rdp-classic")
    baseline = next(c for c in curves if not c.private)
    assert baseline.baseline and not baseline.no_guarantee
    assert baseline.label == "tanh, SGD (n=1): final acc., non-private"
    assert front == [(1.0, 50.0), (1.5, 60.0), (2.0, 70.0)]  # private points only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # drawn, not dropped with a warning
        plots.pareto_figure(records.find_runs([tmp_path]), accountant="rdp-classic", out="p")
    ax = drawn["p"].axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == baseline.label]
    assert list(line.get_ydata()) == pytest.approx([85.0, 85.0])
    assert list(line.get_xdata()) == [0, 1]  # across the whole axes
    legend = [t.get_text().replace("\n", " ") for t in drawn["p"].legends[0].get_texts()]
    assert baseline.label in legend
    assert plots.BASELINE_NOTE in " ".join(t.get_text().replace("\n", " ")
                                           for t in drawn["p"].texts)  # fmt: skip
