"""The GPU check (issue 14) on the CPU: the script a GPU machine runs, as a dry run.

The script itself is what is tested: the same steps (offline install, device, tests, preset
training, device checks, step-time benchmark, summary) with JAX_PLATFORMS=cpu, small sizes
and tiny data. The device checks are also tested for failing when the fast path is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from tests import REPO
from toolkit.grads import _per_example as per_example

ROOT = REPO
STEPS = ["install", "device", "tests", "train", "checks", "bench"]


def _run(tmp_path: Path, data_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    stage, out = tmp_path / "stage", tmp_path / "out"
    shutil.copytree(data_dir, stage / "data" / "fashion-mnist")
    env = dict(
        os.environ,
        PY=sys.executable,
        OUT=str(out),
        GPU_STAGE=str(stage),
        GPU_CHECK_SITE=str(tmp_path / "site"),
        GPU_CHECK_TESTS="tests/toolkit/training/test_dpsgd.py::test_noise_std_matches_sigma_times_c",
        JAX_PLATFORMS="cpu",
    )
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "run", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return proc, out


@pytest.mark.slow
def test_dry_run_runs_every_step_and_summarises(tmp_path, tiny_data_dir):
    proc, out = _run(tmp_path, tiny_data_dir, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["rc"] == 0 for s in summary["steps"])
    assert summary["device"]["backend"] == "cpu"
    train = summary["train"]
    assert train["epochs"] == 1 and 0.0 <= train["test_accuracy"][-1] <= 1.0
    assert 0 < train["epsilon"] < float("inf") and train["accountant"] == "rdp-classic"
    assert [(b["dataset"], b["batch"]) for b in summary["bench"]] == [("mnist", 32)]
    assert all(b["ratio"] > 0 and b["dp_examples_per_s"] > 0 for b in summary["bench"])
    assert [(c["check"], c["dataset"]) for c in summary["checks"]] == [
        ("precision", "mnist"), ("sharding", "mnist")
    ]  # fmt: skip
    assert all(c["ok"] for c in summary["checks"])
    md = (out / "summary.md").read_text()
    assert "Training `fashion-mnist` (tanh), 1 epochs, 512 examples" in md
    assert (out / "train" / "summary.json").is_file()
    assert (out / "bench" / "results.json").is_file()


def test_without_the_expected_gpu_it_stops_after_the_device_step(tmp_path, tiny_data_dir):
    proc, out = _run(tmp_path, tiny_data_dir)  # not a dry run, so it expects a GPU
    assert proc.returncode == 1
    assert "backend is 'cpu', expected 'gpu'" in proc.stdout
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [(s[0], s[1]) for s in steps] == [("install", "0"), ("device", "1")]
    assert "| device | 1 |" in (out / "summary.md").read_text()
    assert not (out / "train").exists()


@pytest.mark.parametrize("field", ["norms", "clipped_sum"])
def test_precision_check_fails_when_the_fast_path_is_off_by_one_percent(monkeypatch, field):
    real = per_example.clipped_grad

    def mutated(graphdef, **kw):
        fn = real(graphdef, **kw)
        if kw.get("implementation") != "bookkeeping":
            return fn

        def call(*args):
            out = fn(*args)
            import jax

            return out._replace(**{field: jax.tree.map(lambda v: v * 1.01, getattr(out, field))})

        return call

    assert gpu_check.precision_check("mnist", 8)["ok"]  # unmutated: passes
    monkeypatch.setattr(per_example, "clipped_grad", mutated)
    result = gpu_check.precision_check("mnist", 8)
    assert not result["ok"]
    # 1% off shows as 1e-2 (the check allows 1e-3), give or take the unmutated error (~2e-4)
    key = "norm_rel_err" if field == "norms" else "sum_rel_err"
    assert result[key] == pytest.approx(0.01, abs=5e-4)
