"""Mutation testing of `analysis/` and `toolkit bound-check` (run on demand, not in the suite).

    python -m tools.mutate                    # every mutant, writes docs/mutation.md
    python -m tools.mutate --only clip-eps    # some mutants (comma-separated names)
    python -m tools.mutate --list             # the mutants and what each plants

Each mutant is one plausible bug: an exact text substitution in one source file.
The working tree (tracked and untracked, not ignored files) is snapshot once at
the start; for each mutant the snapshot is copied to a temporary directory and
the substitution applied there (the worktree is never touched, and edits made
while the runner works do not leak in), and two detectors run in that copy:

- the analysis tests: `python -m pytest tests/analysis/test_*.py -x -q`;
- `python -m toolkit bound-check --quick` (exit 1: a check failed).

A mutant is killed by a detector when the detector fails (a crash counts, and is
marked). An unmutated baseline runs first and must pass both, or nothing is scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One planted bug: replace `old` (which must occur exactly once) by `new` in `path`."""

    name: str
    area: str  # what the issue asks to cover
    path: str
    old: str
    new: str
    what: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "bound-constant",
        "bound formula and constants",
        "analysis/theorem1.py",
        "return 2.0 * max(inverse_temp - clip_norm, 0.0) * 2.0 * radius",
        "return max(inverse_temp - clip_norm, 0.0) * 2.0 * radius",
        "drops the proof's constant 2: bound = (T-C)+ 2R",
    ),
    Mutant(
        "bound-diameter",
        "domain diameter",
        "analysis/theorem1.py",
        "return 2.0 * max(inverse_temp - clip_norm, 0.0) * 2.0 * radius",
        "return 2.0 * max(inverse_temp - clip_norm, 0.0) * radius",
        "takes the diameter of the ball as R instead of 2R",
    ),
    Mutant(
        "bound-no-max",
        "bound formula and constants",
        "analysis/theorem1.py",
        "return 2.0 * max(inverse_temp - clip_norm, 0.0) * 2.0 * radius",
        "return 2.0 * abs(inverse_temp - clip_norm) * 2.0 * radius",
        "abs(T - C) for max(T - C, 0): a positive bound where C > T",
    ),
    Mutant(
        "projection-box",
        "projection",
        "analysis/solvers.py",
        "    return theta * jnp.where(norm > radius, radius / jnp.where(norm > 0, norm, 1.0), 1.0)",
        "    return jnp.clip(theta, -radius, radius)",
        "projects on the box [-R, R]^d instead of the ball",
    ),
    Mutant(
        "certificate-formula",
        "certificate formula",
        "analysis/solvers.py",
        "return theta, gmap, gmap * reach, k, clipped, anchor",
        "return theta, gmap, gmap * radius, k, clipped, anchor",
        "certificate ||G|| R instead of ||G|| (||y|| + R)",
    ),
    Mutant(
        "certificate-point-G",
        "certificate point (momentum)",
        "analysis/solvers.py",
        "gmap = jnp.linalg.norm(point - theta_next) / eta",
        "gmap = jnp.linalg.norm(theta - theta_next) / eta",
        "G from the iterate, not from the extrapolated point the step started at",
    ),
    Mutant(
        "certificate-point-reach",
        "certificate point (momentum)",
        "analysis/solvers.py",
        "reach = jnp.linalg.norm(point) + radius",
        "reach = jnp.linalg.norm(theta) + radius",
        "||y - theta*|| bounded at the iterate, not the extrapolated point",
    ),
    Mutant(
        "clip-eps",
        "clip rule",
        "toolkit/grads/clipping.py",
        "factors = jnp.where(norms > clip_norm, clip_norm / norms, 1.0)",
        "factors = jnp.where(norms > clip_norm, clip_norm / (norms + 1e-6), 1.0)",
        "a 'stabilising' epsilon in the clip factor",
    ),
    Mutant(
        "clip-by-value",
        "clip rule",
        "analysis/solvers.py",
        "return jnp.mean(per_example * factors[:, None], axis=0), jnp.any(norms > clip_norm)",
        "return jnp.mean(jnp.clip(per_example, -clip_norm, clip_norm), axis=0), "
        "jnp.any(norms > clip_norm)",
        "clips each coordinate at C instead of the norm",
    ),
    Mutant(
        "glm-clip-units",
        "clip rule",
        "analysis/solvers.py",
        "norms = jnp.abs(dl_ds) * z_norms",
        "norms = jnp.abs(dl_ds)",
        "the shared-data (GLM) field clips |dl/ds|, not the gradient norm |dl/ds| ||z||",
    ),
    Mutant(
        "surrogate-slope",
        "surrogate slope",
        "analysis/losses.py",
        "slope = jnp.where(can_clip, clip_norm / jnp.where(can_clip, rho, 1.0), 0.0)",
        "slope = jnp.where(can_clip, clip_norm, 0.0)",
        "huberised slope C in the margin instead of C / ||z||",
    ),
    Mutant(
        "surrogate-slope-numpy",
        "surrogate slope",
        "analysis/solvers.py",
        "slope = np.where(can_clip, c / safe_rho, 0.0)",
        "slope = np.where(can_clip, c, 0.0)",
        "the same slope bug in the hand-derived numpy surrogate",
    ),
    Mutant(
        "step-2-over-L",
        "step size",
        "analysis/solvers.py",
        "return 1.0 / np.maximum(inverse_temp**2 / 4.0 * lam, 1e-300)",
        "return 1.0 / np.maximum(inverse_temp**2 / 8.0 * lam, 1e-300)",
        "step 2/L: outside the certificate's premise eta <= 1/L",
    ),
    Mutant(
        "step-T-not-T2",
        "step size",
        "analysis/solvers.py",
        "return 1.0 / np.maximum(inverse_temp**2 / 4.0 * lam, 1e-300)",
        "return 1.0 / np.maximum(inverse_temp / 4.0 * lam, 1e-300)",
        "smoothness T/4 lambda instead of T^2/4 lambda",
    ),
    Mutant(
        "sigmoid-offset",
        "tempered sigmoid offset",
        "toolkit/nn/_activations.py",
        "return scale * jax.nn.sigmoid(inverse_temp * x) - offset",
        "return scale * jax.nn.sigmoid(inverse_temp * x - offset)",
        "offset inside the sigmoid instead of after it",
    ),
    Mutant(
        "tightness-tie",
        "tightness scoring",
        "analysis/tightness.py",
        "th_c = np.clip(th_s, a, b)",
        "th_c = a",
        "scores a flat surrogate at the left end of its minimisers, not the one nearest theta*",
    ),
    Mutant(
        "tightness-ratio",
        "tightness scoring",
        "analysis/tightness.py",
        "ratio=float(ex[i] / bound) if bound > 0 else 0.0,",
        "ratio=float(ex[i] / (bound / 2)) if bound > 0 else 0.0,",
        "ratio against half the bound",
    ),
    Mutant(
        "tightness-clip-units",
        "tightness scoring",
        "analysis/tightness.py",
        "slope = np.minimum(slope, c[:, None])",
        "slope = np.minimum(slope, c[:, None] * np.abs(u))",
        "the 1-D scorer clips the pull in the wrong units (C |u| instead of C)",
    ),
    Mutant(
        "excess-sign",
        "Theorem 1 excess",
        "analysis/theorem1.py",
        "excess=f_clipped - f_star,",
        "excess=f_star - f_clipped,",
        "excess risk with the sign flipped (negative)",
    ),
    Mutant(
        "sharpened-t1",
        "bound formula and constants",
        "analysis/theorem1.py",
        "t1 = np.minimum(t0, r)",
        "t1 = t0",
        "G integrates the clipping interval past the ball's edge (t0 > R)",
    ),
    Mutant(
        "invariance-radius",
        "domain diameter",
        "analysis/invariance.py",
        "(TEMPERATURE, d.z, d.y, 1.0, c / t, t * r),",
        "(TEMPERATURE, d.z, d.y, 1.0, c / t, r),",
        "rescales T and C but not the domain",
    ),
)


def _copy_tree(src: Path, dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the git tree at `src`."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=src,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in files:
        if not name:
            continue
        rel = Path(os.fsdecode(name))
        if not (src / rel).is_file():
            continue  # deleted but still tracked
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


def _apply(root: Path, mutant: Mutant) -> None:
    path = root / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"error: mutant {mutant.name}: {mutant.path} has {count} matches")
    path.write_text(text.replace(mutant.old, mutant.new))


@dataclasses.dataclass(frozen=True)
class Outcome:
    name: str
    tests_rc: int
    check_rc: int
    seconds: float
    failed_rows: tuple[str, ...]
    first_failed_test: str

    @property
    def killed_by_tests(self) -> bool:
        return self.tests_rc != 0

    @property
    def killed_by_check(self) -> bool:
        return self.check_rc != 0


def _run(cmd: list[str], root: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    try:
        return subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, 124, e.stdout or "", e.stderr or "")


def run_one(snapshot: Path, mutant: Mutant | None, *, timeout: float) -> Outcome:
    """Copy the snapshot, mutate (None: the baseline), run both detectors."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        root = Path(tmp) / "tree"
        shutil.copytree(snapshot, root)
        if mutant is not None:
            _apply(root, mutant)
        # The end-to-end CLI test last: -x then stops at the quicker unit tests first.
        tests = sorted(
            (str(p.relative_to(root)) for p in root.glob("tests/analysis/test_*.py")),
            key=lambda name: (name.endswith("_cli.py"), name),
        )
        t = _run(
            [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider"],
            root,
            timeout,
        )
        first = next((ln for ln in t.stdout.splitlines() if ln.startswith("FAILED")), "")
        if not first and t.returncode not in (0, 1):
            first = f"rc {t.returncode}: " + (t.stdout + t.stderr).strip().splitlines()[-1:][0]
        record = root / "bound-check.json"
        c = _run(
            [sys.executable, "-m", "toolkit", "bound-check", "--quick", "--json", str(record)],
            root,
            timeout,
        )
        failed = ()
        if record.is_file():
            rows = json.loads(record.read_text())["checks"]
            failed = tuple(r["name"] for r in rows if not r["passed"])
        if c.returncode not in (0, 1):
            failed = failed or ("crash: " + (c.stderr.strip().splitlines() or ["?"])[-1],)
    return Outcome(
        name=mutant.name if mutant else "baseline",
        tests_rc=t.returncode,
        check_rc=c.returncode,
        seconds=time.perf_counter() - start,
        failed_rows=failed,
        first_failed_test=first.removeprefix("FAILED ").split(" - ")[0],
    )


def report(outcomes: list[Outcome], mutants: dict[str, Mutant], commit: str) -> str:
    """The markdown table of docs/mutation.md."""
    scored = [o for o in outcomes if o.name != "baseline"]
    k_t = sum(o.killed_by_tests for o in scored)
    k_c = sum(o.killed_by_check for o in scored)
    lines = [
        "# Mutation testing of analysis/ and bound-check",
        "",
        f"Generated by `python -m tools.mutate` on {datetime.date.today()} at commit "
        f"`{commit}`. Each mutant is one plausible bug planted in a temporary copy of the "
        "tree; the detectors are the analysis tests (`pytest tests/test_analysis_*.py -x`) "
        "and `toolkit bound-check --quick` (exit 1).",
        "",
        f"**Kill rate: tests {k_t}/{len(scored)}, bound-check {k_c}/{len(scored)}.**",
        "",
        "| mutant | area | planted bug | tests | first failing test | bound-check | failing rows |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        m = mutants.get(o.name)
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} |".format(
                o.name,
                m.area if m else "-",
                m.what if m else "unmutated tree (must pass both)",
                ("killed" if o.killed_by_tests else "**survived**")
                if m
                else ("pass" if o.tests_rc == 0 else "**FAIL**"),
                f"`{o.first_failed_test}`" if o.first_failed_test else "",
                ("killed" if o.killed_by_check else "**survived**")
                if m
                else ("pass" if o.check_rc == 0 else "**FAIL**"),
                "; ".join(o.failed_rows),
            )
        )
    lines += [
        "",
        "Exact substitutions are in `tools/mutate.py` (`MUTANTS`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--out", default="docs/mutation.md", help="markdown report ('' = none)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per detector run")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:26s} {m.path:24s} {m.what}")
        return 0
    names = [s for s in args.only.split(",") if s] or list(by_name)
    unknown = [s for s in names if s not in by_name]
    if unknown:
        print(f"error: --only={args.only}: unknown mutant(s) {unknown}", file=sys.stderr)
        return 2
    src = Path(__file__).resolve().parents[1]
    for name in names:  # every substitution must match exactly once before anything runs
        m = by_name[name]
        count = (src / m.path).read_text().count(m.old)
        if count != 1:
            print(f"error: mutant {name}: {m.path} has {count} matches", file=sys.stderr)
            return 2
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="mutation-snapshot-") as tmp:
        snapshot = Path(tmp)
        _copy_tree(src, snapshot)
        outcomes = _run_all(snapshot, [by_name[n] for n in names], timeout=args.timeout)
    if outcomes is None:
        return 1
    if args.out:
        Path(src / args.out).write_text(report(outcomes, by_name, commit))
        print(f"wrote {args.out}")
    survived = [o for o in outcomes[1:] if not (o.killed_by_tests and o.killed_by_check)]
    return 1 if survived else 0


def _run_all(snapshot: Path, mutants: list[Mutant], *, timeout: float) -> list[Outcome] | None:
    """The baseline, then every mutant; None if the baseline does not pass both detectors."""
    outcomes = [run_one(snapshot, None, timeout=timeout)]
    print(
        f"baseline: tests rc {outcomes[0].tests_rc} ({outcomes[0].first_failed_test or '-'}), "
        f"bound-check rc {outcomes[0].check_rc} ({'; '.join(outcomes[0].failed_rows) or '-'})"
    )
    if outcomes[0].tests_rc != 0 or outcomes[0].check_rc != 0:
        print("error: the unmutated tree does not pass both detectors", file=sys.stderr)
        return None
    for mutant in mutants:
        o = run_one(snapshot, mutant, timeout=timeout)
        outcomes.append(o)
        print(
            f"{mutant.name:26s} tests {'killed' if o.killed_by_tests else 'SURVIVED'}"
            f" ({o.first_failed_test or '-'}), bound-check "
            f"{'killed' if o.killed_by_check else 'SURVIVED'} ({'; '.join(o.failed_rows) or '-'})"
            f" [{o.seconds:.0f} s]",
            flush=True,
        )
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
