"""The scripts in examples/ run end to end (on the tiny IDX data set, one epoch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import REPO

ROOT = REPO
CASES = [
    ("custom_model_loss.py", "512", ["per-example gradients: bookkeeping", "eps (pld)"]),
    ("tempered_sigmoid_in_your_model.py", "600", ["(s, T, o) = (2.0, 2.0, 1.0)", "(rdp-classic)"]),
    ("preclip_norms.py", "512", ["bookkeeping: pre-clip norms", "clipped at C = 0.1", "eps (rdp)"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, limit, needles", CASES, ids=[c[0] for c in CASES])
def test_example_runs(script, limit, needles, tiny_data_dir):
    env = {**os.environ, "TOOLKIT_DATA_DIR": str(tiny_data_dir), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--limit", limit, "--epochs", "1"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stdout, proc.stdout
