"""All checks of `toolkit bound-check`, from one validated configuration.

Checks 1-6 are the paper's claims; `EXTRA_CHECKS` lists the checks beyond the
paper (each a function of the config returning `CheckResult` rows), run after them
in that order: add a new one there.

`BoundCheckConfig` is validated on construction (a `ToolkitError` naming the
argument, the value and what is allowed), so a config that exists can run.
`run` returns a `SuiteResult` that `analysis.report` prints and serialises
and `analysis.plots` draws; nothing here prints or writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence

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
from analysis.datasets import make_datasets
from analysis.result import CheckResult
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
      n: points per synthetic dataset (and per tightness witness).
      dim: their dimension.
      seed: seeds every random draw.
      quick: smaller samples and searches (a few seconds; for tests).
    """

    temperatures: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    clip_norms: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
    radius: float = 1.0
    n: int = 64
    dim: int = 5
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        _check_grid("temperatures", self.temperatures, MAX_TEMPERATURE)
        _check_grid("clip-norms", self.clip_norms, MAX_CLIP_NORM)
        if not (math.isfinite(self.radius) and 0 < self.radius <= MAX_RADIUS):
            raise ToolkitError(f"--radius={self.radius}: expected 0 < R <= {MAX_RADIUS:g}.")
        if not 2 <= self.n <= MAX_N:
            raise ToolkitError(f"--n={self.n}: expected an integer in [2, {MAX_N}].")
        if not 1 <= self.dim <= MAX_DIM:
            raise ToolkitError(f"--dim={self.dim}: expected an integer in [1, {MAX_DIM}].")
        if not 0 <= self.seed < 2**32:
            raise ToolkitError(f"--seed={self.seed}: expected an integer in [0, 2^32).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    and then `EXTRA_CHECKS`."""
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
