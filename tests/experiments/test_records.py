"""Readers of run directories (table, pareto, figures) on broken, partial, incompatible and
eps = inf runs, and the tables and legends that must name what differs between settings.

Run directories are written by `toolkit.runs.rundir`'s writers with numbers the test chooses
(tests/run_fakes.py), so each expectation below is computed from those inputs.
"""

from __future__ import annotations

import json
import statistics

import pytest
from typer.testing import CliRunner

from experiments import plots, records, settings, tables
from tests import REPO
from tests.run_fakes import edit_json, fake_old_fit_run, fake_run, replace_config
from toolkit.cli import app
from toolkit.runs import rundir

runner = CliRunner()


def _torn_epochs(out):
    with open(out / "epochs.jsonl", "a") as f:
        f.write('{"epoch": 4, "ste')


def _line_of(out, change):
    lines = (out / "epochs.jsonl").read_text().splitlines()
    lines[0] = json.dumps(change(json.loads(lines[0])))
    (out / "epochs.jsonl").write_text("\n".join(lines) + "\n")


def _drop_grad_norm_field(d):
    del d["grad_norm"]["median"]
    return d


# name -> how to break a good run in place. Each must be skipped with a warning naming it.
BREAKS = {
    "torn epochs line": _torn_epochs,
    "summary {}": lambda out: (out / "summary.json").write_text("{}"),
    "summary a list": lambda out: (out / "summary.json").write_text("[1]"),
    "summary not JSON": lambda out: (out / "summary.json").write_text('{"data'),
    "summary binary": lambda out: (out / "summary.json").write_bytes(b"\xff\xfe\x00"),
    "config not JSON": lambda out: (out / "config.json").write_text("{"),
    "config a list": lambda out: (out / "config.json").write_text("[]"),
    "config without config": lambda out: (out / "config.json").write_text('{"kind": "train"}'),
    "config missing dataset": lambda out: edit_json(
        out / "config.json",
        lambda r: {**r, "config": {k: v for k, v in r["config"].items() if k != "dataset"}},
    ),  # fmt: skip
    "config missing activation": lambda out: edit_json(
        out / "config.json",
        lambda r: {**r, "config": {k: v for k, v in r["config"].items() if k != "activation"}},
    ),  # fmt: skip
    "config epochs a string": lambda out: replace_config(out, epochs="3"),
    "config lr null": lambda out: replace_config(out, lr=None),
    "config unknown activation": lambda out: replace_config(out, activation={"name": "swish"}),
    "config activation a string": lambda out: replace_config(out, activation="tanh"),
    # Every kind this toolkit wrote is read (run, train, fit: test_every_kind_of_run_...);
    # a kind it never wrote is not.
    "unknown kind": lambda out: edit_json(out / "config.json", lambda r: {**r, "kind": "sweep"}),
    "config paper-cnn without activation": lambda out: replace_config(out, activation=None),
    "config model not a spec": lambda out: replace_config(
        out, model="my model", activation=None
    ),  # fmt: skip
    "epoch line lacks grad_norm field": lambda out: _line_of(out, _drop_grad_norm_field),
    "epoch line lacks epsilon": lambda out: _line_of(
        out, lambda d: {k: v for k, v in d.items() if k != "epsilon"}
    ),  # fmt: skip
    "unfinished (no summary)": lambda out: (out / "summary.json").unlink(),
    "validation run": None,  # written as a --validation run, see below
    "test accuracy null": lambda out: edit_json(
        out / "summary.json", lambda d: {**d, "test_accuracy": None}
    ),  # fmt: skip
    "eps of no accountant": lambda out: edit_json(
        out / "summary.json", lambda d: {**d, "epsilon": {}}
    ),  # fmt: skip
}
COMMANDS = {
    "table": ["table"],
    "pareto": ["pareto"],
    "grad-norms": ["figures", "--kind", "grad-norms"],
    "act-norms": ["figures", "--kind", "act-norms"],
}


# Breaks a command does not read: pareto reads per-epoch accuracy and eps (not the
# summary's); figures 4 and 5 read no accuracy, so a --validation run is drawn there.
NOT_READ = {
    ("test accuracy null", "pareto"), ("test accuracy null", "grad-norms"),
    ("test accuracy null", "act-norms"), ("eps of no accountant", "pareto"),
    ("validation run", "grad-norms"), ("validation run", "act-norms"),
}  # fmt: skip


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Three good runs and one broken run per entry of BREAKS, side by side in one folder."""
    root = tmp_path_factory.mktemp("broken") / "runs"
    fake_run(root / "tanh-s0", seed=0, accs=(0.5, 0.6, 0.70))
    fake_run(root / "tanh-s1", seed=1, accs=(0.5, 0.6, 0.72))
    fake_run(root / "sgd", private=False, noise_multiplier=None, accs=(0.6, 0.7, 0.8))
    for i, name in enumerate(BREAKS):
        bad = root / f"bad{i}"
        if name == "validation run":
            fake_run(bad, seed=2, validation=100, metric="val_accuracy", accs=(0.1, 0.2, 0.3))
        else:
            fake_run(bad, seed=2, accs=(0.1, 0.2, 0.3))
            BREAKS[name](bad)
    return root


@pytest.mark.parametrize("command", COMMANDS)
def test_broken_runs_are_skipped_with_a_warning_and_the_rest_used(broken, tmp_path, command):
    args = [*COMMANDS[command], str(broken)]
    if command != "table":
        args += ["--out", str(tmp_path / "fig")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and res.exception is None
    warned = [line for line in res.output.splitlines() if line.startswith("warning:")]
    # One line per broken run that this command reads, naming it, and no other warning.
    expected = {
        f"skipping run {broken / f'bad{i}'}"
        for i, name in enumerate(BREAKS)
        if (name, command) not in NOT_READ
    }
    assert {w.split(": ")[1] for w in warned} == expected
    assert len(warned) == len(expected)
    if command == "table":
        rows = [line for line in res.output.splitlines() if line.startswith("| fashion")]
        assert len(rows) == 2  # tanh DP (2 seeds) and SGD: the good runs, nothing else
        assert "| 2 | 71.00 +- 1.41 |" in res.output
    else:
        assert (tmp_path / "fig.png").stat().st_size > 1000


def test_every_run_broken_is_a_one_line_error(tmp_path):
    bad = fake_run(tmp_path / "bad", seed=0)
    (bad / "summary.json").write_text("{}")
    for command in COMMANDS.values():
        args = [*command, str(tmp_path)]
        if command[0] != "table":
            args += ["--out", str(tmp_path / "fig")]
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no usable finished runs" in errors[0]
    assert not (tmp_path / "fig.png").exists()


def test_eps_inf_run_is_shown_as_no_dp_guarantee(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "sigma0", noise_multiplier=0.0, eps=None, accs=(0.6, 0.7, 0.8))
    fake_run(root / "dp", accs=(0.5, 0.6, 0.7))
    rows = tables.accuracy_rows(records.find_runs([root]), accountant="rdp-classic")
    inf_row = next(r for r in rows if r["noise_multiplier"] == 0.0)
    assert inf_row["epsilon"] == float("inf")
    md = tables.to_markdown(rows)
    assert "inf (rdp-classic; no DP guarantee)" in md and "sigma=0 (no DP guarantee)" in md
    for command in COMMANDS.values():
        args = [*command, str(root)]
        if command[0] != "table":
            args += ["--out", str(tmp_path / command[-1])]
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and res.exception is None, res.output
    curves, front = plots.pareto_curves(records.find_runs([root]), accountant="rdp-classic")
    inf_curve = next(c for c in curves if c.no_guarantee)
    assert inf_curve.label.endswith("final acc., eps=inf, no DP guarantee")
    assert inf_curve.mean[-1] == pytest.approx(80.0, rel=1e-12)
    assert front == [(1.0, 50.0), (1.5, 60.0), (2.0, 70.0)]  # the finite run's epochs only
    # Only a sigma = 0 run: the pareto figure has no finite eps and still draws it.
    res = runner.invoke(app, ["pareto", str(root / "sigma0"), "--out", str(tmp_path / "only")])
    assert res.exit_code == 0, res.output


def _two_settings(tmp_path, field, a, b, **common):
    root = tmp_path / "runs"
    fake_run(root / "a", **{**common, field: a})
    fake_run(root / "b", **{**common, field: b})
    return records.find_runs([root])


def _canon(cell: str):
    """A cell as a number where it is one ('1.000' and '1' are the same sigma)."""
    try:
        return float(cell)
    except ValueError:
        return cell


# Settings that may differ between two private runs: (field, value a, value b).
DIFFERS = [
    ("clip_norm", 0.1, 1.0), ("batch_size", 100, 200), ("delta", 1e-5, 1e-6), ("lr", 0.1, 0.5),
    ("momentum", 0.0, 0.9), ("clipping", "flat", "automatic"), ("noise_multiplier", 1.0, 2.0),
    ("sampling", "poisson", "shuffle"), ("accountant", "rdp-classic", "pld"),
    ("limit_train", 500, 800), ("optimizer", "sgd", "adam"), ("ema_decay", None, 0.9),
    ("per_example", "vmap", "bookkeeping"), ("gamma", 0.01, 0.1),
]  # fmt: skip


@pytest.mark.parametrize(("field", "a", "b"), DIFFERS)
def test_table_has_a_column_for_each_setting_that_differs(tmp_path, field, a, b):
    found = _two_settings(tmp_path, field, a, b)
    rows = tables.accuracy_rows(found, accountant="rdp-classic")
    assert len(rows) == 2
    md = tables.to_markdown(rows).splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    column = {"batch_size": "batch", "noise_multiplier": "sigma", "limit_train": "dataset"}.get(
        field, settings.name(field)
    )
    assert column in header
    at = header.index(column)
    cells = {[c.strip() for c in line.strip("|").split("|")][at] for line in md[2:]}
    if field == "limit_train":  # the part of the training split is the data set's cell
        assert cells == {f"fashion-mnist (first {n})" for n in (a, b)}
        assert settings.name(field) not in header
        return
    assert {_canon(c) for c in cells} == {_canon(settings.describe(field, v)) for v in (a, b)}
    # A setting that does not vary gets no column of its own.
    assert "momentum" not in header or field == "momentum"


@pytest.mark.parametrize(
    ("seeds", "n", "shown"),
    [((0,), 1, "70.00"), ((0, 0), 1, "70.00"), ((0, 1), 2, None), ((0, 0, 1), 2, None)],
)
def test_seeds_are_distinct_and_plus_minus_only_from_two(tmp_path, seeds, n, shown):
    accs = {0: 0.70, 1: 0.74}
    for i, seed in enumerate(seeds):
        fake_run(tmp_path / f"r{i}", seed=seed, accs=(0.5, 0.6, accs[seed]))
    (row,) = tables.accuracy_rows(records.find_runs([tmp_path]), accountant="rdp-classic")
    assert row["seeds"] == n
    per_seed = [100 * accs[s] for s in sorted(set(seeds))]
    cell = tables.to_markdown([row]).splitlines()[2]
    if n == 1:
        assert row["accuracy_std"] is None and "+-" not in cell and f"| {shown} |" in cell
    else:
        std = statistics.stdev(per_seed)
        assert row["accuracy_std"] * 100 == pytest.approx(std, rel=1e-12)
        assert f"{statistics.fmean(per_seed):.2f} +- {std:.2f}" in cell
    assert tables.to_csv([row]).splitlines()[1].count(",,") == (1 if n == 1 else 0)


@pytest.mark.parametrize(("field", "a", "b"), DIFFERS)
def test_legends_name_what_differs_and_are_distinct(tmp_path, field, a, b):
    found = _two_settings(tmp_path, field, a, b)
    groups = records.group_by_setting(found)
    labels = plots._labels(groups)
    assert len(set(labels)) == 2, labels
    for group, label in zip(groups, labels):
        value = settings.describe(field, group[0].setting[field])
        assert f"{settings.name(field)}={value}" in label


def test_non_private_legends_differ_even_in_unused_privacy_fields(tmp_path):
    found = _two_settings(
        tmp_path, "sampling", "poisson", "shuffle", private=False, noise_multiplier=None
    )
    labels = plots._labels(records.group_by_setting(found))
    assert len(set(labels)) == 2 and all("SGD" in lab for lab in labels)


def test_legend_counts_distinct_seeds(tmp_path):
    for i, seed in enumerate((0, 0, 1)):
        fake_run(tmp_path / f"r{i}", seed=seed)
    (label,) = plots._labels(records.group_by_setting(records.find_runs([tmp_path])))
    assert label.endswith("(n=2)")


def test_output_only_options_neither_split_seeds_nor_show(tmp_path):
    """keep_checkpoints (extra checkpoint files), tensorboard (a copy of the scalars) and
    eval_every (how often the held-out split is evaluated) change what a run writes or
    records, not what it trains: seeds that differ only there are one setting, and no
    column or legend names them."""
    fake_run(tmp_path / "s0", seed=0, accs=(0.5, 0.6, 0.70))
    fake_run(tmp_path / "s1", seed=1, keep_checkpoints=2, eval_every=3, accs=(0.5, 0.6, 0.74))
    replace_config(tmp_path / "s1", tensorboard=str(tmp_path / "tb"))  # as if recorded
    fake_run(tmp_path / "lr", seed=0, lr=0.5, keep_checkpoints=1)
    found = records.find_runs([tmp_path])
    assert sorted(len(g) for g in records.group_by_setting(found)) == [1, 2]
    rows = tables.accuracy_rows(found, accountant="rdp-classic")
    assert sorted(r["seeds"] for r in rows) == [1, 2]
    pooled = next(r for r in rows if r["seeds"] == 2)
    assert pooled["accuracy_mean"] == pytest.approx(0.72, rel=1e-12)
    text = tables.to_markdown(rows) + tables.to_csv(rows)
    for option in records.OUTPUT_ONLY:
        assert all(option not in r for r in rows) and option not in text
    labels = plots._labels(records.group_by_setting(found))
    assert sorted(labels) == ["tanh, DP-SGD, lr=0.1 (n=2)", "tanh, DP-SGD, lr=0.5 (n=1)"]


def test_a_run_on_part_of_its_training_split_says_so_in_tables_and_titles(tmp_path, monkeypatch):
    """--limit-train N: 'first N' examples; --validation V: the last V held out; a limit
    above the examples there were (num_train < N in the summary) trained on all of them."""
    root = tmp_path / "runs"
    fake_run(root / "subset", limit_train=500)
    fake_run(root / "all", lr=0.5)
    fake_run(root / "above", lr=0.2, limit_train=5000)  # the summary says 1000 examples
    fake_run(root / "held-out", validation=100, metric="val_accuracy")
    runs = {r.path.name: r for r in records.find_runs([root])}
    assert {n: r.dataset_label for n, r in runs.items()} == {
        "subset": "fashion-mnist (first 500)", "all": "fashion-mnist",
        "above": "fashion-mnist", "held-out": "fashion-mnist (first 1,000, last 100 held out)",
    }  # fmt: skip
    with pytest.warns(records.RunSkipped, match="held-out: no numeric test_accuracy"):
        rows = tables.accuracy_rows(list(runs.values()), accountant="rdp-classic")
    md = tables.to_markdown(rows)
    cells = {line.split("|")[1].strip() for line in md.splitlines()[2:]}
    assert cells == {"fashion-mnist (first 500)", "fashion-mnist"}
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.setdefault(out, fig))
    plots.pareto_figure([runs["subset"]], accountant="rdp-classic", out="pareto")
    title = figures["pareto"].axes[0].get_title()  # the data, then what eps is
    assert title.splitlines()[0] == "fashion-mnist (first 500)"
    plots.trace_figure([runs["held-out"]], field="grad_norm.mean", ylabel="norm", out="trace")
    title = figures["trace"].axes[0].get_title()
    assert title.splitlines()[0] == "fashion-mnist (first 1,000, last 100 held out)"


def test_private_data_diagnostics_are_labelled_where_they_are_drawn_or_tabled(
    tmp_path, monkeypatch
):
    """Figure 4 (pre-clip norms: private training data, no noise) says it is not covered by
    eps; Figure 5 (held-out images) does not; a best-lr table says its choice is not."""
    fake_run(tmp_path / "runs" / "a", seed=0, lr=0.1)
    fake_run(tmp_path / "runs" / "b", seed=0, lr=0.2, accs=(0.5, 0.6, 0.8))
    notes = []
    monkeypatch.setattr(plots, "_note", lambda fig, text: notes.append(text))
    found = records.find_runs([tmp_path / "runs"])
    for field in ("grad_norm.mean", "first_conv_activation_norm"):
        plots.trace_figure(found, field=field, ylabel=field, out=tmp_path / field)
    assert plots.DIAGNOSTIC_NOTE in notes[0] and "not covered by eps" in notes[0]
    assert notes[1] == plots.TRACE_NOTE
    result = runner.invoke(app, ["table", str(tmp_path / "runs"), "--best-lr",
                                 "--out", str(tmp_path / "t4")])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = (tmp_path / "t4.md").read_text()
    assert written.rstrip().endswith(tables.BEST_LR_NOTE) and "not covered" in written
    plain = runner.invoke(app, ["table", str(tmp_path / "runs")])
    assert tables.BEST_LR_NOTE not in plain.output


# --- every kind of run: toolkit train and toolkit.fit, of the paper CNN or of your model ---

# name -> (dataset cell, model cell, activation cell) of each run in `every_kind`.
KINDS = {
    "paper": ("fashion-mnist", "paper-cnn", "tanh"),
    "tempered": ("fashion-mnist", "paper-cnn", "tempered(s=2,T=2,o=1)"),
    "parent-train": ("fashion-mnist", "paper-cnn", "tanh"),  # kind "train", before "run"
    "factory": ("fashion-mnist", "tests.cli_models:tiny_image", "-"),
    "file": ("train.npz", "tests.cli_models:tiny", "-"),
    "arrays": ("arrays", "python:MLP", "-"),
    "old-fit": ("arrays", "python:MLP", "-"),  # kind "fit", before "run"
}
OWN_MODELS = ("factory", "file", "arrays", "old-fit")


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """One finished run of each kind a table or figure may be given, in one folder."""
    import shutil

    root = tmp_path_factory.mktemp("kinds") / "runs"
    fake_run(root / "paper", accs=(0.5, 0.6, 0.71))
    fake_run(root / "tempered", activation="tempered", accs=(0.5, 0.6, 0.72))
    shutil.copytree(REPO / "tests" / "data" / "parent_records" / "run", root / "parent-train")
    fake_run(root / "factory", model="tests.cli_models:tiny_image", accs=(0.5, 0.6, 0.73))
    fake_run(root / "file", model="tests.cli_models:tiny", dataset="data/train.npz",
             accs=(0.5, 0.6, 0.74))  # fmt: skip
    fake_run(root / "arrays", model="python:MLP", dataset="python:arrays",
             optimizer="python:adam", lr=None, accs=(0.5, 0.6, 0.75))  # fmt: skip
    fake_old_fit_run(root / "old-fit", accs=(0.5, 0.6, 0.76))
    return root


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning:")]


def test_every_kind_of_run_loads_with_its_label(every_kind):
    assert json.loads((every_kind / "parent-train" / rundir.CONFIG).read_text()).get("kind") is None
    assert json.loads((every_kind / "old-fit" / rundir.CONFIG).read_text())["kind"] == "fit"
    runs = {r.path.name: r for r in records.find_runs([every_kind])}
    assert set(runs) == set(KINDS)
    for name, (dataset, model, activation) in KINDS.items():
        run = runs[name]
        assert (run.dataset_label, run.config.model) == (dataset, model), name
        expected = "MLP" if name in ("arrays", "old-fit") else model.rsplit(":")[-1]
        assert run.activation_label == (activation if activation != "-" else expected), name
        assert run.label == f"{run.activation_label}, DP-SGD"
    old = runs["old-fit"].config  # the old record's settings, as RunConfig fields
    assert (old.optimizer, old.lr, old.batch_size, old.noise_multiplier) == (
        "python:sgd", None, 100, 1.0
    )  # fmt: skip


def test_table_shows_every_kind_of_run_with_its_model_and_data(every_kind, tmp_path):
    res = runner.invoke(app, ["table", str(every_kind), "--out", str(tmp_path / "t")])
    assert res.exit_code == 0 and res.exception is None, res.output
    assert _warnings(res.output) == []
    md = (tmp_path / "t.md").read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header[:3] == ["dataset", "model", "activation"]
    cells = {tuple(c.strip() for c in line.strip("|").split("|"))[:3] for line in md[2:]}
    assert cells == set(KINDS.values())  # parent-train and paper: two rows, same three cells
    arrays = next(line for line in md[2:] if "python:adam" in line)
    assert [c.strip() for c in arrays.strip("|").split("|")][header.index("lr")] == "-"
    csv_header = (tmp_path / "t.csv").read_text().splitlines()[0].split(",")
    assert csv_header[:3] == ["dataset", "model", "activation"]
    # A table of the paper CNN's runs alone reads as it always did: no model column.
    paper = runner.invoke(app, ["table", str(every_kind / "paper"), str(every_kind / "tempered")])
    assert paper.exit_code == 0, paper.output
    assert "| dataset | activation | training |" in paper.output and "model" not in paper.output


def test_pareto_and_grad_norms_draw_every_kind_of_run(every_kind, tmp_path):
    for args in (["pareto"], ["figures", "--kind", "grad-norms"]):
        res = runner.invoke(app, [*args, str(every_kind), "--out", str(tmp_path / args[-1])])
        assert res.exit_code == 0 and res.exception is None, res.output
        assert _warnings(res.output) == [], args
        assert (tmp_path / f"{args[-1]}.png").stat().st_size > 1000
    curves, _ = plots.pareto_curves(records.find_runs([every_kind]), accountant="rdp-classic")
    labels = " ".join(c.label for c in curves)
    assert all(f"{name}, DP-SGD" in labels for name in ("tiny_image", "tiny", "MLP", "tanh"))


def test_act_norms_and_grid_skip_your_own_models_with_one_line_each(every_kind, tmp_path):
    """Figure 5 is the paper CNN's first-conv activation norm, Figure 2 its tempered
    sigmoids: each run of your own model is named on one line saying so, never dropped
    silently; the paper CNN's runs are drawn."""
    needs = {"act-norms": "act-norms, Figure 5, needs the paper CNN's", "grid": plots.GRID_NEEDS}
    for kind, needle in needs.items():
        out = tmp_path / kind
        res = runner.invoke(app, ["figures", str(every_kind), "--kind", kind, "--out", str(out)])
        assert res.exit_code == 0 and res.exception is None, res.output
        warned = _warnings(res.output)
        if kind == "grid":  # one tempered run is left: no grid, and it says so
            (single,) = [w for w in warned if "grid figure has one value" in w]
            assert "among its 1 tempered-sigmoid run(s)" in single
            warned.remove(single)
        assert sorted(w.split(": ")[1] for w in warned) == sorted(
            f"skipping run {every_kind / name}" for name in OWN_MODELS
        ), kind  # fmt: skip
        assert all(needle in w and "is your own" in w for w in warned), warned
        assert (tmp_path / f"{kind}.png").stat().st_size > 1000


@pytest.mark.slow  # two short toolkit.fit runs of a small MLP
def test_runs_of_toolkit_fit_appear_in_table_pareto_and_figures(tiny_data_dir, tmp_path,
                                                               monkeypatch):  # fmt: skip
    """A model instance on arrays, and a factory on a registry data set, both trained by
    `toolkit.fit`: read by table and pareto like any run; act-norms names each as your own
    model on one line (the paper CNN's metric), and draws nothing when none is left."""
    import numpy as np
    from flax import nnx

    import toolkit
    from tests import cli_models
    from toolkit.data import ENV_VAR

    rng = np.random.default_rng(0)
    y = np.arange(240, dtype=np.int32) % cli_models.CLASSES
    x = (3 * rng.standard_normal((cli_models.CLASSES, cli_models.FEATURES)))[y]
    x = (x + rng.standard_normal(x.shape)).astype(np.float32)
    common = dict(optimizer=toolkit.optimizer("sgd", lr=0.5), batch_size=60, clip_norm=1.0,
                  noise_multiplier=1.0)  # fmt: skip
    root = tmp_path / "runs"
    toolkit.fit(cli_models.tiny(rngs=nnx.Rngs(0)), (x[:180], y[:180]), epochs=2,
                eval_data=(x[180:], y[180:]), out=root / "instance", **common)  # fmt: skip
    monkeypatch.setenv(ENV_VAR, str(tiny_data_dir))
    toolkit.fit("tests.cli_models:tiny_image", "fashion-mnist", epochs=2,
                out=root / "factory", **common)  # fmt: skip
    found = {r.path.name: r for r in records.find_runs([root])}
    assert {n: (r.config.model, r.dataset_label, r.label) for n, r in found.items()} == {
        "instance": ("python:Tiny", "arrays", "Tiny, DP-SGD"),
        "factory": ("tests.cli_models:tiny_image", "fashion-mnist", "tiny_image, DP-SGD"),
    }
    res = runner.invoke(app, ["table", str(root)])
    assert res.exit_code == 0 and _warnings(res.output) == [], res.output
    assert "| arrays | python:Tiny | - |" in res.output
    assert "| fashion-mnist | tests.cli_models:tiny_image | - |" in res.output
    for args in (["pareto"], ["figures", "--kind", "grad-norms"]):
        res = runner.invoke(app, [*args, str(root), "--out", str(tmp_path / args[-1])])
        assert res.exit_code == 0 and _warnings(res.output) == [], res.output
    res = runner.invoke(app, ["figures", str(root), "--kind", "act-norms", "--out",
                              str(tmp_path / "act")])  # fmt: skip
    assert res.exit_code == 2 and "nothing to show" in res.output
    assert len([w for w in _warnings(res.output) if "needs the paper CNN's" in w]) == 2
    assert not (tmp_path / "act.png").exists()
