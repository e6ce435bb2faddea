"""Bad input on every command (issue 13): one `error:` line, exit 2, nothing written.

Each table holds malformed invocations of one category (silent flags, output paths,
numbers); every case runs through the real entry point (`toolkit.cli._launch.run`, the
parsing the `toolkit` script does) in this process, and checks:
- exit code 2 and exactly one non-empty stderr line, starting `error:`, no traceback;
- the filesystem under the test's directory is unchanged (nothing half-written).
The progress/log and allocator checks follow at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from tests import REPO, cli_models
from tests.run_fakes import fake_old_fit_run, fake_run
from toolkit.base import _io as io_lib
from toolkit.base import _logs as logs
from toolkit.base import outputs
from toolkit.base.plotting import save_figure
from toolkit.cli import _launch as launch
from toolkit.cli import app
from toolkit.cli._options import OPTIONS
from toolkit.runs import EpochRecord, GradNormStats, load_settings, rundir
from toolkit.runs import _config as config_lib
from toolkit.training._loop import compile_time

PRIVATE = ["--noise-multiplier", "1.0"]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a directory)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def _fails_cleanly(args: list[str], capsys, root: Path, needle: str = "") -> str:
    """Run `toolkit *args`; assert exit 2, one `error:` line, `root` unchanged."""
    before = _tree(root)
    capsys.readouterr()
    code = launch.run(app, [str(a) for a in args])
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert code == 2, (args, code, captured.out, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
    assert "Traceback" not in captured.err + captured.out
    assert needle in lines[0], (needle, lines[0])
    assert _tree(root) == before, args
    return lines[0]


@pytest.fixture
def ws(tmp_path, tiny_data_dir):
    """A workspace: a file, a non-empty folder, an existing table, a fake run."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "t.md").write_text("old table")
    (tmp_path / "fig.png").write_bytes(b"old png")
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "dir.md").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"config": {}, "config_hash": "x"}')
    (tmp_path / "bad-key.toml").write_text("epoch = 3\n")
    (tmp_path / "bad-type.toml").write_text("epochs = 1.5\n")
    (tmp_path / "bad-act.toml").write_text('[activation]\nname = "tempered"\nscael = 2.0\n')
    (tmp_path / "np-clash.toml").write_text("private = false\nnoise_multiplier = 1.0\n")
    (tmp_path / "broken.toml").write_text("epochs = \n")
    (tmp_path / "bad-range.toml").write_text("epochs = 0\nnoise_multiplier = 1.0\n")
    (tmp_path / "not-a-run.json").write_text("[1, 2]")
    x, y = _blobs(40)
    np.savez(tmp_path / "good.npz", x=x, y=y)
    np.savez(tmp_path / "float-labels.npz", x=x, y=y + 0.5)
    np.savez(tmp_path / "no-labels.npz", x=x)
    (tmp_path / "data.txt").write_text("1,2,0\n")
    fake_run(tmp_path / "py-run", model="python:MLP", dataset="python:arrays")
    fake_run(tmp_path / "py-data", model="tests.cli_models:tiny", dataset="python:arrays")
    fake_old_fit_run(tmp_path / "old-fit")
    return tmp_path, tiny_data_dir


def _blobs(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` examples of `cli_models.FEATURES` features in `cli_models.CLASSES` separable blobs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % cli_models.CLASSES
    centres = 3.0 * rng.standard_normal((cli_models.CLASSES, cli_models.FEATURES))
    x = centres[y] + rng.standard_normal((n, cli_models.FEATURES))
    return x.astype(np.float32), y.astype(np.int32)


# --- 1. silent flags: combinations that cannot all hold --------------------------------------

# Tiny data and one short epoch: should a check be missing, the run ends in seconds.
_TINY = ["--data-dir", "{data}", "--limit-train", "120", "--batch-size", "60", "--quiet",
         "--out", "{ws}/new"]  # fmt: skip
SILENT = [
    (["train", "--resume", "{ws}/run", "--epochs", "5"], "--epochs"),
    (["train", "--resume", "{ws}/run", "--lr", "0.1", "--noise-multiplier", "2"], "--lr"),
    (["train", "--resume", "{ws}/run", "--no-privacy"], "--no-privacy"),
    (["train", "--resume", "{ws}/run", "--out", "{ws}/new"], "--out"),
    (["train", "--resume", "{ws}/run", "--config", "{ws}/bad-key.toml"], "with --config:"),
    (["train", "--no-privacy", "--target-epsilon", "2", *_TINY], "--target-epsilon"),
    (["train", "--no-privacy", "--noise-multiplier", "1", *_TINY], "--noise-mul"),
    (["train", "--no-privacy", "--clip-norm", "0.1", *_TINY], "--clip-norm"),
    (["train", "--no-privacy", "--delta", "1e-6", *_TINY], "--delta"),
    (["train", "--no-privacy", "--accountant", "pld", *_TINY], "--accountant"),
    (["audit", "--no-privacy", "--noise-multiplier", "1", *_TINY], "--noise-mul"),
    (["train", "--clipping", "automatic", "--clip-norm", "0.5", *_TINY], "--clip-norm=0.5"),
    (["train", "--preset", "fashion-mnist-tanh", "--clipping", "automatic", "--clip-norm", "1",
      *_TINY], "no effect with --clipping automatic"),
    (["train", "--config", "{ws}/bad-key.toml", "--out", "{ws}/new"], "did you mean 'epochs'"),
    (["train", "--config", "{ws}/bad-type.toml", "--out", "{ws}/new"], "epochs=1.5"),
    (["train", "--config", "{ws}/bad-act.toml", "--out", "{ws}/new"], "did you mean 'scale'"),
    (["train", "--config", "{ws}/np-clash.toml", "--out", "{ws}/new"], "private = false"),
    (["train", "--config", "{ws}/broken.toml", "--out", "{ws}/new"], "not valid TOML"),
    (["train", "--config", "{ws}/missing.toml", "--out", "{ws}/new"], "does not exist"),
    (["train", "--config", "{ws}/full", "--out", "{ws}/new"], "is a directory"),
    (["train", "--config", "{ws}/not-a-run.json", "--out", "{ws}/new"], "not a run's config"),
    (["train", "--config", "{ws}/py-run/config.json", "--out", "{ws}/new"],
     "dataset=python:arrays, model=python:MLP were given in Python"),
    (["train", "--config", "{ws}/old-fit/config.json", "--out", "{ws}/new"],
     "is a 'fit' run (toolkit.fit"),
    (["train", "--config", "{ws}/bad-range.toml", "--data-dir", "{data}", "--out", "{ws}/new"],
     "epochs=0"),
    (["audit", "--config", "{ws}/bad-key.toml", "--out", "{ws}/new"], "did you mean 'epochs'"),
    (["train", "--epochs", "abc"], "--epochs"),  # a usage error is one line too
    (["train", "--bogus"], "--bogus"),
    (["nosuch"], "nosuch"),
]  # fmt: skip


def _fill(args, ws, data):
    return [a.format(ws=ws, data=data) for a in args]


@pytest.mark.parametrize(("args", "needle"), SILENT)
def test_conflicting_flags_and_bad_config_files(args, needle, ws, capsys):
    root, data = ws
    _fails_cleanly(_fill(args, root, data), capsys, root, needle)


# --- 1b. your own model and data: --model and --data ------------------------------------------

# Run from the repository root (`--model` imports with the current directory on sys.path).
_OWN = ["train", "--data", "{ws}/good.npz", "--batch-size", "10", *PRIVATE, "--quiet",
        "--out", "{ws}/new"]  # fmt: skip
OWN_MODEL = [
    (["--model", "tiny"], "model='tiny' is unknown"),  # no colon: not package.module:factory
    (["--model", "tests.cli_models"], "model='tests.cli_models' is unknown"),
    (["--model", "tests.no_such_module:tiny"], "cannot import module 'tests.no_such_module'"),
    (["--model", "tests.cli_models:missing"], "has no 'missing'"),
    (["--model", "tests.cli_models:NOT_CALLABLE"], "is not callable"),
    (["--model", "tests.cli_models:not_a_module"], "returned dict; expected a flax.nnx.Module"),
    (["--model", "tests.cli_models:tiny", "--activation", "relu"], "--activation: "),
    (["--model", "tests.cli_models:tiny", "--scale", "2"], "--scale: "),
    (["--model", "tests.cli_models:tiny", "--weight-standardization"],
     "--weight-standardization: "),
]  # fmt: skip
OWN_DATA = [
    (["--dataset", "mnist"], "--dataset=mnist both name the training data"),
    (["--data", "{ws}/data.txt"], "data.txt' is unknown"),  # replaces --data above
    (["--data", "{ws}/missing.npz"], "missing.npz' is not a file"),
    (["--data", "{ws}/float-labels.npz"], "holds non-integer labels"),
    (["--data", "{ws}/no-labels.npz"], "has no array 'y'"),
    (["--loss", "nope"], "loss='nope' is unknown"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "needle"), OWN_MODEL)
def test_bad_model_specs_are_one_line_naming_the_model(args, needle, ws, capsys, monkeypatch):
    root, data = ws
    monkeypatch.chdir(REPO)
    line = _fails_cleanly(_fill([*_OWN, *args], root, data), capsys, root, needle)
    assert "model" in line


@pytest.mark.parametrize(("args", "needle"), OWN_DATA)
def test_bad_data_files_are_one_line(args, needle, ws, capsys, monkeypatch):
    root, data = ws
    monkeypatch.chdir(REPO)
    own = [*_OWN, "--model", "tests.cli_models:tiny"]
    if args[0] == "--data":  # instead of good.npz
        at = own.index("--data")
        own = own[:at] + own[at + 2 :]
    _fails_cleanly(_fill([*own, *args], root, data), capsys, root, needle)


def test_bias_of_a_run_given_in_python_says_how_to_run_it_from_python(ws, capsys):
    root, data = ws
    for run, what in (("py-run", "model and train_data were"), ("py-data", "train_data was")):
        line = _fails_cleanly(["bias", f"{root}/{run}", "--out", f"{root}/bias"], capsys, root)
        assert f"RUN_DIR={root}/{run}: its {what} given in Python" in line, line
        assert "(toolkit.studies.run_bias)" in line, line


@pytest.mark.slow  # two runs of a tiny MLP and a bias measurement
def test_train_your_model_on_a_data_file_writes_a_run_that_table_and_bias_read(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(REPO)
    x, y = _blobs(60)
    tx, ty = _blobs(30, seed=1)
    np.savez(tmp_path / "blobs.npz", x=x, y=y, x_test=tx, y_test=ty)
    np.savez(tmp_path / "train-only.npz", x=x, y=y)
    common = ["--model", "tests.cli_models:tiny", "--epochs", "1", "--batch-size", "20",
              "--noise-multiplier", "1.0", "--lr", "0.5", "--quiet"]  # fmt: skip

    def toolkit(*args) -> int:
        return launch.run(app, [str(a) for a in args])

    # Without a held-out split: trained and recorded, nothing evaluated.
    code = toolkit("train", *common, "--data", tmp_path / "train-only.npz",
                   "--out", tmp_path / "plain")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert rundir.read_summary(tmp_path / "plain").test_accuracy is None
    code = toolkit("train", *common, "--data", tmp_path / "blobs.npz", "--keep-checkpoints",
                   "1", "--out", tmp_path / "run")  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "per-class acc. std" in captured.out and "eps (rdp-classic)" in captured.out
    record = json.loads((tmp_path / "run" / rundir.CONFIG).read_text())
    assert record["kind"] == "run" and record["config"]["activation"] is None
    assert record["config"]["model"] == "tests.cli_models:tiny"
    assert record["config"]["dataset"] == str(tmp_path / "blobs.npz")
    assert [r.epoch for r in rundir.read_epochs(tmp_path / "run")] == [1]
    assert 0 <= rundir.read_summary(tmp_path / "run").test_accuracy <= 1
    # `toolkit table` reads it (the other run has no test accuracy: skipped, and said so).
    assert toolkit("table", tmp_path / "run", tmp_path / "plain") == 0
    captured = capsys.readouterr()
    (row,) = [ln for ln in captured.out.splitlines() if ln.startswith("| blobs.npz")]
    assert row.startswith("| blobs.npz | tests.cli_models:tiny | - | DP-SGD |")
    assert f"skipping run {tmp_path / 'plain'}: no numeric test_accuracy" in captured.err
    # `toolkit bias` rebuilds the model from its factory and the data from the file.
    code = toolkit("bias", tmp_path / "run", "--sample", "20", "--out", tmp_path / "b")
    assert code == 0, capsys.readouterr().err
    (measured,) = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert measured["activation"] == "tiny" and [p["epoch"] for p in measured["points"]] == [0, 1]
    assert set(measured["points"][1]["layers"]) == {"hidden", "out"}


@pytest.mark.slow  # one short audit of a tiny MLP
def test_audit_runs_on_your_model_and_data_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    x, y = _blobs(240)
    np.savez(tmp_path / "blobs.npz", x=x, y=y, x_test=x[:40], y_test=y[:40])
    code = launch.run(app, ["audit", "--model", "tests.cli_models:tiny", "--data",
                            str(tmp_path / "blobs.npz"), "--canaries", "40", "--epochs", "1",
                            "--batch-size", "40", "--noise-multiplier", "1.0", "--lr", "0.5",
                            "--quiet", "--json", "--out", str(tmp_path / "audit")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert record["config"]["model"] == "tests.cli_models:tiny"
    assert record["num_base"] == 200 and record["canaries"] == 40
    # Separable blobs: the held-out accuracy is far above chance (1/3), and reported.
    assert record["test_accuracy"] > 0.6
    assert record["consistent"] is True


def test_train_and_audit_share_one_declaration_of_each_run_option():
    """The options both commands take are declared once (`toolkit.cli._options.OPTIONS`):
    the same flag, type and default; help text as declared, or the audit's own wording."""
    import typer

    command = typer.main.get_command(app)
    train, audit = ({p.name: p for p in command.commands[c].params} for c in ("train", "audit"))
    shared = set(train) & set(audit)
    assert len(shared) >= 26 and shared <= set(OPTIONS)
    assert {k for k in train if k in OPTIONS} == set(OPTIONS)
    for name in shared:
        a, b = train[name], audit[name]
        ta, tb = a.type_descriptor, b.type_descriptor
        assert (a.opts, a.is_flag, ta.annotation, a.default) == (
            b.opts, b.is_flag, tb.annotation, b.default
        ), name  # fmt: skip
        assert ta.annotation is OPTIONS[name].kind, name
        # Each command its own declaration object: it shows that command's default.
        assert ta.parameter_info is not tb.parameter_info, name
        assert a.help == OPTIONS[name].help, name


def test_config_files_rerun_a_recorded_run_and_flags_override(ws):
    root, data = ws
    cfg = config_lib.from_flags(
        {"epochs": 3, "batch_size": 60, "data_dir": str(data), "target_epsilon": 2.0}
    )
    out = root / "recorded"
    out.mkdir()
    resolved = dataclasses.replace(cfg, noise_multiplier=1.23)  # what resolve() would record
    rundir.write_config(out, resolved, {"requested": cfg.to_dict()})
    again = config_lib.from_flags({}, file=load_settings(out / "config.json"))
    assert again == cfg  # the request, not the calibrated sigma: the run is re-run
    changed = config_lib.from_flags({"epochs": 5}, file=load_settings(out / "config.json"))
    assert changed == dataclasses.replace(cfg, epochs=5)
    toml = root / "run.toml"
    toml.write_text('preset = "mnist-tanh"\nepochs = 2\nlr = 1\n[activation]\nname = "relu"\n')
    from_toml = config_lib.from_flags({"lr": 0.25}, file=load_settings(toml))
    preset = config_lib.preset("mnist-tanh")
    assert (from_toml.dataset, from_toml.batch_size) == (preset["dataset"], preset["batch_size"])
    assert (from_toml.epochs, from_toml.lr, from_toml.activation.name) == (2, 0.25, "relu")


def test_help_shows_a_default_for_every_option():
    import typer

    command = typer.main.get_command(app)
    assert len(command.commands) >= 8
    for name, sub in command.commands.items():
        for param in sub.params:
            if getattr(param, "is_flag", False) or param.required or param.name == "help":
                continue
            shown = param.default is not None or isinstance(param.show_default, str)
            assert shown, f"toolkit {name} --{param.name} shows no default"
    from typer.testing import CliRunner

    text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    assert "(rdp-classic)" in text and "(fashion-mnist)" in text and "(256)" in text


# --- 2. output paths --------------------------------------------------------------------------

OUTPUTS = [
    (["train", *PRIVATE, "--out", "{ws}/a-file/run"], "is a file"),
    (["train", *PRIVATE, "--out", "{ws}/a-file"], "is not a directory"),
    (["train", *PRIVATE, "--out", "{ws}/full"], "not empty"),
    (["audit", *PRIVATE, "--out", "{ws}/a-file/audit"], "is a file"),
    (["audit", *PRIVATE, "--out", "{ws}/full"], "not empty"),
    (["sweep", "{ws}/spec.toml", "--root", "{ws}/a-file"], "is a file"),
    (["sweep", "{ws}/spec.toml", "--root", "{ws}/a-file/sub"], "is a file"),
    (["table", "{ws}/run", "--out", "{ws}/t"], "already exists"),
    (["table", "{ws}/run", "--out", "{ws}/t.md"], "already exists"),
    (["table", "{ws}/run", "--out", "{ws}/dir"], "is a directory"),
    (["table", "{ws}/run", "--out", "{ws}/a-file/t"], "is a file"),
    (["pareto", "{ws}/run", "--out", "{ws}/fig"], "already exists"),
    (["pareto", "{ws}/run", "--out", "{ws}/fig.png"], "already exists"),
    (["pareto", "{ws}/run", "--out", "{ws}/a-file/p"], "is a file"),
    (["figures", "{ws}/run", "--kind", "grid", "--out", "{ws}/fig"], "already exists"),
    (["figures", "{ws}/run", "--kind", "grid", "--out", "{ws}/a-file/f"], "is a file"),
    (["figures", "{ws}/run", "--kind", "nope", "--out", "{ws}/new"], "--kind"),
    (["bound-check", "--quick", "--json", "{ws}/b.json"], "already exists"),
    (["bound-check", "--quick", "--json", "{ws}/a-file/b.json"], "is a file"),
    (["bound-check", "--quick", "--json", "{ws}/full"], "is a directory"),
    (["bound-check", "--quick", "--plot", "{ws}/fig"], "already exists"),
    (["bound-check", "--quick", "--plot", "{ws}/a-file/b"], "is a file"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "needle"), OUTPUTS)
def test_bad_output_paths(args, needle, ws, capsys):
    root, data = ws
    _fails_cleanly(_fill(args, root, data), capsys, root, needle)


# Run in a child that has dropped CAP_DAC_OVERRIDE (root ignores file modes otherwise).
_READ_ONLY_CHILD = """
import contextlib, ctypes, io, json, os, sys
if sys.argv[1] == "drop":
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; 24 = PR_CAPBSET_DROP
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            sys.exit(77)
    os.execv(sys.executable, [sys.executable, "-c", CODE, "run", *sys.argv[2:]])
from toolkit.cli import app
from toolkit.cli import run
results = []
for args in json.loads(sys.argv[2]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run(app, args)
    results.append([code, err.getvalue(), out.getvalue()])
print(json.dumps(results))
"""


@pytest.mark.slow  # a child interpreter that imports jax
def test_read_only_outputs_on_every_command(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("mine")
    cases = [
        ["train", *PRIVATE, "--out", f"{ro}/run"],
        ["audit", *PRIVATE, "--out", f"{ro}/audit"],
        ["sweep", f"{ro}/spec.toml", "--root", f"{ro}/sweep"],
        ["sweep", f"{ro}/spec.toml", "--root", f"{ro}"],
        ["table", f"{ro}", "--out", f"{ro}/t"],
        ["pareto", f"{ro}", "--out", f"{ro}/p"],
        ["figures", f"{ro}", "--kind", "grid", "--out", f"{ro}/f"],
        ["bound-check", "--quick", "--json", f"{ro}/b.json"],
        ["bound-check", "--quick", "--plot", f"{ro}/b"],
    ]
    ro.chmod(0o555)
    try:
        before = _tree(ro)
        code = "CODE = " + repr(_READ_ONLY_CHILD) + "\n" + _READ_ONLY_CHILD
        stage = "drop" if os.geteuid() == 0 else "run"
        proc = subprocess.run(
            [sys.executable, "-c", code, stage, json.dumps(cases)], cwd=REPO,
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )  # fmt: skip
        if proc.returncode == 77:
            pytest.skip("cannot drop CAP_DAC_OVERRIDE here, so root ignores read-only modes")
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        assert _tree(ro) == before
    finally:
        ro.chmod(0o755)
    for args, (code, err, _) in zip(cases, results):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (args, code, err)
        assert lines[0].startswith("error: ") and "not writable" in lines[0], (args, lines)


@pytest.mark.parametrize(
    ("given", "suffixes", "names"),
    [
        ("figs/pareto-eps2.7", (".png", ".pdf"), ["pareto-eps2.7.png", "pareto-eps2.7.pdf"]),
        ("figs/pareto-eps2.7.png", (".png", ".pdf"), ["pareto-eps2.7.png", "pareto-eps2.7.pdf"]),
        ("a.b.c", (".md", ".csv"), ["a.b.c.md", "a.b.c.csv"]),
        ("t.CSV", (".md", ".csv"), ["t.md", "t.csv"]),
        ("run-1e-5", (".md", ".csv"), ["run-1e-5.md", "run-1e-5.csv"]),
    ],
)
def test_names_keep_their_dots(given, suffixes, names):
    assert [p.name for p in outputs.file_set(given, suffixes)] == names


def test_figures_and_bound_check_plots_keep_their_dots(tmp_path):
    from analysis.plots import figure_paths

    written = save_figure(Figure(figsize=(1, 1)), tmp_path / "pareto-eps2.7")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto-eps2.7.pdf", "pareto-eps2.7.png"]
    assert written[0].read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in figure_paths("x/theory-C0.1")] == [
        "theory-C0.1.png", "theory-C0.1.pdf",
        "theory-C0.1-tightness.png", "theory-C0.1-tightness.pdf",
    ]  # fmt: skip


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        io_lib.atomic_write_text(tmp_path / "a.txt", "x")
        save_figure(Figure(figsize=(1, 1)), tmp_path / "fig")
    finally:
        os.umask(old)
    for name in ("a.txt", "fig.png", "fig.pdf"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


# --- 3. numbers -------------------------------------------------------------------------------

_ACC = ["account", "--noise-multiplier", "1"]
NUMBERS = [
    ([*_ACC, "--epochs", "inf"], "--epochs=inf"),
    ([*_ACC, "--epochs", "nan"], "--epochs=nan"),
    ([*_ACC, "--epochs", "-1"], "--epochs=-1"),
    ([*_ACC, "--epochs", "0"], "--epochs=0"),
    ([*_ACC, "--epochs", "1e20"], "(0, 10000]"),
    ([*_ACC, "--epochs", "0.001"], "gives 0 steps"),
    ([*_ACC, "--epochs", "5000", "--batch-size", "1"], "1000000 steps"),
    ([*_ACC, "--n", "1000000000000"], "--n=1000000000000"),
    ([*_ACC, "--n", "0"], "--n=0"),
    ([*_ACC, "--n", "-5"], "--n=-5"),
    ([*_ACC, "--batch-size", "0"], "--batch-size=0"),
    ([*_ACC, "--batch-size", "70000"], "N=60000"),
    ([*_ACC, "--delta", "nan"], "--delta=nan"),
    ([*_ACC, "--delta", "1"], "--delta=1"),
    ([*_ACC, "--delta", "-1e-5"], "--delta"),
    (["account", "--noise-multiplier", "inf"], "--noise-multiplier=inf"),
    (["account", "--noise-multiplier", "nan"], "--noise-multiplier=nan"),
    (["account", "--noise-multiplier", "-1"], "--noise-multiplier=-1"),
    (["account", "--noise-multiplier", "1e300"], "1e+06"),
    (["account", "--target-epsilon", "inf"], "--target-epsilon=inf"),
    (["account", "--target-epsilon", "nan"], "--target-epsilon=nan"),
    (["account", "--target-epsilon", "0"], "--target-epsilon=0"),
    (["account", "--target-epsilon", "1e9"], "(0, 1000]"),
    (["account"], "--noise-multiplier"),
    (["account", "--n", "1.5", "--noise-multiplier", "1"], "--n"),
    (["sweep", "{ws}/spec.toml", "--root", "{ws}/new", "--workers", "0"], "--workers=0"),
    (["sweep", "{ws}/spec.toml", "--root", "{ws}/new", "--workers", "100000"], "[1, 1024]"),
    (["bound-check", "--quick", "--radius", "inf"], "--radius"),
    (["bound-check", "--quick", "--radius", "nan"], "--radius"),
    (["bound-check", "--quick", "--radius", "-1"], "--radius"),
    (["bound-check", "--quick", "--n", "1"], "--n"),
    (["bound-check", "--quick", "--n", "100000000"], "--n"),
    (["bound-check", "--quick", "--dim", "0"], "--dim"),
    (["bound-check", "--quick", "--seed", "-1"], "--seed"),
    (["bound-check", "--quick", "--temperatures", "1,inf"], "temperatures"),
    (["bound-check", "--quick", "--clip-norms", "nan"], "clip-norms"),
]  # fmt: skip

_TRAIN = ["train", "--data-dir", "{data}", "--out", "{ws}/new", "--quiet"]
TRAIN_NUMBERS = [
    (["--epochs", "0", *PRIVATE], "epochs=0"),
    (["--epochs", "-3", *PRIVATE], "epochs=-3"),
    (["--epochs", "100000000000000000000", *PRIVATE], "[1, 10000]"),
    (["--epochs", "10000", "--batch-size", "1", *PRIVATE], "steps"),
    (["--lr", "inf", *PRIVATE], "lr=inf"),
    (["--lr", "nan", *PRIVATE], "lr=nan"),
    (["--lr", "-1", *PRIVATE], "lr=-1"),
    (["--momentum", "nan", *PRIVATE], "momentum=nan"),
    (["--momentum", "1", *PRIVATE], "momentum=1"),
    (["--clip-norm", "nan", *PRIVATE], "clip_norm=nan"),
    (["--clip-norm", "-1", *PRIVATE], "clip_norm=-1"),
    (["--clip-norm", "inf", *PRIVATE], "clip_norm=inf"),
    (["--noise-multiplier", "inf"], "noise_multiplier=inf"),
    (["--noise-multiplier", "nan"], "noise_multiplier=nan"),
    (["--noise-multiplier", "-0.5"], "noise_multiplier=-0.5"),
    (["--noise-multiplier", "1e300"], "[0, 1e6]"),
    (["--target-epsilon", "inf"], "target_epsilon=inf"),
    (["--target-epsilon", "nan"], "target_epsilon=nan"),
    (["--target-epsilon", "0"], "target_epsilon=0"),
    (["--target-epsilon", "-1"], "target_epsilon=-1"),
    ([], "exactly one of noise_multiplier and target_epsilon"),
    (["--target-epsilon", "2", "--noise-multiplier", "1"], "exactly one"),
    (["--delta", "0", *PRIVATE], "delta=0"),
    (["--delta", "nan", *PRIVATE], "delta=nan"),
    (["--batch-size", "0", *PRIVATE], "batch_size=0"),
    (["--batch-size", "100000000", *PRIVATE], "batch_size=100000000"),
    (["--batch-size", "601", *PRIVATE], "training examples"),
    (["--max-physical-batch", "0", *PRIVATE], "max_physical_batch=0"),
    (["--seed", "-1", *PRIVATE], "seed=-1"),
    (["--limit-train", "0", *PRIVATE], "limit_train=0"),
    (["--validation", "-1", *PRIVATE], "validation=-1"),
    (["--ema-decay", "1", *PRIVATE], "ema_decay=1"),
    (["--ema-decay", "nan", *PRIVATE], "ema_decay=nan"),
    (["--warmup-epochs", "-1", *PRIVATE], "warmup_epochs=-1"),
    (["--augmult", "65", *PRIVATE], "augmult=65"),
    (["--augmult", "-1", *PRIVATE], "augmult=-1"),
    (["--activation", "tempered", "--scale", "inf", *PRIVATE], "scale=inf"),
    (["--activation", "tempered", "--inverse-temp", "nan", *PRIVATE], "inverse_temp=nan"),
    (["--activation", "tempered", "--offset", "-inf", *PRIVATE], "offset=-inf"),
    (["--scale", "2", *PRIVATE], "--activation tempered"),
]  # fmt: skip

AUDIT_NUMBERS = [
    (["--canaries", "0"], "canaries=0"),
    (["--canaries", "-5"], "canaries=-5"),
    (["--canaries", "100000000"], "canaries=100000000"),
    (["--confidence", "0"], "confidence=0"),
    (["--confidence", "1"], "confidence=1"),
    (["--confidence", "nan"], "confidence=nan"),
    (["--epochs", "0"], "epochs=0"),
    (["--noise-multiplier", "nan"], "noise_multiplier=nan"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "needle"), NUMBERS)
def test_bad_numbers(args, needle, ws, capsys):
    root, data = ws
    _fails_cleanly(_fill(args, root, data), capsys, root, needle)


@pytest.mark.parametrize(("args", "needle"), TRAIN_NUMBERS)
def test_bad_train_numbers(args, needle, ws, capsys):
    root, data = ws
    _fails_cleanly(_fill([*_TRAIN, *args], root, data), capsys, root, needle)


@pytest.mark.parametrize(("args", "needle"), AUDIT_NUMBERS)
def test_bad_audit_numbers(args, needle, ws, capsys):
    root, data = ws
    base = ["audit", "--data-dir", str(data), "--limit-train", "300", "--out", f"{root}/new"]
    if "--noise-multiplier" not in args:
        base += PRIVATE
    if "--canaries" not in args:
        base += ["--canaries", "100"]
    _fails_cleanly([*base, *args, "--quiet"], capsys, root, needle)


def test_account_at_the_step_limit_answers(capsys):
    """The largest accepted `account` call finishes (pld at 1e6 steps: seconds)."""
    code = launch.run(app, ["account", "--n", "10000", "--batch-size", "10", "--epochs", "1000",
                            "--noise-multiplier", "1"])  # fmt: skip
    assert code == 0 and "pld" in capsys.readouterr().out


# --- 4. progress, logs, allocator ------------------------------------------------------------


def test_compile_time_is_the_excess_of_slow_steps():
    assert compile_time([12.0, 1.0, 1.1, 0.9, 1.0]) == pytest.approx(11.0)
    assert compile_time([12.0, 1.0, 5.0, 1.0, 1.0]) == pytest.approx(15.0)  # a retrace too
    assert compile_time([1.0, 1.2, 0.9]) == 0.0  # no step stands out: nothing compiled
    assert compile_time([3.0]) == 3.0


def test_old_epoch_records_without_compile_time_still_load():
    record = EpochRecord(1, 10, 0.5, 0.0, {"rdp": 1.0}, "rdp", "poisson", "rdp, Poisson sampling",
                         GradNormStats(1.0, 1.0, 2.0, 0.5, 0.0), "vmap", 60.0, 2.0,
                         {"test_accuracy": 0.5}, compile_time_s=3.5)  # fmt: skip
    flat = rundir.record_to_json(record)
    del flat["compile_time_s"]
    old = rundir.record_from_json(EpochRecord, flat, where="x")
    assert old == dataclasses.replace(record, compile_time_s=None)


def test_accounting_convergence_notes_are_hidden_and_real_warnings_shown(caplog):
    """q = 0.125, sigma = 0.5 makes dp-accounting's RDP series fail to converge for some orders."""
    from absl import logging as absl_logging

    from toolkit.privacy import accounting

    kw = dict(noise_multiplier=0.5, sampling_prob=0.125, steps=320, delta=1e-5)
    absl = logging.getLogger("absl")
    with caplog.at_level(logging.WARNING):
        eps = accounting.epsilon(accountant="rdp", **kw)
        absl_logging.warning("Negative Renyi divergence of %s, probably caused by ...", -1.0)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("failed to converge" in m for m in messages)
    assert any(m.startswith("Negative Renyi divergence") for m in messages)
    # Without the filter the same call does log the note (the check above can fail).
    filters = [f for f in absl.filters if isinstance(f, logs.AccountingNoiseFilter)]
    for f in filters:
        absl.removeFilter(f)
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert accounting.epsilon(accountant="rdp", **kw) == eps
        assert any("failed to converge" in r.getMessage() for r in caplog.records)
    finally:
        logs.quiet_accounting_logs()


@pytest.mark.parametrize(
    ("argv", "environ", "reexec"),
    [
        (["toolkit", "train"], {}, True),
        (["toolkit", "audit"], {"PATH": "/bin"}, True),
        (["toolkit", "sweep"], {}, True),
        (["toolkit", "account"], {}, False),
        (["toolkit"], {}, False),
        (["toolkit", "train"], dict(launch.TUNED_MALLOC), False),
        (["toolkit", "train"], {"TOOLKIT_MALLOC": "default"}, False),
    ],
)
def test_allocator_env(argv, environ, reexec):
    env = launch.allocator_env(argv, environ)
    assert (env is not None) == reexec
    if env is not None:
        assert {k: env[k] for k in launch.TUNED_MALLOC} == launch.TUNED_MALLOC
        assert {k: env[k] for k in environ} == environ  # the user's values are kept


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["toolkit", "account"], {}, set()),  # only the commands that train
        (["toolkit", "train"], {"TOOLKIT_COMPILATION_CACHE": "off"}, set()),
        (["toolkit", "sweep"], {"JAX_COMPILATION_CACHE_DIR": "/mine"}, set(launch.CACHE_SETTINGS)),
        (
            ["toolkit", "audit"],
            {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"},
            {"JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE"},
        ),
    ],
)
def test_compilation_cache_env_keeps_the_users_values(
    argv, environ, expected, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # where platformdirs puts the cache
    env = launch.compilation_cache_env(argv, environ)
    assert set(env) == expected  # never a variable the user set
    if "JAX_COMPILATION_CACHE_DIR" in env:
        assert Path(env["JAX_COMPILATION_CACHE_DIR"]).is_dir()
        assert env["JAX_COMPILATION_CACHE_DIR"].startswith(str(tmp_path))


def test_no_compilation_cache_where_the_user_cache_is_not_writable(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")  # the cache folder would have to be made inside a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert launch.compilation_cache_env(["toolkit", "train"], {}) == {}


def test_user_malloc_values_win():
    env = launch.allocator_env(["toolkit", "train"], {"MALLOC_ARENA_MAX": "4"})
    assert env["MALLOC_ARENA_MAX"] == "4" and env["MALLOC_MMAP_MAX_"] == "0"


TUNED_XLA = " ".join(launch.TUNED_XLA_FLAGS)


@pytest.mark.parametrize(
    ("argv", "environ", "jaxlib", "expected"),
    [
        (["toolkit", "train"], {}, "0.10.2", TUNED_XLA),
        (
            ["toolkit", "sweep"],
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            "0.10.2",
            f"--xla_force_host_platform_device_count=2 {TUNED_XLA}",  # the user's flags first
        ),
        # the user set the flag: theirs wins
        (
            ["toolkit", "audit"],
            {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="},
            "0.10.2",
            None,
        ),
        (["toolkit", "account"], {}, "0.10.2", None),  # only the commands that train
        (["toolkit", "train"], {"TOOLKIT_XLA_FLAGS": "default"}, "0.10.2", None),
        (["toolkit", "train"], {}, "0.7.2", None),  # may not know the flag: XLA would abort
    ],
)
def test_xla_flags_env(argv, environ, jaxlib, expected):
    env = launch.xla_flags_env(argv, environ, jaxlib=jaxlib)
    assert env == ({} if expected is None else {"XLA_FLAGS": expected})


def test_tuned_xla_flags_parse_and_move_convolutions_off_ynnpack():
    """On the installed jaxlib, if `xla_flags_env` adds them: XLA knows the flags (it aborts
    on one it does not) and they do what docs/xla_cpu.md measured: a convolution YNNPACK
    runs by default runs outside YNNPACK's fusions (re-measure if this fails)."""
    env = launch.xla_flags_env(["toolkit", "train"], {})
    code = (
        "import jax, jax.numpy as jnp\n"
        "x, k = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))\n"
        "conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "hlo = jax.jit(conv).lower(x, k).compile().as_text()\n"
        "entry = hlo[hlo.index('ENTRY'):]\n"
        "print('ynn' if '__ynn_fusion' in entry else 'xla')\n"
    )
    if not env:
        pytest.skip("the installed jaxlib is not one TUNED_XLA_FLAGS were measured on")
    seen = {}
    for name, flags in [("default", ""), ("tuned", env["XLA_FLAGS"])]:
        run_env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        seen[name] = proc.stdout.split()[-1]
    assert seen == {"default": "ynn", "tuned": "xla"}


@pytest.mark.slow
def test_cli_run_without_a_terminal(tmp_path, tiny_data_dir):
    """`python -m toolkit train` in a pipe: allocator set by re-exec, one flushed line per
    epoch after a 'compiling' line, compile time apart, no absl convergence notes,
    sigma = 0 reported as no DP guarantee, files 0666 & ~umask."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env = {k: v for k, v in env.items() if not k.startswith(("JAX_COMPILATION", "TOOLKIT_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "cache"))
    args = ["--data-dir", tiny_data_dir, "--epochs", "2", "--batch-size", "75",
            "--limit-train", "300", "--noise-multiplier", "0", "--max-physical-batch", "80",
            "--out", out]  # fmt: skip
    code = "import os; os.umask(0o027); from toolkit.cli._launch import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0] == "training: compiling the training step ..."
    epochs = [ln for ln in lines if ln.startswith("training epoch")]
    assert len(epochs) == 2 and "compiling)" in epochs[0] and "compiling" not in epochs[1]
    assert all("eps inf (sigma = 0: no DP guarantee)" in ln for ln in epochs)
    assert "failed to converge" not in proc.stderr and "Traceback" not in proc.stderr
    assert "no DP guarantee" in proc.stdout and "Poisson sampling" not in proc.stdout
    record = json.loads((out / "config.json").read_text())
    assert record["provenance"]["malloc"] == launch.TUNED_MALLOC
    xla_flags = record["provenance"]["xla_flags"]  # TUNED_XLA_FLAGS after the user's, if any
    assert xla_flags == launch.xla_flags_env(["toolkit", "train"], env).get(
        "XLA_FLAGS", env.get("XLA_FLAGS")
    )
    cache = record["provenance"]["compilation_cache"]  # on by default, under the user cache
    assert cache["dir"].startswith(str(tmp_path / "cache")) and any(Path(cache["dir"]).iterdir())
    assert record["privacy"] == "sigma = 0: eps = inf, no DP guarantee"
    history = rundir.read_epochs(out)
    assert history[0].compile_time_s > 0 and history[1].compile_time_s is None
    summary = rundir.read_summary(out)
    assert summary.compile_time_s == history[0].compile_time_s
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
