"""`toolkit sweep` validates the whole sweep before any run starts: one-line error, exit 2,
nothing written. Also the dry run and the sweep-level progress lines."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import pytest
from typer.testing import CliRunner

from experiments import sweep
from experiments.sweep_progress import SweepProgress
from tests.run_fakes import fake_run
from toolkit.cli import app
from toolkit.runs import RunConfig, rundir

runner = CliRunner()
GOOD = """
[base]
preset = "fashion-mnist-tanh"
epochs = 2
[grid]
activation = ["relu", "tanh"]
seed = [0, 1]
"""

# name -> (sweep file text, a piece of the one-line error). Every case fails before any
# run starts, so the root is never created.
BAD_SPECS = {
    "misspelled table": ('[base]\nepochs = 2\n[gird]\nseed = [0, 1]\n', "did you mean [grid]?"),
    "top-level setting": ("epochs = 2\n[grid]\nseed = [0]\n", "settings go under [base]"),
    "misspelled key": ("[base]\nepochs = 2\n[grid]\nsed = [0, 1]\n", "did you mean 'seed'?"),
    "unknown key": ("[base]\nlearning_rate = 0.1\n[grid]\nseed = [0]\n", "base.learning_rate"),
    "fractional epochs": ("[base]\nepochs = 1.5\nnoise_multiplier = 1.0\n", "epochs=1.5"),
    "negative lr in grid": (
        "[base]\nnoise_multiplier = 1.0\n[grid]\nlr = [0.1, -1]\n", "lr=-1 must be"
    ),
    "lr a string": ('[base]\nnoise_multiplier = 1.0\nlr = "0.1"\n', "lr='0.1' must be a number"),
    "epochs a bool": ("[base]\nnoise_multiplier = 1.0\nepochs = true\n", "epochs=True"),
    "momentum 1": ("[base]\nnoise_multiplier = 1.0\nmomentum = 1.0\n", "momentum=1.0"),
    "delta 2": ("[base]\nnoise_multiplier = 1.0\ndelta = 2\n", "delta=2"),
    "lr nan": ("[base]\nnoise_multiplier = 1.0\nlr = nan\n", "lr=nan"),
    "sigma inf": ("[base]\nnoise_multiplier = inf\n", "noise_multiplier=inf"),
    "no sigma nor eps": ("[base]\nepochs = 2\n", "give exactly one of noise_multiplier"),
    "grid value not a list": ("[base]\nnoise_multiplier = 1.0\n[grid]\nseed = 3\n", "grid.seed=3"),
    "grid list empty": ("[base]\nnoise_multiplier = 1.0\n[grid]\nseed = []\n", "grid.seed=[]"),
    "unknown activation": (
        '[base]\nnoise_multiplier = 1.0\n[grid]\nactivation = ["swish"]\n', "activation='swish'"
    ),
    "unknown preset": ('[base]\npreset = "nope"\n', "preset='nope'"),
    "unknown dataset": ('[base]\nnoise_multiplier = 1.0\ndataset = "svhn"\n', "dataset='svhn'"),
    "base not a table": ("base = 3\n", "[base] must be a table"),
    "bad point among good": (
        "[base]\nnoise_multiplier = 1.0\n[grid]\nepochs = [1, 2, 0]\nseed = [0, 1]\n",
        "epochs=0 must be in [1, 10000] (and 1 more bad points)",
    ),
    "not TOML": ("[base\nepochs = 2\n", "not valid TOML"),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_run_may_start(monkeypatch):
    """Every case here must stop before a run starts; if one did not, fail at once (rather
    than train on the real data set for minutes)."""

    def started(config, out):
        raise AssertionError(f"a run started: {out}")

    monkeypatch.setattr(sweep, "run_one", started)


def _invoke(args):
    res = runner.invoke(app, ["sweep", *map(str, args)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res


def _one_error(res, fragment: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name", BAD_SPECS)
def test_bad_sweep_file_is_one_line_exit_2_and_nothing_written(tmp_path, name):
    text, fragment = BAD_SPECS[name]
    spec = tmp_path / "sweep.toml"
    spec.write_text(text)
    for extra in ([], ["--dry-run"]):
        _one_error(_invoke([spec, "--root", tmp_path / "root", *extra]), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]


def _file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    return f


def _run_dir_is_file(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "activation=relu_seed=0").write_text("x")
    return root


def _other_config(tmp_path):
    root = tmp_path / "root"
    fake_run(root / "activation=tanh_seed=1", activation="tanh", seed=1, epochs=3)
    return root


def _not_a_run(tmp_path):
    root = tmp_path / "root"
    (root / "activation=tanh_seed=0").mkdir(parents=True)
    (root / "activation=tanh_seed=0" / "notes.txt").write_text("mine")
    return root


# name -> (builds (spec, root, extra args) in tmp_path, a piece of the error).
BAD_PLACES = {
    "spec is a folder": (lambda t: (t, t / "root", []), "is a directory"),
    "spec missing": (lambda t: (t / "none.toml", t / "root", []), "does not exist"),
    "root is a file": (lambda t: (t / "s.toml", _file(t), []), "is a file"),
    "root below a file": (lambda t: (t / "s.toml", _file(t) / "sub", []), "is a file, not a"),
    "run dir is a file": (lambda t: (t / "s.toml", _run_dir_is_file(t), []), "is a file"),
    "run of another config": (lambda t: (t / "s.toml", _other_config(t), []), "different config"),
    "run dir not a run": (lambda t: (t / "s.toml", _not_a_run(t), []), "holds no run"),
    "unknown executor": (lambda t: (t / "s.toml", t / "root", ["--executor", "slurm"]),
                         "executor='slurm'"),
    "no workers": (lambda t: (t / "s.toml", t / "root", ["--workers", "0"]), "workers=0"),
    "address of a local sweep": (
        lambda t: (t / "s.toml", t / "root", ["--address", "10.0.0.7:6379"]),
        "--address=10.0.0.7:6379 applies to --executor ray only",
    ),
    "workers of a ray sweep": (
        lambda t: (t / "s.toml", t / "root", ["--executor", "ray", "--workers", "4"]),
        "--workers=4 applies to --executor local only",
    ),
}  # fmt: skip


def _snapshot(tmp_path):
    return sorted((str(p.relative_to(tmp_path)), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("name", BAD_PLACES)
def test_bad_spec_or_root_is_one_line_exit_2_and_nothing_written(tmp_path, name):
    (tmp_path / "s.toml").write_text(GOOD)
    build, fragment = BAD_PLACES[name]
    spec, root, extra = build(tmp_path)
    before = _snapshot(tmp_path)
    _one_error(_invoke([spec, "--root", root, *extra]), fragment)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("extra", [["--address", "h:1"], ["--executor", "ray", "--workers", "2"]])
def test_conflicting_executor_options_are_refused_by_a_dry_run_too(tmp_path, extra):
    (tmp_path / "s.toml").write_text(GOOD)
    _one_error(_invoke([tmp_path / "s.toml", "--root", tmp_path / "root", "--dry-run", *extra]),
               "applies to --executor")  # fmt: skip
    assert not (tmp_path / "root").exists()


def test_dry_run_lists_each_run_its_action_and_what_differs(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(GOOD)
    root = tmp_path / "root"
    name, cfg = sweep.load(spec)[1]  # a run killed before its first epoch: resumed
    rundir.write_config(root / name, cfg, {"requested": cfg.to_dict()})
    before = _snapshot(tmp_path)
    res = _invoke([spec, "--root", root, "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"4 runs under {root}: 3 to train, 1 to resume, 0 finished (skipped)"
    assert "target_epsilon=2.7" in lines[1] and "epochs=2" in lines[1]
    runs = [line.split() for line in lines[2:6]]
    assert [(r[0], r[1]) for r in runs] == [
        ("train", f"{root}/activation=relu_seed=0:"), ("resume", f"{root}/activation=relu_seed=1:"),
        ("train", f"{root}/activation=tanh_seed=0:"), ("train", f"{root}/activation=tanh_seed=1:"),
    ]  # fmt: skip
    assert [r[2:] for r in runs] == [
        ["activation=relu,", "seed=0"], ["activation=relu,", "seed=1"],
        ["activation=tanh,", "seed=0"], ["activation=tanh,", "seed=1"],
    ]  # fmt: skip
    assert _snapshot(tmp_path) == before


def test_sweep_point_pair_replaces_the_presets_target_eps():
    runs = sweep.expand({"base": {"preset": "fashion-mnist-tanh"},
                         "grid": {"noise_multiplier": [1.0, 2.0]}})  # fmt: skip
    assert [(c.noise_multiplier, c.target_epsilon) for _, c in runs] == [(1.0, None), (2.0, None)]


def test_sweep_of_your_own_model_leaves_the_paper_cnns_settings_out():
    """As `toolkit train --model` does: a preset's activation and weight standardisation do
    not apply to your model; naming an activation for it is an error."""
    own = {"model": "tests.cli_models:tiny", "dataset": "data/blobs.npz"}
    runs = sweep.expand({"base": {"preset": "fashion-mnist-tempered-ws-pld-ema", **own},
                         "grid": {"seed": [0, 1]}})  # fmt: skip
    assert [(c.model, c.dataset, c.activation, c.weight_standardization) for _, c in runs] == [
        ("tests.cli_models:tiny", "data/blobs.npz", None, False)
    ] * 2  # fmt: skip
    assert runs[0][1].accountant == "pld" and runs[0][1].ema_decay == 0.99  # the rest applies
    with pytest.raises(ValueError, match="is your own: leave them unset"):
        sweep.expand({"base": own, "grid": {"activation": ["relu"]}})


@pytest.mark.parametrize("tty", [False, True])
def test_sweep_progress_counts_runs_eta_and_last_result(tmp_path, tty):
    fake_run(tmp_path / "a", accs=(0.5, 0.8125), eps=(1.0, 2.5))
    fake_run(tmp_path / "b", accs=(0.5, 0.75), noise_multiplier=0.0, eps=None)
    fake_run(tmp_path / "c", accs=(0.5, 0.875), private=False)
    stream = io.StringIO()
    with SweepProgress(4, tmp_path, stream=stream, rich=tty) as progress:
        lines = [progress.done("a", "skipped"), progress.done("b", "trained"),
                 progress.done("c", "resumed")]  # fmt: skip
    assert lines[0] == (
        f"[1/4] skipped {tmp_path / 'a'}: test acc 0.8125, eps 2.50 (rdp-classic); ETA unknown"
    )
    assert lines[1].startswith(f"[2/4] trained {tmp_path / 'b'}: test acc 0.7500, eps inf (no DP")
    assert lines[2].startswith(f"[3/4] resumed {tmp_path / 'c'}: test acc 0.8750, non-private")
    assert re.search(r"ETA \d+:\d\d$", lines[2])
    out = stream.getvalue()
    assert all(line in out.replace("\n", "") or line in out for line in lines)


def _record_failure(root, name, cfg, kind, error):
    """A failure record as a sweep writes it (ROOT/sweep-failures.json)."""
    root.mkdir(parents=True, exist_ok=True)
    record = {"kind": kind, "error": error, "config": cfg.to_dict(), "time": "2025-01-01T00:00:00"}
    (root / sweep.FAILURES).write_text(json.dumps({name: record}))


def test_plan_skips_recorded_failures_of_the_same_config_only(tmp_path):
    runs = sweep.expand({"base": {"noise_multiplier": 1.0}, "grid": {"seed": [0, 1]}})
    (a, cfg), (b, _) = runs
    _record_failure(tmp_path, a, cfg, "error", "--data='x.npz' is not a file.")
    assert sweep.plan(runs, tmp_path) == {a: "failed", b: "train"}
    assert sweep.plan(runs, tmp_path, retry_failed=True) == {a: "train", b: "train"}
    lines = sweep.describe(runs, tmp_path)
    assert lines[0].endswith("0 finished (skipped), 1 failed earlier (skipped; --retry-failed "
                             "runs them)")  # fmt: skip
    (row,) = [i for i, line in enumerate(lines) if f"{a}:" in line]
    assert lines[row].split()[0] == "failed"
    assert lines[row + 1] == "        failed earlier: --data='x.npz' is not a file."
    # Another config under the same name (a changed [base]): the record is not about it.
    changed = [(n, dataclasses.replace(c, lr=0.05)) for n, c in runs]
    assert sweep.plan(changed, tmp_path) == {a: "train", b: "train"}
    # A finished run is skipped whatever the record says.
    fake_run(tmp_path / a, seed=0)
    done = [(a, RunConfig.from_dict(rundir.read_config(tmp_path / a)["requested"]))]
    _record_failure(tmp_path, a, done[0][1], "diverged", "training diverged in epoch 2.")
    assert sweep.plan(done, tmp_path) == {a: "skip"}


def test_a_run_directory_holding_only_a_lock_file_is_trained(tmp_path):
    runs = sweep.expand({"base": {"noise_multiplier": 1.0}, "grid": {"seed": [0]}})
    (tmp_path / "seed=0").mkdir()
    (tmp_path / "seed=0" / ".lock").write_text("123\n")
    assert sweep.plan(runs, tmp_path) == {"seed=0": "train"}


@pytest.mark.parametrize(
    ("statuses", "code"),
    [(["trained", "skipped", "resumed"], 0), (["trained", "failed"], 2), (["busy"], 2),
     (["failed earlier", "trained"], 2), (["failed", "diverged earlier"], 3),
     (["diverged", "busy"], 3)],
)  # fmt: skip
def test_exit_code_3_if_a_point_diverged_else_2_if_one_did_not_finish(statuses, code):
    assert sweep.exit_code({str(i): s for i, s in enumerate(statuses)}) == code


def test_sweep_progress_counts_and_shows_failed_points(tmp_path):
    fake_run(tmp_path / "a", accs=(0.5, 0.8125), eps=(1.0, 2.5))
    stream = io.StringIO()
    with SweepProgress(4, tmp_path, stream=stream, rich=False) as progress:
        lines = [progress.done("x", "failed earlier", "--data='x.npz' is not a file."),
                 progress.done("a", "trained"),
                 progress.done("d", "diverged", "training diverged in epoch 2."),
                 progress.done("b", "busy", "b is in use (pid 7).")]  # fmt: skip
    assert lines[0] == (
        f"[1/4] failed earlier {tmp_path / 'x'}: --data='x.npz' is not a file; ETA unknown; "
        "1 failed"
    )
    assert lines[1].startswith(f"[2/4] trained {tmp_path / 'a'}: test acc 0.8125")
    assert lines[1].endswith("; 1 failed")
    assert lines[2].startswith(f"[3/4] diverged {tmp_path / 'd'}: training diverged in epoch 2;")
    assert lines[2].endswith("; 2 failed")
    assert lines[3].startswith(f"[4/4] busy {tmp_path / 'b'}: b is in use (pid 7);")
    assert lines[3].endswith("; 2 failed, 1 busy")
    assert progress.problems == {
        "x": ("failed earlier", "--data='x.npz' is not a file."),
        "d": ("diverged", "training diverged in epoch 2."),
        "b": ("busy", "b is in use (pid 7)."),
    }
