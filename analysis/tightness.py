"""Check 5: how tight is Theorem 1? A search for datasets that maximise excess / bound.

This goes beyond the paper. By `analysis.theorem1`, excess <= G(T, C, R) <=
bound / 2, so no dataset can reach a ratio above G / bound (< 1/2, and < 1/4 in
every case we computed). The search asks how close one can get.

Search space: one-dimensional datasets, N points z_i = |u_i| e, y_i = sign(u_i)
for a unit vector e, so only u_i in [-1, 1] matters, with integer
multiplicities (a dataset of N points in which several coincide). In 1-D both
minimisers are roots of a monotone derivative on [-R, R], found by vectorised
bisection to ~1e-18 R, so thousands of datasets are scored in milliseconds.

1. A constructive two-cluster family: k points at u = +b (clipped pull towards
   theta > 0) against N - k points at u = -a with a small (never clipped).
   Clipping weakens the first cluster, theta_clipped slides towards -R and the
   first cluster pays about T R each. Grid over (k, a, b).
2. Random configurations of a few atoms with random multiplicities.
3. Local refinement of the best: rounds of random perturbation of positions
   and moves of single points between atoms, keeping the best.

The winner is embedded in R^dim and re-solved with the d-dimensional clipped
projected GD of `analysis.solvers`, an independent solver: the two excess risks
must agree to the PGD certificates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import expit

from analysis import solvers
from analysis.theorem1 import paper_bound, sharpened_bound

# Bisection steps: 2R / 2^64 is below float64 resolution of any theta in [-R, R].
BISECTION_STEPS = 64


@dataclasses.dataclass(frozen=True)
class SearchEffort:
    """How hard to search (the CLI's --quick lowers every number)."""

    family_a: int = 96  # log-spaced sizes of the small cluster, in [1e-3, 1]
    family_b: int = 8  # positions of the clipped cluster, in (0, 1]
    random_configs: int = 2048  # random atom configurations per (T, C)
    atoms: int = 4  # atoms in the random and refined configurations
    refine_rounds: int = 40  # perturbation rounds
    refine_batch: int = 256  # perturbations per round


QUICK_EFFORT = SearchEffort(
    family_a=24, family_b=3, random_configs=256, refine_rounds=8, refine_batch=64
)


@dataclasses.dataclass(frozen=True)
class TightnessResult:
    """The best dataset found for one (T, C, R), and its verification."""

    inverse_temp: float
    clip_norm: float
    radius: float
    ratio: float  # excess / paper bound
    excess: float
    bound: float
    ceiling: float  # G(T, C, R), the sharpened bound
    positions: tuple[float, ...]  # atoms u_j = y z (along e)
    counts: tuple[int, ...]  # how many of the N points sit at each atom
    theta_clipped: float  # along e
    theta_star: float
    found_by: str  # "two-cluster family", "random atoms" or "refinement"
    verified_excess: float = math.nan  # the d-dimensional PGD value
    verify_tol: float = math.nan  # the PGD certificates it is compared within

    @property
    def ceiling_ratio(self) -> float:
        return self.ceiling / self.bound if self.bound > 0 else 0.0

    @property
    def verified(self) -> bool:
        return abs(self.verified_excess - self.excess) <= self.verify_tol


def _derivative(theta, u, w, t, c, clipped: bool):
    """d/dtheta of sum_j w_j l(u_j theta) (clipped per atom at C), batched over rows."""
    th = theta[:, None]
    slope = t[:, None] * np.abs(u) * expit(-t[:, None] * u * th)  # |d l_j / d theta|
    if clipped:
        slope = np.minimum(slope, c[:, None])
    return np.sum(w * -np.sign(u) * slope, axis=1)


def solve_1d(u, w, t, c, radius: float, *, clipped: bool) -> np.ndarray:
    """argmin over [-R, R] of the (clipped-field) objective, for a batch of 1-D datasets.

    Args:
      u: (B, m) atom positions y z in [-1, 1]; w: (B, m) weights (any scale).
      t, c: (B,) inverse temperatures and clipping norms.
      radius: R.
      clipped: minimise the huberised surrogate (True) or L_T (False).
    """
    lo = np.full(len(u), -radius)
    hi = np.full(len(u), radius)
    at_lo = _derivative(lo, u, w, t, c, clipped) >= 0
    at_hi = _derivative(hi, u, w, t, c, clipped) <= 0
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        up = _derivative(mid, u, w, t, c, clipped) > 0
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    return np.where(at_lo, -radius, np.where(at_hi, radius, 0.5 * (lo + hi)))


def _objective(theta, u, w, t):
    return np.sum(w * np.logaddexp(0.0, -t[:, None] * u * theta[:, None]), axis=1) / np.sum(
        w, axis=1
    )


def score(u, counts, t, c, radius: float):
    """(excess, theta_clipped, theta_star) for a batch of weighted 1-D datasets."""
    w = counts.astype(np.float64)
    th_c = solve_1d(u, w, t, c, radius, clipped=True)
    th_s = solve_1d(u, w, t, c, radius, clipped=False)
    return _objective(th_c, u, w, t) - _objective(th_s, u, w, t), th_c, th_s


def _family(n: int, effort: SearchEffort) -> tuple[np.ndarray, np.ndarray]:
    """All (u, counts) of the two-cluster family, shape (F, 2)."""
    k = np.arange(1, n)
    a = np.geomspace(1e-3, 1.0, effort.family_a)
    b = np.linspace(1.0, 0.0, effort.family_b, endpoint=False)
    kk, aa, bb = (x.ravel() for x in np.meshgrid(k, a, b, indexing="ij"))
    return np.stack([bb, -aa], axis=1), np.stack([kk, n - kk], axis=1)


def _random(rng, n: int, effort: SearchEffort) -> tuple[np.ndarray, np.ndarray]:
    u = rng.uniform(-1.0, 1.0, size=(effort.random_configs, effort.atoms))
    p = rng.dirichlet(np.ones(effort.atoms), size=effort.random_configs)
    counts = np.stack([rng.multinomial(n, pi) for pi in p])
    return u, counts


def _pad(u, counts, atoms: int):
    extra = atoms - u.shape[1]
    return (
        np.concatenate([u, np.zeros((len(u), extra))], axis=1),
        np.concatenate([counts, np.zeros((len(u), extra), int)], axis=1),
    )


def _refine(rng, u, counts, t, c, radius, effort: SearchEffort):
    """Perturbation rounds around each row's current best; returns the improved rows."""
    best_u, best_k = u.copy(), counts.copy()
    best, _, _ = score(best_u, best_k, t, c, radius)
    rows, atoms, m = len(u), u.shape[1], effort.refine_batch
    for step in range(effort.refine_rounds):
        scale = 0.3 * 0.85**step
        cu = np.repeat(best_u, m, axis=0)
        ck = np.repeat(best_k, m, axis=0)
        cu = np.clip(cu + scale * rng.normal(size=cu.shape) * (rng.uniform(size=cu.shape) < 0.5),
                     -1.0, 1.0)  # fmt: skip
        # Move one point from a random non-empty atom to a random atom.
        src = np.argmax(np.where(ck > 0, rng.uniform(size=ck.shape), -1.0), axis=1)
        dst = rng.integers(0, atoms, size=len(ck))
        move = rng.uniform(size=len(ck)) < 0.5
        ck[np.arange(len(ck)), src] -= move
        ck[np.arange(len(ck)), dst] += move
        tt, cc = np.repeat(t, m), np.repeat(c, m)
        ex, _, _ = score(cu, ck, tt, cc, radius)
        ex = ex.reshape(rows, m)
        j = np.argmax(ex, axis=1)
        better = ex[np.arange(rows), j] > best
        pick = np.arange(rows) * m + j
        best_u[better], best_k[better] = cu[pick][better], ck[pick][better]
        best = np.where(better, ex[np.arange(rows), j], best)
    return best_u, best_k


def search(
    pairs: Sequence[tuple[float, float]],
    *,
    radius: float,
    n: int,
    seed: int,
    effort: SearchEffort = SearchEffort(),
) -> list[TightnessResult]:
    """The best dataset of n points found for each (T, C) with T > C (1-D search, not verified)."""
    rng = np.random.default_rng([seed, 55])
    results = []
    for t, c in pairs:
        fam_u, fam_k = _family(n, effort)
        rnd_u, rnd_k = _random(rng, n, effort)
        cands = {"two-cluster family": (fam_u, fam_k), "random atoms": (rnd_u, rnd_k)}
        found = {}
        for name, (u, k) in cands.items():
            tt, cc = np.full(len(u), t), np.full(len(u), c)
            ex, _, _ = score(u, k, tt, cc, radius)
            i = int(np.argmax(ex))
            found[name] = (ex[i], *_pad(u[i : i + 1], k[i : i + 1], effort.atoms))
        start = max(found, key=lambda name: found[name][0])
        base_ex, u0, k0 = found[start]
        u1, k1 = _refine(rng, u0, k0, np.array([t]), np.array([c]), radius, effort)
        ex, th_c, th_s = score(u1, k1, np.array([t]), np.array([c]), radius)
        found_by = "refinement" if ex[0] > base_ex * (1 + 1e-9) else start
        keep = k1[0] > 0
        order = np.argsort(-u1[0][keep])
        bound = paper_bound(t, c, radius)
        results.append(
            TightnessResult(
                inverse_temp=float(t),
                clip_norm=float(c),
                radius=float(radius),
                ratio=float(ex[0] / bound),
                excess=float(ex[0]),
                bound=bound,
                ceiling=sharpened_bound(t, c, radius),
                positions=tuple(float(x) for x in u1[0][keep][order]),
                counts=tuple(int(x) for x in k1[0][keep][order]),
                theta_clipped=float(th_c[0]),
                theta_star=float(th_s[0]),
                found_by=found_by,
            )
        )
    return results


def witness_dataset(result: TightnessResult, *, dim: int, seed: int) -> tuple[np.ndarray, ...]:
    """The witness as an (n, dim) dataset along a random unit vector e: (z, y, e)."""
    e = np.random.default_rng([seed, 56]).normal(size=dim)
    e /= np.linalg.norm(e)
    u = np.repeat(np.asarray(result.positions), result.counts)
    z = np.abs(u)[:, None] * e[None, :]
    y = np.where(u >= 0, 1.0, -1.0)
    return z, y, e


def verify(
    results: Sequence[TightnessResult], *, dim: int, seed: int, tol: float
) -> list[TightnessResult]:
    """Re-solve each witness in R^dim with clipped projected GD; attach the excess it gets."""
    if not results:
        return []
    data = [witness_dataset(r, dim=dim, seed=seed) for r in results]
    z = np.stack([d[0] for d in data] * 2)
    y = np.stack([d[1] for d in data] * 2)
    t = np.array([r.inverse_temp for r in results] * 2)
    c = np.array([r.clip_norm for r in results] + [math.inf] * len(results))
    sol = solvers.projected_gd(z, y, inverse_temp=t, clip_norm=c, radius=results[0].radius, tol=tol)
    out = []
    for i, (r, (zi, yi, _)) in enumerate(zip(results, data)):
        j = i + len(results)
        f_c = solvers.objective(sol.theta[i], zi, yi, inverse_temp=r.inverse_temp)
        f_s = solvers.objective(sol.theta[j], zi, yi, inverse_temp=r.inverse_temp)
        # The 1-D solutions are exact to ~1e-16; the PGD ones to their certificates.
        slack = sol.gap[i] + sol.gap[j] + 1e-12
        if not (sol.certified[i] and sol.certified[j]):
            slack = -math.inf  # uncertified: cannot agree
        out.append(dataclasses.replace(r, verified_excess=f_c - f_s, verify_tol=float(slack)))
    return out
