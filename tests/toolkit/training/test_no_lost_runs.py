"""No run is lost or overwritten: one process per run directory, resume keeps every
finished record, a bad setting leaves nothing, and each message says what is there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.configs import TINY_MODEL, cut_after_epoch_1, tiny_config
from toolkit.base import ToolkitError
from toolkit.cli import app
from toolkit.nn import ActivationSpec
from toolkit.runs import RunDirBusy, claim, rundir
from toolkit.training import TrainingDiverged, resume, train

runner = CliRunner()
_HOLD = """
import sys
from pathlib import Path
from toolkit.runs import claim
with claim(Path(sys.argv[1]), new=sys.argv[2] == "new"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _holder(out: Path, *, new: bool) -> subprocess.Popen:
    """Another process that holds `out` (as a running `toolkit train` does) until told."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out), "new" if new else "old"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


def test_second_run_on_a_held_directory_is_refused_and_loses_nothing(tiny_data_dir, tmp_path):
    """Two `toolkit train` on one --out: the second fails at once naming the holder's pid,
    writes nothing, and the first one's run is whole; after it, the directory is free."""
    out = tmp_path / "run"
    proc = _holder(out, new=True)
    try:
        cfg = tiny_config(tiny_data_dir, epochs=1, **TINY_MODEL)
        t0 = time.perf_counter()
        with pytest.raises(RunDirBusy, match=f"pid {proc.pid}"):
            train(cfg, out=out)
        assert time.perf_counter() - t0 < 5  # before any data or model set-up
        assert [p.name for p in out.iterdir()] == [rundir.LOCK]  # the holder's lock only
    finally:
        _release(proc)
    assert not (out / rundir.LOCK).exists()  # released and removed
    train(tiny_config(tiny_data_dir, epochs=1, **TINY_MODEL), out=out)
    assert (out / rundir.SUMMARY).exists()


def test_resume_of_a_held_run_is_refused(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.out, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = _holder(run, new=False)
    try:
        with pytest.raises(RunDirBusy, match="is in use"):
            resume(run)
    finally:
        _release(proc)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_claim_in_one_process_excludes_a_second_claim(tmp_path):
    """flock excludes two open file descriptions even in one process: the same guard."""
    out = tmp_path / "run"
    with claim(out, new=True), pytest.raises(RunDirBusy), claim(out, new=False):
        pass
    with claim(out, new=False):  # free again
        pass


@pytest.mark.parametrize("missing", ["checkpoint", "checkpoint-behind"])
def test_resume_never_overwrites_finished_records(tiny_run, tmp_path, missing):
    """Records without a checkpoint that holds them: resume refuses, every byte stays."""
    if missing == "checkpoint":
        run = shutil.copytree(tiny_run.out, tmp_path / "run")
        (run / rundir.CHECKPOINT).unlink()
        needle = "checkpoint.npz is missing"
    else:  # epochs.jsonl has both epochs, the checkpoint only the first
        full = tiny_config(tiny_run.config.data_dir, keep_checkpoints=1)
        source = tmp_path / "kept"
        train(full, out=source)
        run = cut_after_epoch_1(source, tmp_path / "run")
        shutil.copy(source / rundir.EPOCHS, run / rundir.EPOCHS)
        needle = "epochs.jsonl has 2 finished epoch"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ToolkitError, match=needle):
        resume(run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    result = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 2 and "overwrite those records" in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_bad_setting_leaves_no_directory_behind(tiny_data_dir, tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(ToolkitError, match="limit_train=601 is more than the 600"):
        train(tiny_config(tiny_data_dir, limit_train=601), out=out)
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ToolkitError, match="clip_norm"):
        train(tiny_config(tiny_data_dir, clip_norm=-1.0), out=empty)
    assert list(empty.iterdir()) == []  # the folder was there: it stays, empty


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_out_that_cannot_be_created_is_named_before_any_work(tiny_data_dir, monkeypatch):
    import toolkit.training._run as run_module

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before --out was checked")

    monkeypatch.setattr(run_module, "load_data", no_data)
    with pytest.raises(ToolkitError, match=r"--out=/proc/x cannot be created"):
        train(tiny_config(tiny_data_dir), out=Path("/proc/x"))


def test_fit_refuses_an_empty_out(tiny_data_dir, tmp_path, monkeypatch):
    import numpy as np

    from toolkit import fit, optimizer
    from toolkit.training._sources import load_data

    monkeypatch.chdir(tmp_path)  # an empty folder: "" would have become it
    data = load_data(tiny_config(tiny_data_dir, limit_train=60))
    with pytest.raises(ToolkitError, match="out=''"):
        fit(
            "tests.zoo:tiny_mlp", (data.train_images.astype(np.float32) / 255, data.train_labels),
            optimizer=optimizer("sgd", lr=0.1), batch_size=30, epochs=1, clip_norm=1.0,
            noise_multiplier=1.0, out="",
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("epochs_done", [0, 1])
def test_divergence_message_says_what_the_directory_holds(tiny_data_dir, tmp_path, epochs_done):
    """A run that diverges before its first epoch ends has no checkpoint, and says so.

    A loss that is never finite stops it in epoch 1; ReLU at lr 1e30 in epoch 2."""
    if epochs_done == 0:
        model = dict(TINY_MODEL, loss="tests.zoo:nan_loss")
    else:
        model = dict(activation=ActivationSpec("relu"))
    cfg = tiny_config(
        tiny_data_dir, epochs=3, lr=1e30, private=False, noise_multiplier=None, **model
    )
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, out=out)
    done = len(rundir.read_epochs(out))
    if done == 0:
        assert "no epoch finished, so" in str(info.value) and "holds no checkpoint" in str(
            info.value
        )
        assert not (out / rundir.CHECKPOINT).exists()
    else:
        assert f"the checkpoint of epoch {done} is kept in {out}" in str(info.value)
        assert (out / rundir.CHECKPOINT).exists()
    assert (done == 0) == (epochs_done == 0), (done, str(info.value))


def test_a_full_disk_when_claiming_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """The lock file's pid cannot be written (ENOSPC): a one-line error, no directory."""
    import errno

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "pwrite", full)
    out = tmp_path / "new" / "run"
    full_disk = "cannot be written \\(No space left on device\\)"
    with pytest.raises(ToolkitError, match=full_disk), claim(out, new=True):
        pass
    assert not (tmp_path / "new").exists()


_TERM = """
import sys, time
from pathlib import Path
from toolkit.cli._launch import exit_on_sigterm
from toolkit.runs import claim
exit_on_sigterm()
with claim(Path(sys.argv[1]), new=True):
    print("held", flush=True)
    time.sleep(60)
"""


def test_sigterm_before_the_config_is_written_leaves_nothing(tmp_path):
    """`timeout` or Slurm stopping a run during its set-up: exit 143, no directory left."""
    import signal

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _TERM, str(out)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "held" and (out / rundir.LOCK).exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not out.exists()


def test_an_interrupted_run_says_how_to_continue(tiny_run, tmp_path, capsys):
    from toolkit.cli._app import _says_how_to_continue

    run = shutil.copytree(tiny_run.out, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt), _says_how_to_continue(run):
        raise KeyboardInterrupt
    err = capsys.readouterr().err.strip()
    assert err == (
        f"interrupted: {run} keeps 2 finished epoch(s); continue with toolkit train --resume {run}"
    )
