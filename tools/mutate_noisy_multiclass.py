"""Mutation check of analysis.noisy and analysis.multiclass (run on demand, not in the suite).

    python tools/mutate_noisy_multiclass.py [--workdir DIR]

Copies the repository to a scratch directory, applies each plausible bug below one
at a time, and runs (a) tests/analysis/test_noisy.py + tests/analysis/test_multiclass.py
and (b) the bound-check rows of checks 7 and 8 (`suite_rows(..., quick=True)`). A mutant
is killed by (a) if pytest fails and by (b) if some row fails. Prints one line per mutant
and the kill rates.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NOISY, MULTI = "analysis/noisy.py", "analysis/multiclass.py"

# (name, file, original text, mutated text)
MUTANTS: list[tuple[str, str, str, str]] = [
    (
        "noise added to the mean (extra 1/n)",
        NOISY,
        "total = total + noise_multiplier * clip_norms[None, :, None] * xi",
        "total = total + noise_multiplier * clip_norms[None, :, None] * xi / n",
    ),
    (
        "noise std sigma, not sigma C",
        NOISY,
        "total = total + noise_multiplier * clip_norms[None, :, None] * xi",
        "total = total + noise_multiplier * xi",
    ),
    (
        "divide by n instead of q n",
        NOISY,
        "    return total / (sampling_prob * n)",
        "    return total / n",
    ),
    (
        "clip on |dl/dm| without ||z||",
        NOISY,
        "    norm = np.abs(coef) * rho",
        "    norm = np.abs(coef)",
    ),
    (
        "clip factor 0 instead of 1 below C",
        NOISY,
        "np.where(norm > clip_norm, clip_norm / safe, 1.0)",
        "np.where(norm > clip_norm, clip_norm / safe, 0.5)",
    ),
    (
        "Poisson rate 1 - q",
        NOISY,
        "rng.uniform(size=(reps, 1, n)) < sampling_prob",
        "rng.uniform(size=(reps, 1, n)) < 1 - sampling_prob",
    ),
    (
        "step size not scaled by T (eta for T = 1)",
        NOISY,
        "eta = float(solvers.step_size(data.z[None], np.array([setting.inverse_temp]))[0])",
        "eta = float(solvers.step_size(data.z[None], np.array([1.0]))[0])",
    ),
    (
        "projection onto 2R",
        NOISY,
        "np.minimum(1.0, setting.radius / np.maximum(norm, 1e-300))",
        "np.minimum(1.0, 2 * setting.radius / np.maximum(norm, 1e-300))",
    ),
    (
        "second moment without d",
        NOISY,
        "dim * setting.noise_multiplier**2 / (q * n) ** 2",
        "setting.noise_multiplier**2 / (q * n) ** 2",
    ),
    (
        "bias measured against the clipped run",
        NOISY,
        "        bias=ref.clipped_risk - f_star,",
        "        bias=ref.clipped_risk - ref.clipped_risk[-1],",
    ),
    (
        "softmax risk without T",
        MULTI,
        "logp = log_softmax(inverse_temp * (z @ theta), axis=1)",
        "logp = log_softmax(z @ theta, axis=1)",
    ),
    (
        "softmax risk divided by n + 1",
        MULTI,
        "    return float(-np.mean(logp[np.arange(len(y)), y]))",
        "    return float(-np.sum(logp[np.arange(len(y)), y]) / (len(y) + 1))",
    ),
    (
        "average over theta_0..theta_K (K + 1 iterates)",
        NOISY,
        "    return total / setting.steps, theta",
        "    return (total + theta) / (setting.steps + 1), theta",
    ),
    ("threshold constant 1 instead of sqrt 2", MULTI, "SQRT2 = math.sqrt(2.0)", "SQRT2 = 1.0"),
    (
        "projection onto 1.05 R",
        MULTI,
        "radius / jnp.where(norm > 0, norm, 1.0), 1.0)",
        "1.05 * radius / jnp.where(norm > 0, norm, 1.0), 1.0)",
    ),
    (
        "certificate without ||y||",
        MULTI,
        "gmap * (jnp.linalg.norm(point) + radius)",
        "gmap * radius * 0.01",
    ),
    (
        "excess at y (clipped) vs y+ (unclipped)",
        MULTI,
        "        f_c = objective(sol.next_point[i], z, y, inverse_temp=t)",
        "        f_c = objective(sol.point[i], z, y, inverse_temp=t)",
    ),
    (
        "residual from the previous iterate",
        MULTI,
        "        gmap = jnp.linalg.norm(point - nxt) / eta",
        "        gmap = jnp.linalg.norm(theta - nxt) / eta",
    ),
]

ROWS = (
    "from analysis import noisy, multiclass\n"
    "rows = noisy.suite_rows(n=32, dim=3, seed=0, quick=True)\n"
    "rows += multiclass.suite_rows(temperatures=(1.0, 4.0), clip_norms=(0.5, 8.0), radius=1.0,"
    " n=32, dim=3, seed=0, tol=1e-10, quick=True)\n"
    "bad = [r.name for r in rows if not r.passed]\n"
    "print(bad)\n"
    "raise SystemExit(1 if bad else 0)\n"
)


def _run(cmd: list[str], cwd: Path) -> bool:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return res.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    src = Path(__file__).resolve().parents[1]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mutants-"))
    shutil.copytree(src, work / "repo", ignore=shutil.ignore_patterns(".git", ".venv", "docs"))
    repo = work / "repo"
    py = sys.executable
    tests = [
        py,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/analysis/test_noisy.py",
        "tests/analysis/test_multiclass.py",
    ]
    killed_t = killed_r = 0
    for name, rel, old, new in MUTANTS:
        path = repo / rel
        text = path.read_text()
        if text.count(old) != 1:
            print(f"SKIP (pattern not found once): {name}")
            continue
        path.write_text(text.replace(old, new))
        try:
            t = not _run(tests, repo)
            r = not _run([py, "-c", ROWS], repo)
        finally:
            path.write_text(text)
        killed_t += t
        killed_r += r
        verdict = (
            f"{'killed' if t else 'SURVIVED':8s} tests | {'killed' if r else 'SURVIVED':8s} rows"
        )
        print(f"{verdict} | {name}", flush=True)
    n = len(MUTANTS)
    print(f"tests kill {killed_t}/{n}, bound-check rows kill {killed_r}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
