"""Two processes (`toolkit train --coordinator ...`) train the run one process trains.

Both processes run on this machine over `jax.distributed` (a localhost coordinator, CPU
collectives over gloo), each with its own CPU device, so the mesh spans two processes:
every micro-batch is split between them and the clipped sums are all-reduced across
them. They draw the same Poisson batches and the same noise (one key), so the records of
process 0 are those of a one-process run up to the order of float32 additions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import REPO
from tests.configs import tiny_config
from toolkit.base import ToolkitError
from toolkit.cli import _launch as launch
from toolkit.cli import app
from toolkit.runs import rundir
from toolkit.training import train

# A private run in miniature (8 steps), on a model that compiles in about a second.
RUN = ["--dataset", "fashion-mnist", "--model", "tests.zoo:tiny_mlp", "--limit-train", "256",
       "--batch-size", "64", "--epochs", "2", "--noise-multiplier", "1", "--clip-norm", "1",
       "--lr", "0.5", "--seed", "3", "--quiet"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_two_processes(args: list[str], out, tmp_path) -> list:
    """`toolkit train *args --out out` as processes 0 and 1 of one run: the same command."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOOLKIT_MALLOC="default")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-m", "toolkit", "train", *args, "--out", str(out),
               "--coordinator", f"localhost:{port}", "--num-processes", "2",
               "--process-id", str(pid)]  # fmt: skip
        log = open(tmp_path / f"process{pid}.log", "w+")  # noqa: SIM115 (closed in _finish)
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log), log))
    return procs


def _finish(procs) -> list[subprocess.CompletedProcess]:
    results = []
    for proc, log in procs:
        try:
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, log.read()))
        log.close()
    return results


def _summary_rows(output: str) -> dict[str, str]:
    """The printed summary table's rows that both processes print: accuracy and eps."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ \n").split("│")]
        if len(cells) == 2 and cells[0].startswith(("test accuracy", "eps (")):
            rows[cells[0]] = cells[1]
    return rows


def test_two_processes_train_the_records_of_one(tiny_data_dir, tmp_path, capsys):
    """Same records as one process; process 1 writes nothing and prints the same result.

    Tolerance: the runs differ only in the order of float32 additions in the clipped sum
    (two partial sums, all-reduced): per step at most ~B eps32 C / B * lr ~ 1e-7 on a
    parameter, < 1e-6 over the 8 steps (measured: 2e-8). We allow 1e-5 on parameters and
    a relative 1e-5 on losses and norms, while the noise moves every parameter by
    sigma C / B * lr = 7.8e-3 per step: a noise draw per process (or none) is ~1e3 times
    the tolerance. eps and the realised batch sizes are equal exactly (same Poisson
    batches, same accounting); test accuracy may flip one of 200 examples.
    """
    args = [*RUN, "--data-dir", str(tiny_data_dir)]
    procs = _start_two_processes(args, tmp_path / "two", tmp_path)
    try:  # the one-process run meanwhile, in this process
        capsys.readouterr()
        assert launch.run(app, ["train", *args, "--out", str(tmp_path / "one")]) == 0
        one_output = capsys.readouterr().out
    finally:
        two = _finish(procs)
    for p in two:
        assert p.returncode == 0, p.stdout[-3000:]

    one, dist = tmp_path / "one", tmp_path / "two"
    # Process 1 was given the same --out and left it to process 0 (a claim would clash).
    assert sorted(p.name for p in dist.iterdir()) == sorted(p.name for p in one.iterdir())
    c1, c2 = rundir.read_config(one), rundir.read_config(dist)
    assert c1["config_hash"] == c2["config_hash"]  # the same run
    assert c2["processes"] == 2 and "processes" not in c1
    a, b = rundir.read_epochs(one), rundir.read_epochs(dist)
    assert len(a) == len(b) == 2
    for r1, r2 in zip(a, b, strict=True):
        assert r1.batch_size_mean == r2.batch_size_mean  # the same Poisson batches
        assert r1.epsilon == r2.epsilon
        assert r2.per_example_grads == "bookkeeping"
        np.testing.assert_allclose(r2.train_loss, r1.train_loss, rtol=1e-5)
        for stat in ("mean", "median", "max", "fraction_clipped"):
            np.testing.assert_allclose(
                getattr(r2.grad_norm, stat), getattr(r1.grad_norm, stat), rtol=1e-5
            )
        np.testing.assert_allclose(r2.metrics["test_loss"], r1.metrics["test_loss"], rtol=1e-5)
        assert abs(r2.test_accuracy - r1.test_accuracy) <= 1 / 200
    with np.load(one / rundir.CHECKPOINT) as z1, np.load(dist / rundir.CHECKPOINT) as z2:
        params = [k for k in z1.files if k.startswith("tree/params")]
        assert params
        for k in params:
            np.testing.assert_allclose(z2[k], z1[k], rtol=0, atol=1e-5, err_msg=k)
    # Both processes hold the same model: the same held-out accuracy and eps printed.
    rows = [_summary_rows(p.stdout) for p in two]
    assert rows[0] == rows[1] == _summary_rows(one_output) and len(rows[0]) == 4, rows
    assert "run directory" in two[0].stdout and "run directory" not in two[1].stdout


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--coordinator", "localhost:1234", "--num-processes", "2"],
         "without --process-id"),
        (["--process-id", "0"], "without --coordinator, --num-processes"),
        (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
         "coordinator='localhost' must be HOST:PORT"),
        (["--coordinator", "localhost:70000", "--num-processes", "2", "--process-id", "0"],
         "port in [1, 65535]"),
        (["--coordinator", "localhost:1234", "--num-processes", "0", "--process-id", "0"],
         "num_processes=0 must be an integer >= 1"),
        (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"],
         "process_id=2 must be in [0, 1]"),
        (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "-1"],
         "process_id=-1 must be an integer >= 0"),
        (["--resume", "somewhere", "--coordinator", "localhost:1234", "--num-processes", "2",
          "--process-id", "0"], "--resume=somewhere runs in one process"),
    ],
)  # fmt: skip
def test_bad_distributed_options_are_one_line(flags, needle, tmp_path, capsys):
    """Checked before JAX is touched, so no process waits for a run that never starts."""
    args = ["train", *flags]
    if "--resume" not in flags:
        args += [*RUN, "--out", str(tmp_path / "r")]
    capsys.readouterr()
    assert launch.run(app, args) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "r").exists()


def test_distributed_argument_takes_exactly_its_three_keys(tiny_data_dir):
    with pytest.raises(ToolkitError, match="takes exactly the keys coordinator"):
        train(tiny_config(tiny_data_dir), distributed={"coordinator": "localhost:1234"})


def test_several_processes_refuse_the_vmap_path(monkeypatch):
    """vmap'd convolutions give wrong gradients on batch-sharded inputs (XLA 0.10): a run
    that needs vmap is refused over several processes instead of sharded."""
    from toolkit.training._parallel import DataParallel

    monkeypatch.setattr("jax.process_count", lambda: 2)
    with pytest.raises(ToolkitError, match="training over 2 processes .* vmap"):
        DataParallel.of_run("vmap")
