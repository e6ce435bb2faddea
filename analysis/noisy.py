"""Clipping bias with noise: DP-GD and DP-SGD on tempered logistic regression (issue 11, part 4).

Problem (as Theorem 1, `analysis.theorem1`): minimise over Theta = {||theta|| <= R}

    L_T(theta) = mean_i ln(1 + exp(-T y_i <z_i, theta>)),   ||z_i|| <= 1.

"Risk" is this empirical risk on the dataset (the population is the dataset,
as in Theorem 1 and in Bassily, Smith and Thakurta 2014, whose bounds are for
excess *empirical* risk). The algorithm, in float64 numpy, K steps from
theta_0 = 0 with a fixed step eta = 1/L (`analysis.solvers.step_size`, L the
smoothness of L_T, so eta scales as 1/T^2):

    B_k   = Poisson sample, each example independently with probability q (q = 1: DP-GD)
    g_k   = (sum_{i in B_k} clip_C(grad l_i(theta_k)) + sigma C xi_k) / (q n),  xi_k ~ N(0, I_d)
    theta_{k+1} = P_Theta(theta_k - eta g_k),

the DP-SGD step of paper-notes section 4 (noise on the clipped *sum*, then
divided by the expected batch size). The output is the average
theta_bar = (1/K) sum_{k<K} theta_k (the iterate the bound below covers); the
last iterate theta_K is reported beside it. Noise and masks are drawn from one
`numpy.random.Generator` seeded with `seed` and are shared by every C (common
random numbers: differences between C are not blurred by independent noise).

Decomposition (every term measured; bias and L* certified):

    E L_T(theta_bar) - L* = [L_T(theta_c) - L*]                     clipping bias
                          + [L_T(theta_bar^0) - L_T(theta_c)]       optimisation
                          + [E L_T(theta_bar) - L_T(theta_bar^0)]   noise

with theta_c the certified clipped optimum (noiseless, `analysis.solvers.projected_gd`),
theta_bar^0 the averaged iterate of the same K steps without noise and with q = 1,
so "noise" covers both the Gaussian noise and the subsampling.

L* is the certified unclipped optimum value: L_T(theta_u) - cert <= L* <= L_T(theta_u).
The expectation is a Monte Carlo mean over `repetitions` independent runs with a
normal-approximation 95% confidence interval (mean +- 1.96 s / sqrt(reps)).

A rigorous bound (derived here). Clipped binary GD is GD on the huberised
surrogate L_hat (Song, Thakkar and Thakurta 2020, Lemma 3.1), which is convex and
C-Lipschitz; g_k is an unbiased estimate of grad L_hat(theta_k) with
E||g_k||^2 <= C^2 M, M = 1 + (1 - q)/(q n) + d sigma^2/(q n)^2. The textbook
projected-SGD argument (e.g. Bubeck 2015, "Convex Optimization: Algorithms and
Complexity", Thm. 6.1) gives E L_hat(theta_bar) - min L_hat <= R^2/(2 eta K) + eta C^2 M / 2,
and L_T - L_hat <= mean_i g(||z_i||) on Theta, min L_hat <= L* (`theorem1.per_point_gap`), so

    E L_T(theta_bar) - L*  <=  mean_i g(||z_i||) + R^2/(2 eta K) + eta C^2 M / 2.

Published rate. Bassily, Smith and Thakurta 2014 ("Private empirical risk
minimization: efficient algorithms and tight error bounds", FOCS 2014, Thm. 2.4):
for a convex L-Lipschitz loss on a domain of diameter D, noisy SGD with n^2
steps is (eps, delta)-DP with excess empirical risk
O(L D sqrt(d log(1/delta)) log^{3/2}(n/delta) / (n eps)), optimal up to logs.
Clipping makes the surrogate C-Lipschitz, so the rate applies to L_hat with
L = C, D = 2R, and the clipping bias adds on top. The O() hides constants; we
draw `bst_scale` = C 2R sqrt(d log(1/delta)) / (n eps) (constant 1, log^{3/2}
factor dropped) as a reference scale, not as a bound, with eps from
`toolkit.privacy.accounting.epsilon` (accountant "rdp") for (sigma, q, K, delta).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit

from analysis import solvers, theorem1
from analysis.datasets import Dataset, make_datasets
from analysis.losses import binary_loss
from analysis.precision import EPS, float64
from analysis.result import CheckResult
from toolkit.grads import clip_factors
from toolkit.privacy import accounting

# Normal quantile of a two-sided 95% confidence interval.
Z95 = 1.959963984540054
# Certificate of the reference PGD solves (suboptimality <= 2 R PGD_TOL).
PGD_TOL = 1e-10
DELTA = 1e-5


@dataclasses.dataclass(frozen=True)
class NoisySetting:
    """The fixed quantities of one excess-vs-C curve.

    Attributes:
      inverse_temp: T of the loss.
      noise_multiplier: sigma (noise std / C, added to the clipped sum).
      sampling_prob: Poisson rate q in (0, 1]; 1 is full-batch DP-GD.
      steps: K, the number of noisy steps.
      radius: R of the ball Theta.
      repetitions: Monte Carlo runs (independent noise and masks).
      seed: seeds every draw.
    """

    inverse_temp: float
    noise_multiplier: float
    sampling_prob: float
    steps: int
    radius: float = 1.0
    repetitions: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("inverse_temp", self.inverse_temp, 0 < self.inverse_temp < math.inf, "> 0"),
            ("noise_multiplier", self.noise_multiplier, 0 <= self.noise_multiplier < 1e6, ">= 0"),
            ("sampling_prob", self.sampling_prob, 0 < self.sampling_prob <= 1, "in (0, 1]"),
            ("steps", self.steps, isinstance(self.steps, int) and self.steps >= 1, ">= 1"),
            ("radius", self.radius, 0 < self.radius < math.inf, "> 0"),
            ("repetitions", self.repetitions, self.repetitions >= 2, ">= 2"),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={value}: expected {allowed}.")


def _clipped_coefficients(margin, y, rho, inverse_temp, clip_norm):
    """Per-example clipped gradients as scalars a_i with grad_i = a_i z_i (eq. 4, factored).

    grad l_i = -T y_i sigmoid(-T m_i) z_i has norm T ||z_i|| sigmoid(-T m_i); the flat
    clip rule (`toolkit.grads.clipping.clip_factors`) scales it by C / norm when norm > C.
    `clip_norm` broadcasts against `margin` (..., n).
    """
    coef = -inverse_temp * y * expit(-inverse_temp * margin)
    norm = np.abs(coef) * rho
    safe = np.where(norm > 0, norm, 1.0)
    return coef * np.where(norm > clip_norm, clip_norm / safe, 1.0)


def noisy_gradients(
    theta: np.ndarray,
    data: Dataset,
    *,
    inverse_temp: float,
    clip_norms: np.ndarray,
    noise_multiplier: float,
    sampling_prob: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """g_k of the module docstring for a batch of iterates theta (R, nC, d) -> (R, nC, d).

    One Poisson mask and one Gaussian draw per repetition, shared by the nC clipping norms.
    """
    reps, n = theta.shape[0], len(data.y)
    z, y = data.z, data.y
    margin = y * (theta @ z.T)  # (R, nC, n)
    a = _clipped_coefficients(
        margin, y, np.linalg.norm(z, axis=1), inverse_temp, clip_norms[None, :, None]
    )
    if sampling_prob < 1.0:
        a = a * (rng.uniform(size=(reps, 1, n)) < sampling_prob)
    xi = rng.standard_normal(size=(reps, 1, z.shape[1]))
    total = a @ z
    if noise_multiplier > 0:  # sigma = 0 adds nothing, even with C = inf (0 * inf is NaN)
        total = total + noise_multiplier * clip_norms[None, :, None] * xi
    return total / (sampling_prob * n)


def run_dp_gd(
    data: Dataset, setting: NoisySetting, clip_norms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """K noisy projected steps for every (repetition, C); (theta_bar, theta_K), each (R, nC, d)."""
    clip_norms = np.asarray(clip_norms, np.float64)
    eta = float(solvers.step_size(data.z[None], np.array([setting.inverse_temp]))[0])
    rng = np.random.default_rng([setting.seed, 11])
    theta = np.zeros((setting.repetitions, len(clip_norms), data.z.shape[1]))
    total = np.zeros_like(theta)
    for _ in range(setting.steps):
        total += theta
        g = noisy_gradients(
            theta,
            data,
            inverse_temp=setting.inverse_temp,
            clip_norms=clip_norms,
            noise_multiplier=setting.noise_multiplier,
            sampling_prob=setting.sampling_prob,
            rng=rng,
        )
        step = theta - eta * g
        norm = np.linalg.norm(step, axis=-1, keepdims=True)
        theta = step * np.minimum(1.0, setting.radius / np.maximum(norm, 1e-300))
    return total / setting.steps, theta


def risks(thetas: np.ndarray, data: Dataset, *, inverse_temp: float) -> np.ndarray:
    """L_T at every theta of an (..., d) array, by `solvers.objective`."""
    flat = thetas.reshape(-1, thetas.shape[-1])
    out = [solvers.objective(t, data.z, data.y, inverse_temp=inverse_temp) for t in flat]
    return np.array(out).reshape(thetas.shape[:-1])


def explicit_bound(data: Dataset, setting: NoisySetting, clip_norms: np.ndarray) -> np.ndarray:
    """mean_i g(||z_i||) + R^2/(2 eta K) + eta C^2 M / 2 (module docstring), per C."""
    t, r, k = setting.inverse_temp, setting.radius, setting.steps
    n, d = data.z.shape
    eta = float(solvers.step_size(data.z[None], np.array([t]))[0])
    rho = np.linalg.norm(data.z, axis=1)
    out = []
    for c in np.asarray(clip_norms, np.float64):
        gap = float(np.mean(theorem1.per_point_gap(rho, inverse_temp=t, clip_norm=c, radius=r)))
        second = second_moment_bound(setting, n=n, dim=d, clip_norm=c)
        out.append(gap + r**2 / (2 * eta * k) + eta * second / 2)
    return np.array(out)


def second_moment_bound(setting: NoisySetting, *, n: int, dim: int, clip_norm: float) -> float:
    """C^2 M >= E||g_k||^2, M = 1 + (1 - q)/(q n) + d sigma^2/(q n)^2 (module docstring).

    Equality when every clipped gradient has norm C and all point the same way.
    """
    q = setting.sampling_prob
    m = 1.0 + (1.0 - q) / (q * n) + dim * setting.noise_multiplier**2 / (q * n) ** 2
    return clip_norm**2 * m


def epsilon_of(setting: NoisySetting, *, delta: float = DELTA) -> float:
    """eps of K Poisson-subsampled Gaussian steps, `toolkit.privacy.accounting` "rdp"."""
    return accounting.epsilon(
        accountant="rdp",
        noise_multiplier=setting.noise_multiplier,
        sampling_prob=setting.sampling_prob,
        steps=setting.steps,
        delta=delta,
    )


def bst_scale(
    data: Dataset, setting: NoisySetting, clip_norms: np.ndarray, *, delta: float = DELTA
) -> np.ndarray:
    """C 2R sqrt(d log(1/delta)) / (n eps): the BST 2014 rate with constant 1 (a scale)."""
    n, d = data.z.shape
    eps = epsilon_of(setting, delta=delta)
    rate = 2 * setting.radius * math.sqrt(d * math.log(1 / delta)) / (n * eps)
    return np.asarray(clip_norms, np.float64) * rate


@dataclasses.dataclass(frozen=True, eq=False)
class NoisyCurve:
    """Excess risk against C at one `NoisySetting`, decomposed; arrays are per C.

    Attributes:
      excess_mean, excess_half: MC mean of L_T(theta_bar) - L_T(theta_u) and the 95% half-width.
      last_mean, last_half: the same for the last iterate theta_K.
      bias: L_T(theta_c) - L_T(theta_u), noiseless clipped optimum (certified).
      optimisation: L_T(theta_bar^0) - L_T(theta_c), noiseless K steps, q = 1.
      noise_mean, noise_half: E L_T(theta_bar) - L_T(theta_bar^0), with its 95% half-width.
      certificate: 2R tol of the unclipped solve; L* lies in [L_T(theta_u) - cert, L_T(theta_u)],
        so each excess above is low by at most `certificate`.
      per_run: (reps, nC) L_T(theta_bar) - L_T(theta_u), for resampling.
    """

    setting: NoisySetting
    clip_norms: np.ndarray
    excess_mean: np.ndarray
    excess_half: np.ndarray
    last_mean: np.ndarray
    last_half: np.ndarray
    bias: np.ndarray
    optimisation: np.ndarray
    noise_mean: np.ndarray
    noise_half: np.ndarray
    bound: np.ndarray
    bst: np.ndarray
    epsilon: float
    certificate: float
    per_run: np.ndarray

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.excess_mean))

    def optimal_c_interval(self, *, resamples: int = 400, seed: int = 0) -> tuple[float, float]:
        """2.5% and 97.5% quantiles of argmin_C of the mean, bootstrapping the repetitions."""
        rng = np.random.default_rng([seed, 12])
        reps = self.per_run.shape[0]
        idx = rng.integers(0, reps, size=(resamples, reps))
        best = np.argmin(self.per_run[idx].mean(axis=1), axis=1)
        lo, hi = np.quantile(self.clip_norms[best], [0.025, 0.975])
        return float(lo), float(hi)


def _mean_half(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), Z95 * x.std(axis=0, ddof=1) / math.sqrt(x.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """Certified noiseless optima at one T: L_T at each clipped optimum theta_c and at theta_u."""

    inverse_temp: float
    radius: float
    clip_norms: np.ndarray
    clipped_risk: np.ndarray  # L_T(theta_c) per C
    optimal_risk: float  # L_T(theta_u); L* in [optimal_risk - certificate, optimal_risk]
    certificate: float


def reference(data: Dataset, *, inverse_temp: float, radius: float, clip_norms) -> Reference:
    """Certified clipped and unclipped optima by `solvers.projected_gd` (depend on T, R, C only)."""
    cs = np.append(np.asarray(clip_norms, np.float64), math.inf)
    sol = solvers.projected_gd(
        np.repeat(data.z[None], len(cs), axis=0),
        np.repeat(data.y[None], len(cs), axis=0),
        inverse_temp=np.full(len(cs), inverse_temp),
        clip_norm=cs,
        radius=radius,
        tol=PGD_TOL,
    )
    if not sol.certified.all():
        raise RuntimeError(f"reference PGD not certified for C={cs[~sol.certified]}")
    f = risks(sol.theta, data, inverse_temp=inverse_temp)
    return Reference(
        inverse_temp=inverse_temp,
        radius=radius,
        clip_norms=cs[:-1],
        clipped_risk=f[:-1],
        optimal_risk=float(f[-1]),
        certificate=float(sol.gap[-1]),
    )


def excess_curve(
    data: Dataset, setting: NoisySetting, clip_norms, ref: Reference | None = None
) -> NoisyCurve:
    """Run the MC and the certified references for every C; see `NoisyCurve`."""
    clip_norms = np.asarray(clip_norms, np.float64)
    t = setting.inverse_temp
    if ref is None:
        ref = reference(data, inverse_temp=t, radius=setting.radius, clip_norms=clip_norms)
    if not (
        ref.inverse_temp == t
        and ref.radius == setting.radius
        and np.array_equal(ref.clip_norms, clip_norms)
    ):
        raise ValueError("ref was computed for another (T, R, C grid) than setting / clip_norms.")
    f_star = ref.optimal_risk

    avg, last = run_dp_gd(data, setting, clip_norms)
    noiseless = dataclasses.replace(setting, noise_multiplier=0.0, sampling_prob=1.0, repetitions=2)
    avg0, _ = run_dp_gd(data, noiseless, clip_norms)
    f_avg0 = risks(avg0[0], data, inverse_temp=t)

    per_run = risks(avg, data, inverse_temp=t) - f_star
    excess_mean, excess_half = _mean_half(per_run)
    last_mean, last_half = _mean_half(risks(last, data, inverse_temp=t) - f_star)
    noise_mean, noise_half = _mean_half(per_run - (f_avg0 - f_star))
    return NoisyCurve(
        setting=setting,
        clip_norms=clip_norms,
        excess_mean=excess_mean,
        excess_half=excess_half,
        last_mean=last_mean,
        last_half=last_half,
        bias=ref.clipped_risk - f_star,
        optimisation=f_avg0 - ref.clipped_risk,
        noise_mean=noise_mean,
        noise_half=noise_half,
        bound=explicit_bound(data, setting, clip_norms),
        bst=bst_scale(data, setting, clip_norms),
        epsilon=epsilon_of(setting),
        certificate=ref.certificate,
        per_run=per_run,
    )


# ----------------------------------------------------------------------------
# Checks for `bound-check` (each ~1 s with the quick settings).


def check_one_step_variance(
    data: Dataset,
    *,
    inverse_temp: float,
    clip_norm: float,
    noise_multiplier: float,
    sampling_prob: float,
    repetitions: int,
    seed: int,
) -> CheckResult:
    """E||g - grad L_hat||^2 at theta = 0 against its closed form.

    The closed form is (q(1-q) sum_i ||clip g_i||^2 + d sigma^2 C^2) / (q n)^2.

    The Monte Carlo estimate of a mean of squared norms: its standard error is
    estimated from the same sample, and the check fails beyond 5 standard errors.
    Catches noise added to the mean instead of the sum, noise without C, a wrong q.
    """
    n, d = data.z.shape
    q, c = sampling_prob, clip_norm
    theta = np.zeros((repetitions, 1, d))
    rng = np.random.default_rng([seed, 13])
    g = noisy_gradients(
        theta,
        data,
        inverse_temp=inverse_temp,
        clip_norms=np.array([c]),
        noise_multiplier=noise_multiplier,
        sampling_prob=q,
        rng=rng,
    )[:, 0]
    a = _clipped_coefficients(np.zeros(n), data.y, np.linalg.norm(data.z, axis=1), inverse_temp, c)
    mean_field = a @ data.z / n
    sq = np.sum((g - mean_field) ** 2, axis=1)
    clipped_sq = np.sum((a[:, None] * data.z) ** 2)
    expected = (q * (1 - q) * clipped_sq + d * noise_multiplier**2 * c**2) / (q * n) ** 2
    se = sq.std(ddof=1) / math.sqrt(repetitions)
    z_score = (sq.mean() - expected) / se
    return CheckResult(
        name="DP-SGD: one-step noise, z-score",
        measure="(MC mean - formula) / MC standard error",
        value=float(z_score),
        tolerance="|z| <= 5",
        passed=bool(abs(z_score) <= 5.0),
        details={
            "MC mean": float(sq.mean()),
            "formula": float(expected),
            "reps": repetitions,
            "q": q,
            "sigma": noise_multiplier,
            "C": c,
            "T": inverse_temp,
        },
    )


@float64
def check_field_vs_autodiff(
    data: Dataset, *, inverse_temp: float, clip_norms: np.ndarray, points: int, seed: int
) -> CheckResult:
    """The noiseless full-batch g_k against mean_i clip_factors(jax.grad(l_i)) (toolkit rule).

    Two independent paths to the mean clipped gradient: the factored numpy form used by
    the runs, and autodiff of `analysis.losses.binary_loss` with `toolkit.grads.clipping`.
    Means of n terms of size <= T: agreement to 1e-13 T is float64 rounding.
    """
    rng = np.random.default_rng([seed, 14])
    theta = rng.normal(size=(points, 1, data.z.shape[1])) * 2.0
    cs = np.asarray(clip_norms, np.float64)
    g = noisy_gradients(
        np.repeat(theta, len(cs), axis=1),
        data,
        inverse_temp=inverse_temp,
        clip_norms=cs,
        noise_multiplier=0.0,
        sampling_prob=1.0,
        rng=rng,
    )

    @jax.jit
    def reference(th, c):
        grads = jax.vmap(
            lambda zi, yi: jax.grad(binary_loss)(th, zi, yi, inverse_temp=inverse_temp)
        )(data.z, data.y)
        factors = clip_factors(jnp.linalg.norm(grads, axis=1), clipping="flat", clip_norm=c)
        return jnp.mean(grads * factors[:, None], axis=0)

    err = max(
        float(np.max(np.abs(g[p, j] - np.asarray(reference(theta[p, 0], c)))))
        for p in range(points)
        for j, c in enumerate(cs)
    )
    return CheckResult(
        name="DP-GD: clipped mean vs autodiff",
        measure="max |numpy - jax.grad + clip_factors|",
        value=err,
        tolerance=f"<= {1e-13 * inverse_temp:.0e}",
        passed=err <= 1e-13 * inverse_temp,
        details={"points": points, "C": list(cs), "T": inverse_temp},
    )


def check_noisy_bound(curves: list[NoisyCurve]) -> CheckResult:
    """Every measured E excess (lower 95% end) <= the explicit bound; the optimal-C finding.

    Also the proved bias >= -cert (L(theta_c) >= L* >= L(theta_u) - cert, up to rounding).
    """
    worst, parts = 0.0, []
    bias_ok = all(
        np.all(cv.bias >= -cv.certificate - 64 * EPS * np.max(np.abs(cv.bias) + 1.0))
        for cv in curves
    )
    for cv in curves:
        # Measured excess <= true excess (L(theta_u) >= L*): a violation here is a real one.
        ratio = (cv.excess_mean - cv.excess_half) / cv.bound
        worst = max(worst, float(np.max(ratio)))
        i = cv.best_index
        lo, hi = cv.optimal_c_interval()
        s = cv.setting
        parts.append(
            f"q={s.sampling_prob:g}: C*={cv.clip_norms[i]:g} (bootstrap 95% {lo:g}-{hi:g}), "
            f"excess {cv.excess_mean[i]:.3g} = bias {cv.bias[i]:.2g} + opt "
            f"{cv.optimisation[i]:.2g} + noise {cv.noise_mean[i]:.2g}"
        )
    s = curves[0].setting
    return CheckResult(
        name="DP-(S)GD: E excess/explicit bound",
        measure="max (MC mean - 95% half-width) / bound",
        value=worst,
        tolerance="<= 1; bias >= -cert",
        passed=worst <= 1.0 and bias_ok,
        finding=(
            f"Noisy clipped GD (T={s.inverse_temp:g}, sigma={s.noise_multiplier:g}, "
            f"K={s.steps}, {s.repetitions} runs): " + "; ".join(parts) + "."
        ),
        details={"eps (rdp, delta=1e-5)": [cv.epsilon for cv in curves]},
    )


def check_noisy_invariance(
    data: Dataset, setting: NoisySetting, clip_norms: np.ndarray
) -> CheckResult:
    """(T, C, R) and (1, C/T, T R) give the same noisy excess with the same seeds.

    theta' = T theta maps one run onto the other exactly: eta scales as 1/T^2, the clipped
    gradient as T clip_{C/T}, the noise sigma C as T sigma (C/T). Only rounding differs.
    Also checks that every last iterate lies in its ball (the projection).
    """
    t = setting.inverse_temp
    twin = dataclasses.replace(setting, inverse_temp=1.0, radius=setting.radius * t)
    avg, last = run_dp_gd(data, setting, clip_norms)
    avg1, last1 = run_dp_gd(data, twin, np.asarray(clip_norms) / t)
    a = risks(avg, data, inverse_temp=t)
    b = risks(avg1, data, inverse_temp=1.0)
    err = float(np.max(np.abs(a - b)))
    reach = max(
        float(np.max(np.linalg.norm(last, axis=-1))) / setting.radius,
        float(np.max(np.linalg.norm(last1, axis=-1))) / twin.radius,
    )
    return CheckResult(
        name="DP-GD: (T,C,R) vs (1,C/T,TR) risk",
        measure="max |risk difference| over runs and C",
        value=err,
        tolerance="<= 1e-9; ||theta|| <= R",
        passed=err <= 1e-9 and reach <= 1.0 + 1e-12,
        details={
            "T": t,
            "C": list(np.asarray(clip_norms)),
            "R": setting.radius,
            "max ||theta_K|| / R": reach,
        },
    )


def suite_rows(*, n: int, dim: int, seed: int, quick: bool) -> list[CheckResult]:
    """The rows `bound-check` runs: one-step noise, scaling invariance, the bound (~2-4 s)."""
    data = next(d for d in make_datasets(n=n, dim=dim, seed=seed) if d.name == "noisy")
    reps = 16 if quick else 48
    t = 2.0
    cs = t * np.array([data.max_norm, 1 / 16, 1 / 4])  # the no-clipping C first
    ref = reference(data, inverse_temp=t, radius=1.0, clip_norms=cs)
    curves = [
        excess_curve(
            data,
            NoisySetting(
                inverse_temp=t,
                noise_multiplier=4.0,
                sampling_prob=q,
                steps=50,
                repetitions=reps,
                seed=seed,
            ),
            cs,
            ref,
        )
        for q in (1.0, 0.25)
    ]
    twin = NoisySetting(
        inverse_temp=3.0,
        noise_multiplier=2.0,
        sampling_prob=0.5,
        steps=30,
        repetitions=4,
        seed=seed,
    )
    return [
        check_field_vs_autodiff(data, inverse_temp=t, clip_norms=cs, points=4, seed=seed),
        check_one_step_variance(
            data,
            inverse_temp=t,
            clip_norm=0.5,
            noise_multiplier=2.0,
            sampling_prob=0.25,
            repetitions=500 if quick else 2000,
            seed=seed,
        ),
        check_noisy_invariance(data, twin, np.array([0.3, 1.0, 3.0])),
        check_noisy_bound(curves),
    ]
