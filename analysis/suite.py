"""All checks of `toolkit bound-check`, from one validated configuration.

Checks 1-6 are the paper's claims; `EXTRA_CHECKS` lists the checks beyond the
paper (each a function of the config returning `CheckResult` rows), run after them
in that order: add a new one there.

`BoundCheckConfig` is validated on construction (a `ToolkitError` naming the
argument, the value and what is allowed), so a config that exists can run.
`run` returns a `SuiteResult` that `analysis.report` prints and serialises
and `analysis.plots` draws; nothing here prints or writes.

With `data` (your own binary datasets, `analysis.datasets.from_arrays`; the CLI's
`--data`), every check that is measured on a dataset runs on yours instead of the
synthetic ones: eq. (4), eq. (5) with k = 2, Theorem 1 on the (T, C) grid and the
invariances. Check 1 and Theorem 1's bound relations involve no data and run as
usual. The checks that are about all datasets or about synthetic constructions
(tightness search, sharp constant, multiclass, noisy DP-GD, conservativeness) are
listed in `SuiteResult.skipped` with the reason. `check_datasets` is this as a
function of the datasets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from analysis import (
    bounds,
    conservative,
    invariance,
    multiclass,
    noisy,
    sharp,
    theorem1,
    tightness,
)
from analysis.datasets import Dataset, make_datasets
from analysis.precision import EPS
from analysis.result import CheckResult, Skipped
from toolkit.base import ToolkitError

# Certificate for every projected-GD solve: ||G(theta)|| <= PGD_TOL, hence a
# suboptimality <= 2 R PGD_TOL.
PGD_TOL = 1e-10

# Limits on the options (PGD steps grow with T^2 R and with T / C).
MAX_TEMPERATURE = 32.0
MAX_CLIP_NORM = 1e3
MAX_RADIUS = 10.0
MAX_GRID_VALUES = 12
MAX_N = 1024
MAX_DIM = 64
# Limits on a dataset of your own: every PGD step is two (n, d) matrix products, so
# n d sets the time (about 30 s for the default grid at n = 2000, d = 784 on 2 busy cores,
# SLSQP included; `theorem1.SCIPY_MAX_DIM`).
MAX_DATA_DIM = 4096
MAX_DATA_ENTRIES = 10_000_000
# Synthetic-dataset sizes when `data` is empty and n / dim are not given.
DEFAULT_N = 64
DEFAULT_DIM = 5

# Why each check that needs the synthetic datasets is skipped on your data.
SKIPPED_ON_DATA = (
    (
        "5 tightness search",
        "searches constructed 1-D datasets for the largest excess/bound Theorem 1 allows; "
        "a question about all datasets, not yours (the Thm 1 rows give your data's "
        "excess/bound)",
    ),
    (
        "6 conservativeness",
        "compares the binary and the 3-class clipped fields on a fixed synthetic problem; "
        "for binary data Lemma 3.1 makes the clipped field a gradient, which the Thm 1 "
        "rows use",
    ),
    (
        "7 sharp constant",
        "the supremum of excess/bound over all datasets (analysis.sharp); it does not "
        "depend on yours",
    ),
    (
        "9 noisy clipped GD",
        "Monte Carlo over DP-GD noise at fixed settings on the synthetic 'noisy' dataset "
        "(analysis.noisy); not a Theorem 1 check",
    ),
    (
        "10 multiclass",
        "about softmax regression with k >= 3 classes, on its own synthetic data; a binary "
        "data set has k = 2 (eq. (5) above covers it)",
    ),
)

# Check 6 is about the structure of the clipped field, not the user's grid: it runs
# at one fixed setting where 40-70% of the examples are clipped (asymmetry found:
# 0.11-0.24 over seeds 0-7, against the 0.05 required).
CONSERVATIVE = dict(n=32, dim=4, classes=3, inverse_temp=2.0, clip_norm=0.5, points=8)

# The invariance rows re-solve these (T, C) pairs, at the config's radius, on the
# `outliers` dataset (the largest excess on the default grid).
INVARIANCE_PAIRS = ((4.0, 0.5), (8.0, 1.0))
INVARIANCE_DATASET = "outliers"


@dataclasses.dataclass(frozen=True)
class BoundCheckConfig:
    """What `bound-check` runs. The defaults take ~15 s on a 2-core CPU.

    Attributes:
      temperatures: inverse temperatures T of the Theorem 1 grid.
      clip_norms: clipping norms C of the Theorem 1 grid.
      radius: R, radius of the ball Theta (diameter 2R).
      n: points per synthetic dataset (and per tightness witness); 64 if not given.
      dim: their dimension; 5 if not given.
      seed: seeds every random draw.
      quick: smaller samples and searches (a few seconds; for tests).
      data: your own binary datasets (`analysis.datasets.from_arrays`), checked instead
        of the synthetic ones; then n and dim must not be given (they stay None).
    """

    temperatures: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    clip_norms: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
    radius: float = 1.0
    n: int | None = None
    dim: int | None = None
    seed: int = 0
    quick: bool = False
    data: tuple[Dataset, ...] = ()

    def __post_init__(self) -> None:
        _check_grid("temperatures", self.temperatures, MAX_TEMPERATURE)
        _check_grid("clip-norms", self.clip_norms, MAX_CLIP_NORM)
        if not (math.isfinite(self.radius) and 0 < self.radius <= MAX_RADIUS):
            raise ToolkitError(f"--radius={self.radius}: expected 0 < R <= {MAX_RADIUS:g}.")
        if not 0 <= self.seed < 2**32:
            raise ToolkitError(f"--seed={self.seed}: expected an integer in [0, 2^32).")
        if self.data:
            given = [f"--{k}={v}" for k, v in (("n", self.n), ("dim", self.dim)) if v is not None]
            if given:
                raise ToolkitError(
                    f"{' and '.join(given)} with --data: --n and --dim size the synthetic "
                    "datasets, which --data replaces (its n and d are the file's); drop them."
                )
            object.__setattr__(self, "data", tuple(self.data))
            _check_data(self.data)
            return
        # The synthetic datasets' sizes, defaulted here so that the record shows them.
        object.__setattr__(self, "n", DEFAULT_N if self.n is None else self.n)
        object.__setattr__(self, "dim", DEFAULT_DIM if self.dim is None else self.dim)
        if not 2 <= self.n <= MAX_N:
            raise ToolkitError(f"--n={self.n}: expected an integer in [2, {MAX_N}].")
        if not 1 <= self.dim <= MAX_DIM:
            raise ToolkitError(f"--dim={self.dim}: expected an integer in [1, {MAX_DIM}].")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["temperatures"], out["clip_norms"] = list(self.temperatures), list(self.clip_norms)
        out["data"] = [d.describe() for d in self.data]
        return out


def _check_data(data: Sequence[Dataset]) -> None:
    """Each dataset is one Theorem 1 applies to, of a size the checks can afford."""
    for d in data:
        if not isinstance(d, Dataset):
            raise ToolkitError(
                f"--data: got {type(d).__name__}; expected analysis.datasets.Dataset "
                "(from_arrays or from_file)."
            )
    names = [d.name for d in data]
    if len(set(names)) != len(names):
        raise ToolkitError(f"--data: dataset names {names} repeat; give each its own name.")
    for d in data:
        z, y = np.asarray(d.z), np.asarray(d.y)
        where = d.prepared.source if d.prepared else d.name
        if z.ndim != 2 or y.shape != (len(z),) or len(z) < 2:
            raise ToolkitError(
                f"--data={where}: z {z.shape} and y {y.shape}; expected z (n, d), y (n,), n >= 2."
            )
        n, dim = z.shape
        if dim > MAX_DATA_DIM or n * dim > MAX_DATA_ENTRIES:
            raise ToolkitError(
                f"--data={where}: n={n}, d={dim}; expected d <= {MAX_DATA_DIM} and "
                f"n*d <= {MAX_DATA_ENTRIES:.0e} (the checks' time grows with n*d): use a "
                "random subset of the examples."
            )
        norm = float(np.max(np.linalg.norm(z, axis=1)))
        if not norm <= 1.0 + 4 * EPS:
            raise ToolkitError(
                f"--data={where}: max ||z_i|| = {norm:.6g}; Theorem 1 needs every "
                "||z_i|| <= 1 (from_arrays divides by the largest norm)."
            )
        if not set(np.unique(y).tolist()) == {-1.0, 1.0}:
            raise ToolkitError(
                f"--data={where}: y holds {sorted(set(np.unique(y).tolist()))}; expected "
                "both of -1.0 and +1.0 (from_arrays maps {0, 1} to them)."
            )


def _check_grid(name: str, values: Sequence[float], upper: float) -> None:
    if not values:
        raise ToolkitError(f"--{name} is empty: expected comma-separated numbers, e.g. 0.5,1,2.")
    if len(values) > MAX_GRID_VALUES:
        raise ToolkitError(
            f"--{name} has {len(values)} values: expected at most {MAX_GRID_VALUES}."
        )
    for v in values:
        if not (math.isfinite(v) and 0 < v <= upper):
            raise ToolkitError(f"--{name} contains {v:g}: expected values in (0, {upper:g}].")
    if len(set(values)) != len(values):
        raise ToolkitError(f"--{name}={','.join(f'{v:g}' for v in values)} repeats a value.")


def parse_floats(text: str, *, name: str) -> tuple[float, ...]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0); a `ToolkitError` naming `--name` for anything else."""
    items = [s.strip() for s in text.split(",")]
    if not any(items):
        raise ToolkitError(f"--{name}={text!r}: expected comma-separated numbers, e.g. 0.5,1,2.")
    out = []
    for s in items:
        try:
            out.append(float(s))
        except ValueError:
            raise ToolkitError(
                f"--{name}={text!r}: {s!r} is not a number; expected comma-separated numbers."
            ) from None
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """Everything a run produced: the table rows and the data behind the figures."""

    config: BoundCheckConfig
    checks: tuple[CheckResult, ...]
    cells: tuple[theorem1.Theorem1Cell, ...]
    tightness: tuple[tightness.TightnessResult, ...]
    seconds: dict[str, float]
    skipped: tuple[Skipped, ...] = ()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 3)


def _sharp_constant(config: BoundCheckConfig) -> list[CheckResult]:
    return sharp.check_sharp(dim=config.dim, seed=config.seed, tol=PGD_TOL)


def _invariances(config: BoundCheckConfig) -> list[CheckResult]:
    data = {d.name: d for d in make_datasets(n=config.n, dim=config.dim, seed=config.seed)}
    cases = invariance.run_invariance(
        data[INVARIANCE_DATASET],
        pairs=INVARIANCE_PAIRS,
        radius=config.radius,
        tol=PGD_TOL,
        seed=config.seed,
    )
    return invariance.check_invariance(cases, dataset=INVARIANCE_DATASET)


def _noisy(config: BoundCheckConfig) -> list[CheckResult]:
    return noisy.suite_rows(n=config.n, dim=config.dim, seed=config.seed, quick=config.quick)


def _multiclass(config: BoundCheckConfig) -> list[CheckResult]:
    return multiclass.suite_rows(
        temperatures=config.temperatures,
        clip_norms=config.clip_norms,
        radius=config.radius,
        n=config.n,
        dim=config.dim,
        seed=config.seed,
        tol=PGD_TOL,
        quick=config.quick,
    )


# Checks beyond the paper: (timing label, function of the config returning rows), run
# after checks 1-6 in this order. Other modules' checks are added here.
EXTRA_CHECKS: tuple[tuple[str, Callable[[BoundCheckConfig], Sequence[CheckResult]]], ...] = (
    ("7 sharp constant", _sharp_constant),
    ("8 invariances", _invariances),
    ("9 noisy clipped GD", _noisy),
    ("10 multiclass", _multiclass),
)


def run(config: BoundCheckConfig) -> SuiteResult:
    """Run checks 1-6 (module docstrings of `bounds`, `theorem1`, `tightness`, `conservative`)
    and then `EXTRA_CHECKS`; on `config.data` if given (module docstring)."""
    if config.data:
        return _run_on_data(config)
    quick, dim, seed = config.quick, config.dim, config.seed
    seconds: dict[str, float] = {}
    checks: list[CheckResult] = []
    with _timed(seconds, "1 tempered sigmoid"):
        checks += bounds.check_tempered_sigmoid(grid_size=2001 if quick else 20_001)
    with _timed(seconds, "2 eq. (4)"):
        checks += bounds.check_eq4(num_random=200 if quick else 2000, dim=dim, seed=seed)
    with _timed(seconds, "3 eq. (5)"):
        checks += bounds.check_eq5(num_random=50 if quick else 500, dim=dim, seed=seed)

    with _timed(seconds, "4 theorem 1 grid"):
        cells = theorem1.run_grid(
            make_datasets(n=config.n, dim=dim, seed=seed),
            temperatures=config.temperatures,
            clip_norms=config.clip_norms,
            radius=config.radius,
            tol=PGD_TOL,
        )
        checks += theorem1.check_theorem1(cells, tol=PGD_TOL, dim=dim, seed=seed)

    pairs = [(t, c) for t in config.temperatures for c in config.clip_norms if t > c]
    effort = tightness.QUICK_EFFORT if quick else tightness.SearchEffort()
    with _timed(seconds, "5 tightness search"):
        found = tightness.search(pairs, radius=config.radius, n=config.n, seed=seed, effort=effort)
    with _timed(seconds, "5 tightness verify"):
        found = tightness.verify(found, dim=dim, seed=seed, tol=PGD_TOL)
        checks += tightness.check_tightness(found)

    with _timed(seconds, "6 conservativeness"):
        checks += conservative.check_conservative(**CONSERVATIVE, seed=seed)
    for label, check in EXTRA_CHECKS:
        with _timed(seconds, label):
            checks += check(config)
    return SuiteResult(
        config=config,
        checks=tuple(checks),
        cells=tuple(cells),
        tightness=tuple(found),
        seconds=seconds,
    )


def _run_on_data(config: BoundCheckConfig) -> SuiteResult:
    """The checks of `run` that are measured on a dataset, on `config.data`."""
    quick, seed, data = config.quick, config.seed, config.data
    seconds: dict[str, float] = {}
    checks: list[CheckResult] = []
    skipped: list[Skipped] = []
    with _timed(seconds, "1 tempered sigmoid"):
        checks += bounds.check_tempered_sigmoid(grid_size=2001 if quick else 20_001)
    with _timed(seconds, "2 eq. (4)"):
        checks += bounds.check_eq4_on_data(data, num_random=200 if quick else 2000, seed=seed)
    with _timed(seconds, "3 eq. (5)"):
        checks += bounds.check_eq5_on_data(data, num_random=50 if quick else 500, seed=seed)
    with _timed(seconds, "4 theorem 1 grid"):
        cells = theorem1.run_grid(
            data,
            temperatures=config.temperatures,
            clip_norms=config.clip_norms,
            radius=config.radius,
            tol=PGD_TOL,
        )
        dim = max(d.z.shape[1] for d in data)
        checks += theorem1.check_theorem1(cells, tol=PGD_TOL, dim=dim, seed=seed)
    wide = [d for d in data if d.z.shape[1] > theorem1.SCIPY_MAX_DIM]
    if wide:
        skipped.append(
            Skipped(
                "Thm 1: PGD vs scipy SLSQP"
                + (f" ({', '.join(d.name for d in wide)})" if len(wide) < len(data) else ""),
                f"d = {', '.join(str(d.z.shape[1]) for d in wide)} > "
                f"{theorem1.SCIPY_MAX_DIM}: SLSQP solves a dense d x d problem at every "
                "iteration; the PGD certificate, its numpy recheck and the Frank-Wolfe gap "
                "still certify every solution",
            )
        )
    with _timed(seconds, "8 invariances"):
        for d in data:
            cases = invariance.run_invariance(
                d, pairs=INVARIANCE_PAIRS, radius=config.radius, tol=PGD_TOL, seed=seed
            )
            rows = invariance.check_invariance(cases, dataset=d.name)
            if len(data) > 1:  # one pair of rows per dataset: name them apart
                rows = [dataclasses.replace(r, name=f"{r.name} [{d.name}]") for r in rows]
            checks += rows
    skipped += [Skipped(name, reason) for name, reason in SKIPPED_ON_DATA]
    return SuiteResult(
        config=config,
        checks=tuple(checks),
        cells=tuple(cells),
        tightness=(),
        seconds=seconds,
        skipped=tuple(skipped),
    )


def check_datasets(
    datasets: Sequence[Dataset],
    *,
    temperatures: Sequence[float] = BoundCheckConfig.temperatures,
    clip_norms: Sequence[float] = BoundCheckConfig.clip_norms,
    radius: float = 1.0,
    seed: int = 0,
    quick: bool = False,
) -> SuiteResult:
    """Eqs. (4), (5) and Theorem 1's checks on your own binary datasets.

    The `bound-check --data` run as a function: eq. (4) and eq. (5) (k = 2) at your
    examples, Theorem 1 on every (T, C) of the grid (clipped and unclipped projected GD
    to certified optima, excess L_T(theta_clipped) - min L_T against the bound
    2 max(T - C, 0) 2R and the sharper G(T, C, R)), and the invariances; the checks
    that do not apply to a given dataset are in `.skipped` with the reason.

    Args:
      datasets: from `analysis.datasets.from_arrays` / `from_file` (every ||z_i|| <= 1,
        labels in {-1, +1}, distinct names).
      temperatures, clip_norms: the (T, C) grid. radius: R of the ball Theta.
      seed: the random thetas of eqs. (4) and (5) and the invariances' rotation.
      quick: fewer random points for eqs. (4) and (5).

    Returns:
      A `SuiteResult`: `.passed`, `.checks` (table rows), `.cells` (one
      `theorem1.Theorem1Cell` per dataset, T and C), `.skipped`.

    Raises:
      ToolkitError (a ValueError) naming the option and the value, for an invalid grid
      or dataset.
    """
    return run(
        BoundCheckConfig(
            temperatures=tuple(float(t) for t in temperatures),
            clip_norms=tuple(float(c) for c in clip_norms),
            radius=radius,
            seed=seed,
            quick=quick,
            data=tuple(datasets),
        )
    )
