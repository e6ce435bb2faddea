"""Faults: SIGKILL and resume, killed atomic writers, read-only and full disks, corrupt files.

Every case ends in one of two states: the run finishes bit-identical to an uninterrupted
one, or the command prints one `error:` line, exits 2 and leaves every file as it was.
Real processes are killed (SIGKILL cannot be caught, so nothing runs on the way out).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests import REPO
from toolkit.cli import app
from toolkit.privacy import accounting
from toolkit.runs import RunConfig, rundir

runner = CliRunner()
NOBODY = 65534

# Two epochs of ten Poisson steps (N = 600, B = 60) on the tiny dataset.
FLAGS = ["--dataset", "fashion-mnist", "--epochs", "2", "--batch-size", "60", "--lr", "0.5",
         "--clip-norm", "1.0", "--noise-multiplier", "0.8", "--seed", "3",
         "--max-physical-batch", "64", "--quiet"]  # fmt: skip

# Runs `toolkit` after optionally capping file sizes (a full disk: writes fail with EFBIG
# instead of killing the process with SIGXFSZ) and, for root, dropping CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH from the bounding set and re-executing, so that file permissions bind.
_WRAPPER = """
import ctypes, os, resource, signal, sys
fsize, drop = int(sys.argv[1]), sys.argv[2] == "1"
if drop:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; 24 = PR_CAPBSET_DROP
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            sys.exit(77)
    reexec = "import os; exec(os.environ['TOOLKIT_TEST_WRAPPER'])"
    os.execv(sys.executable, [sys.executable, "-c", reexec, str(fsize), "0", *sys.argv[3:]])
if fsize >= 0:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
sys.argv = ["toolkit", *sys.argv[3:]]
from toolkit.cli import app
app()
"""


def _toolkit(args, cache: Path, *, fsize=-1, unprivileged=False, wait=True):
    """`toolkit *args` in a subprocess; `cache` is a JAX compilation cache shared by them."""
    drop = unprivileged and os.geteuid() == 0  # a non-root user is bound by permissions anyway
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),  # the same executables, compiled once
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "TOOLKIT_TEST_WRAPPER": _WRAPPER,
    }
    code = "import os; exec(os.environ['TOOLKIT_TEST_WRAPPER'])"
    cmd = [sys.executable, "-c", code, str(fsize), "1" if drop else "0", *map(str, args)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=240)
    if proc.returncode == 77:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here, so root ignores read-only modes")
    return proc.returncode, stdout, stderr


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "Traceback" not in text
    return lines[0]


def _without_times(history):
    return [dataclasses.replace(r, epoch_time_s=0.0, compile_time_s=None) for r in history]


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory, tiny_data_dir):
    d = tmp_path_factory.mktemp("faults")
    (d / "data").symlink_to(tiny_data_dir)
    return d


@pytest.fixture(scope="module")
def reference(shared_dir):
    """An uninterrupted `toolkit train` of FLAGS: the run every fault must reproduce."""
    out = shared_dir / "reference"
    args = ["train", "--data-dir", shared_dir / "data", *FLAGS, "--out", out]
    code, stdout, stderr = _toolkit(args, shared_dir / "jax-cache")
    assert code == 0, stderr
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    za, zb = np.load(a / rundir.CHECKPOINT), np.load(b / rundir.CHECKPOINT)
    assert za.files == zb.files
    assert all(np.array_equal(za[k], zb[k]) for k in za.files if k != "meta")
    assert _without_times(rundir.read_epochs(a)) == _without_times(rundir.read_epochs(b))


# --- SIGKILL and resume --------------------------------------------------------------------


def test_sigkill_mid_epoch_then_resume_is_bit_identical(shared_dir, reference):
    out = shared_dir / "killed"
    args = ["train", "--data-dir", shared_dir / "data", *FLAGS, "--out", out]
    proc = _toolkit(args, shared_dir / "jax-cache", wait=False)
    deadline = time.monotonic() + 180
    while not (out / rundir.EPOCHS).exists():  # epoch 1 checkpointed; epoch 2 under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [r.epoch for r in rundir.read_epochs(out)] == [1]  # killed inside epoch 2
    assert not (out / rundir.SUMMARY).exists()

    code, _, stderr = _toolkit(["train", "--resume", out, "--quiet"], shared_dir / "jax-cache")
    assert code == 0, stderr
    _assert_same_run(reference, out)
    history = rundir.read_epochs(out)
    summary = json.loads((out / rundir.SUMMARY).read_text())
    # The accountant's step count continues from the checkpoint: not reset, not doubled.
    spe = 600 // 60
    assert [r.step for r in history] == [spe, 2 * spe]
    eps = accounting.epsilon(accountant="rdp-classic", noise_multiplier=0.8,
                             sampling_prob=0.1, steps=2 * spe, delta=1e-5)  # fmt: skip
    assert summary["epsilon"]["rdp-classic"] == pytest.approx(eps, rel=1e-12)
    assert json.loads(np.load(out / rundir.CHECKPOINT)["meta"].tobytes())["step"] == 2 * spe
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


_WRITER = """
import sys
from toolkit.base import atomic_write_bytes
path, old, new = sys.argv[1], b"old" * 700_000, b"new" * 700_000 + b"!"
atomic_write_bytes(path, old)
print("ready", flush=True)
while True:
    atomic_write_bytes(path, new)
    atomic_write_bytes(path, old)
"""


def test_killed_atomic_writer_leaves_old_or_new_never_torn(tmp_path):
    """SIGKILL at 12 random moments (seeded) of a loop of 2 MB atomic writes."""
    old, new = b"old" * 700_000, b"new" * 700_000 + b"!"
    rng = np.random.default_rng(0)
    target = tmp_path / "file.bin"
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert target.read_bytes() in (old, new)
    # Kills leave at most stray temporaries beside it, which resume cleans up.
    assert all(p.name.startswith(".file.bin.") for p in tmp_path.iterdir() if p != target)


# --- read-only and full output directories -------------------------------------------------


def test_read_only_out_is_one_line_exit_2_and_untouched(shared_dir, reference):
    ro = shared_dir / "read-only"
    ro.mkdir()
    (ro / "keep.txt").write_text("mine")
    finished = ro / "finished"
    shutil.copytree(reference, finished)
    for p in (finished, ro):
        p.chmod(0o555)
    before = {p: p.read_bytes() for p in ro.rglob("*") if p.is_file()}
    try:
        _check_read_only_cases(shared_dir, ro, finished)
    finally:
        for p in (finished, ro):
            p.chmod(0o755)
    assert {p: p.read_bytes() for p in ro.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in ro.iterdir()) == ["finished", "keep.txt"]


def _check_read_only_cases(shared_dir: Path, ro: Path, finished: Path) -> None:
    cases = [
        ["train", "--data-dir", shared_dir / "data", *FLAGS, "--out", ro / "run"],
        ["train", "--resume", finished, "--quiet"],  # rewrites epochs.jsonl and summary.json
    ]
    for args in cases:
        code, stdout, stderr = _toolkit(args, shared_dir / "jax-cache", unprivileged=True)
        assert code == 2, (args, stdout, stderr)
        assert "writ" in _one_error_line(stderr)  # "not writable" / "cannot write"


def test_full_disk_is_one_line_exit_2_and_leaves_a_resumable_run(shared_dir, reference):
    """Files capped at 50 kB: config.json fits, the first checkpoint does not (EFBIG).

    What is left is the start of a run that `--resume` continues from epoch 0 (resuming a
    run without a checkpoint is what the SIGKILL test's resume path also exercises).
    """
    out = shared_dir / "full"
    args = ["train", "--data-dir", shared_dir / "data", *FLAGS, "--out", out]
    code, _, stderr = _toolkit(args, shared_dir / "jax-cache", fsize=50_000)
    assert code == 2 and "File too large" in _one_error_line(stderr)
    assert [p.name for p in out.iterdir()] == [rundir.CONFIG]  # no torn file, no temporary
    assert (
        json.loads((out / rundir.CONFIG).read_text())["config_hash"]
        == json.loads((reference / rundir.CONFIG).read_text())["config_hash"]
    )


# --- corrupt and foreign files -------------------------------------------------------------


def _resume_fails_cleanly(run: Path, needle: str) -> None:
    before = _snapshot(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 2, result.output
    assert needle in _one_error_line(result.output)
    assert _snapshot(run) == before


_SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=_SLOW_OK)
@given(data=st.data())
def test_corrupt_checkpoint_never_tracebacks_or_damages(reference, tmp_path_factory, data):
    """Truncations, byte flips and garbage: exit 2 and nothing changed, or (a flip in zip
    metadata the format does not checksum) a resume identical to the reference."""
    run = tmp_path_factory.mktemp("corrupt") / "run"
    shutil.copytree(reference, run)
    blob = bytearray((run / rundir.CHECKPOINT).read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        blob = bytearray(data.draw(st.binary(max_size=2000)))
    (run / rundir.CHECKPOINT).write_bytes(bytes(blob))
    before = _snapshot(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    if result.exit_code == 0:
        _assert_same_run(reference, run)
    else:
        assert result.exit_code == 2, result.output
        _one_error_line(result.output)
        assert _snapshot(run) == before


def test_checkpoint_from_a_different_config_is_refused(reference, tmp_path):
    """A run with seed 4 (killed before its first checkpoint) given run seed-3's checkpoint."""
    run = tmp_path / "other"
    shutil.copytree(reference, run)
    (run / rundir.EPOCHS).unlink()
    (run / rundir.SUMMARY).unlink()
    record = json.loads((run / rundir.CONFIG).read_text())
    record["config"]["seed"] = 4
    record["config_hash"] = rundir.config_hash(RunConfig.from_dict(record["config"]))
    (run / rundir.CONFIG).write_text(json.dumps(record))
    _resume_fails_cleanly(run, "belongs to a different configuration")


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"config": {"seed"', "is corrupt"),
        ("[1, 2]", "not a valid run config"),
        ('{"config": {"dataset": "fashion-mnist"}}', "not a valid run config"),
        ("\udcff", "is corrupt"),
    ],
)
def test_corrupt_config_is_refused(reference, tmp_path, content, needle):
    run = tmp_path / "bad-config"
    shutil.copytree(reference, run)
    (run / rundir.CONFIG).write_bytes(content.encode("utf-8", "surrogateescape"))
    _resume_fails_cleanly(run, needle)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("limit_train", "all", "not a valid run config (limit_train='all' must be an integer"),
        ("epochs", 3, "was edited (hash mismatch)"),
    ],
)
def test_edited_config_is_refused_before_it_is_used(reference, tmp_path, field, value, needle):
    """A hand-edited setting is caught before it is used, not by a traceback: a value no run
    can have when the record is read (naming it), any other by the hash."""
    run = tmp_path / "edited"
    shutil.copytree(reference, run)
    record = json.loads((run / rundir.CONFIG).read_text())
    record["config"][field] = value
    (run / rundir.CONFIG).write_text(json.dumps(record))
    _resume_fails_cleanly(run, needle)
