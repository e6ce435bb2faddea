"""A grid point that fails (diverges, or a one-line error when it starts) does not stop the
sweep: it is recorded in ROOT/sweep-failures.json, the other points run, every failure is
listed at the end and the command exits non-zero (3 if a point diverged, else 2). A re-run
skips recorded failures unless --retry-failed. A point held by another process is 'busy',
not a failure. Tiny runs: an MLP on a data file of 60 examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from experiments import sweep
from tests.experiments import sweep_models
from toolkit.base import ToolkitError
from toolkit.cli import app
from toolkit.runs import rundir

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
DIVERGES, TRAINS = "lr=1e+30", "lr=0.1"  # run names of the grid lr = [1e30, 0.1]
BIG = "batchsize=100"  # of the grid batch_size = [20, 100]


def _data(path: Path, n: int) -> Path:
    """`n` examples in separable blobs, and 20 held out."""
    rng = np.random.default_rng(0)
    y = np.arange(n + 20) % sweep_models.CLASSES
    centres = 3.0 * rng.standard_normal((sweep_models.CLASSES, sweep_models.FEATURES))
    x = (centres[y] + rng.standard_normal((n + 20, sweep_models.FEATURES))).astype(np.float32)
    y = y.astype(np.int32)
    np.savez(path, x=x[:n], y=y[:n], x_test=x[n:], y_test=y[n:])
    return path


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A data file of 60 examples and the sweep file `spec(grid)` writes; run from the repo
    root, where the model's import path resolves."""
    monkeypatch.chdir(REPO)
    data = _data(tmp_path / "blobs.npz", 60)

    def spec(grid: str, **base) -> Path:
        settings = {"model": "tests.experiments.sweep_models:relu_mlp", "dataset": str(data),
                    "epochs": 2, "batch_size": 20, "private": False, "lr": 0.1, **base}  # fmt: skip
        lines = ["[base]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items()), "[grid]"]
        path = tmp_path / "sweep.toml"
        path.write_text("\n".join([*lines, grid, ""]))
        return path

    return tmp_path, spec


def _sweep(*args) -> tuple[int, str]:
    res = runner.invoke(app, ["sweep", *map(str, args)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res.exit_code, res.output


def _failures(root: Path) -> dict:
    return json.loads((root / sweep.FAILURES).read_text())


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: spawns
def test_a_diverged_point_is_recorded_and_the_sweep_goes_on(ws, workers):
    tmp, spec = ws
    root = tmp / "root"
    code, out = _sweep(spec("lr = [1e30, 0.1]"), "--root", root, "--workers", workers)
    assert code == 3, out
    assert (root / TRAINS / rundir.SUMMARY).exists()  # the point after the diverged one ran
    assert not (root / DIVERGES / rundir.SUMMARY).exists()
    assert (root / DIVERGES / rundir.CONFIG).exists()  # kept for inspection
    (record,) = _failures(root).values()
    assert set(_failures(root)) == {DIVERGES} and record["kind"] == "diverged"
    assert record["error"].startswith("training diverged in epoch")
    assert record["config"]["lr"] == 1e30 and record["time"]
    report = out[out.index("error: ") :].splitlines()
    assert report[0] == "error: 1 of 2 sweep points did not finish (exit 3: a point diverged):"
    assert report[1].startswith(f"  {root / DIVERGES}: diverged: training diverged in epoch")
    assert "--retry-failed" in report[-1] and "diverges again" in report[-1]


def test_a_re_run_skips_failures_and_retry_failed_runs_them_again(ws):
    """batch_size=100 of 60 examples fails when the run starts (exit 2); with more data,
    --retry-failed trains it and its record goes."""
    tmp, spec = ws
    root = tmp / "root"
    sweep_file = spec("batch_size = [20, 100]")
    code, out = _sweep(sweep_file, "--root", root)
    assert code == 2, out
    assert (root / "batchsize=20" / rundir.SUMMARY).exists()
    assert not (root / BIG).exists()  # failed before it wrote anything
    assert _failures(root)[BIG]["kind"] == "error"
    message = _failures(root)[BIG]["error"]
    assert message == "batch_size=100 must be <= the number of training examples (60)."
    assert f"  {root / BIG}: failed: {message}" in out.splitlines()

    _data(tmp / "blobs.npz", 120)  # the cause fixed outside the sweep
    code, out = _sweep(sweep_file, "--root", root, "--dry-run")
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("1 failed earlier (skipped; --retry-failed runs them)")
    (row,) = [i for i, line in enumerate(lines) if f"{BIG}:" in line]
    assert (
        lines[row].split()[0] == "failed" and lines[row + 1].strip() == f"failed earlier: {message}"
    )
    before = _mtimes(root)
    code, out = _sweep(sweep_file, "--root", root)  # skipped, not run: still exit 2
    assert code == 2 and f"{root / BIG}: failed earlier: {message}" in out
    assert _mtimes(root) == before

    code, out = _sweep(sweep_file, "--root", root, "--retry-failed", "--dry-run")
    (line,) = [line for line in out.splitlines() if f"{BIG}:" in line]
    assert code == 0 and line.split()[0] == "train"
    code, out = _sweep(sweep_file, "--root", root, "--retry-failed")
    assert code == 0, out
    assert (root / BIG / rundir.SUMMARY).exists()
    assert not (root / sweep.FAILURES).exists()  # its only record went with the success


def test_retry_failed_resumes_a_diverged_point_which_diverges_again(ws):
    tmp, spec = ws
    root = tmp / "root"
    sweep_file = spec("lr = [1e30]")
    assert _sweep(sweep_file, "--root", root)[0] == 3
    first = _failures(root)[DIVERGES]
    code, out = _sweep(sweep_file, "--root", root, "--retry-failed", "--dry-run")
    (line,) = [line for line in out.splitlines() if f"{DIVERGES}:" in line]
    assert code == 0 and line.split()[0] == "resume"  # from its checkpoint of epoch 1
    assert "diverges again" in out
    time.sleep(1.1)  # the record's time has seconds
    code, out = _sweep(sweep_file, "--root", root, "--retry-failed")
    assert code == 3 and "diverged in epoch 2" in out
    again = _failures(root)[DIVERGES]
    assert again["error"] == first["error"] and again["time"] > first["time"]


def test_a_bug_in_a_point_propagates_with_its_traceback(ws, monkeypatch):
    from toolkit import training

    tmp, spec = ws

    def bug(cfg, *, out):
        raise RuntimeError("a bug")

    monkeypatch.setattr(training, "train", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        sweep.run_sweep(sweep.load(spec("lr = [1e30, 0.1]")), tmp / "root")
    assert not (tmp / "root" / sweep.FAILURES).exists()


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # JAX's; the child execs at once
def test_a_point_held_by_another_process_is_busy_not_failed(ws):
    tmp, spec = ws
    root = tmp / "root"
    held = root / TRAINS
    hold = (
        "import sys; from pathlib import Path; import toolkit.runs as r\n"
        f"with r.claim(Path({str(held)!r}), new=True):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out = _sweep(spec("lr = [0.1, 0.05]"), "--root", root)
    finally:
        holder.communicate("")
    assert code == 2, out
    assert (root / "lr=0.05" / rundir.SUMMARY).exists()
    assert not (root / sweep.FAILURES).exists()  # busy is not a failure
    (line,) = [line for line in out.splitlines() if line.startswith(f"  {held}: busy: ")]
    assert f"pid {holder.pid}" in line
    assert out.splitlines()[-1] == (
        "busy: held by another process (not recorded as a failure); run the sweep again "
        "when it finishes."
    )
    code, out = _sweep(spec("lr = [0.1, 0.05]"), "--root", root)  # released: it runs now
    assert code == 0 and (held / rundir.SUMMARY).exists()


def test_a_busy_error_is_told_apart_by_its_type_name(tmp_path, monkeypatch):
    """The name-based check, without the lock: a ToolkitError subclass named RunDirBusy."""
    from toolkit import training

    class RunDirBusy(ToolkitError):
        pass

    def busy(cfg, *, out):
        raise RunDirBusy(f"{out} is in use: another toolkit process (pid {os.getpid()}).")

    monkeypatch.setattr(training, "train", busy)
    runs = sweep.expand({"base": {"noise_multiplier": 1.0}, "grid": {"seed": [0]}})
    seen = []
    status = sweep.run_sweep(runs, tmp_path, on_done=lambda *a: seen.append(a))
    assert status == {"seed=0": "busy"} and sweep.exit_code(status) == 2
    assert seen == [("seed=0", "busy", f"{tmp_path / 'seed=0'} is in use: another toolkit "
                                       f"process (pid {os.getpid()}).")]  # fmt: skip
    assert not (tmp_path / sweep.FAILURES).exists()
