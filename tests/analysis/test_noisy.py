"""analysis.noisy against independent computations: jax.grad + toolkit clipping, closed forms."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import noisy, noisy_figure, solvers
from analysis.datasets import Dataset, make_datasets
from analysis.losses import binary_loss
from analysis.precision import float64
from toolkit.grads import clip_factors

NOISY = make_datasets(n=32, dim=3, seed=0)[1]


@jax.jit
def _clipped_rows(theta, z, y, t, c):
    grads = jax.vmap(lambda zi, yi: jax.grad(binary_loss)(theta, zi, yi, inverse_temp=t))(z, y)
    factors = clip_factors(jnp.linalg.norm(grads, axis=1), clipping="flat", clip_norm=c)
    return grads * factors[:, None]


@float64
def _autodiff_clipped(theta, data, t, c):
    """Per-example clipped gradients by jax.grad and the toolkit's clip rule, (n, d)."""
    return np.asarray(_clipped_rows(theta, data.z, data.y, t, c))


def test_noiseless_full_batch_gradient_is_the_mean_clipped_autodiff_gradient():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(2, 3, 3))
    cs = np.array([0.05, 0.5, 10.0])
    g = noisy.noisy_gradients(
        theta,
        NOISY,
        inverse_temp=3.0,
        clip_norms=cs,
        noise_multiplier=0.0,
        sampling_prob=1.0,
        rng=rng,
    )
    for r in range(2):
        for j, c in enumerate(cs):
            want = _autodiff_clipped(theta[r, j], NOISY, 3.0, c).mean(axis=0)
            # Means of 32 O(T) terms: agreement to 1e-14 is float64 rounding.
            np.testing.assert_allclose(g[r, j], want, atol=1e-14)


def test_one_step_noise_mean_and_variance_match_the_dp_sgd_formula():
    """E g = mean clip(grad); E||g - E g||^2 = (q(1-q) sum ||clip g_i||^2 + d sigma^2 C^2)/(qn)^2.

    Monte Carlo with 4000 draws: both compared within 5 standard errors estimated from
    the sample (a false alarm has probability ~6e-7 per comparison).
    """
    t, c, sigma, q, reps = 4.0, 0.5, 1.5, 0.3, 4000
    n, d = NOISY.z.shape
    theta = np.full((reps, 1, d), 0.2)
    g = noisy.noisy_gradients(
        theta,
        NOISY,
        inverse_temp=t,
        clip_norms=np.array([c]),
        noise_multiplier=sigma,
        sampling_prob=q,
        rng=np.random.default_rng(1),
    )[:, 0]
    clipped = _autodiff_clipped(theta[0, 0], NOISY, t, c)
    mean = clipped.mean(axis=0)
    se = g.std(axis=0, ddof=1) / math.sqrt(reps)
    assert np.all(np.abs(g.mean(axis=0) - mean) <= 5 * se)
    sq = np.sum((g - mean) ** 2, axis=1)
    want = (q * (1 - q) * np.sum(clipped**2) + d * sigma**2 * c**2) / (q * n) ** 2
    assert abs(sq.mean() - want) <= 5 * sq.std(ddof=1) / math.sqrt(reps)
    row = noisy.check_one_step_variance(
        NOISY,
        inverse_temp=t,
        clip_norm=c,
        noise_multiplier=sigma,
        sampling_prob=q,
        repetitions=reps,
        seed=0,
    )
    at_zero = _autodiff_clipped(np.zeros(d), NOISY, t, c)  # the row measures at theta = 0
    want0 = (q * (1 - q) * np.sum(at_zero**2) + d * sigma**2 * c**2) / (q * n) ** 2
    assert row.passed and row.details["formula"] == pytest.approx(want0, rel=1e-12)


def test_second_moment_bound_is_attained_when_all_clipped_gradients_align():
    """E||g||^2 = C^2 M exactly when every clipped gradient is C times one unit vector.

    Points on +e1 labelled +1 at theta = 0 with C << T/2: each gradient is -(T/2) z, all
    clipped to -C e1. Monte Carlo over 4000 draws, within 5 standard errors.
    """
    n, d, c, reps = 20, 3, 0.1, 4000
    z = np.zeros((n, d))
    z[:, 0] = 1.0
    data = Dataset(name="aligned", z=z, y=np.ones(n))
    setting = noisy.NoisySetting(inverse_temp=4.0, noise_multiplier=3.0, sampling_prob=0.4, steps=1)
    g = noisy.noisy_gradients(
        np.zeros((reps, 1, d)),
        data,
        inverse_temp=4.0,
        clip_norms=np.array([c]),
        noise_multiplier=3.0,
        sampling_prob=0.4,
        rng=np.random.default_rng(2),
    )[:, 0]
    sq = np.sum(g**2, axis=1)
    want = noisy.second_moment_bound(setting, n=n, dim=d, clip_norm=c)
    assert abs(sq.mean() - want) <= 5 * sq.std(ddof=1) / math.sqrt(reps)


def test_noiseless_run_reaches_the_closed_form_clipped_optimum():
    """Two clusters on e1 (test_analysis_theorem1): theta_c = ln(3T/C - 1)/T, T = 4, C = 1."""
    z = np.zeros((4, 2))
    z[:, 0] = 1.0
    data = Dataset(name="two clusters", z=z, y=np.array([1.0, 1.0, 1.0, -1.0]))
    setting = noisy.NoisySetting(
        inverse_temp=4.0,
        noise_multiplier=0.0,
        sampling_prob=1.0,
        steps=400,
        radius=2.0,
        repetitions=2,
    )
    _, last = noisy.run_dp_gd(data, setting, np.array([1.0, math.inf]))
    # GD contracts at rate (1 - mu/L) with mu/L >= 0.2 here: 400 steps leave < 1e-30.
    np.testing.assert_allclose(last[0, 0], [math.log(11.0) / 4.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(last[0, 1], [math.log(3.0) / 4.0, 0.0], atol=1e-12)


def test_curve_decomposes_and_stays_below_the_explicit_bound():
    data = make_datasets(n=32, dim=3, seed=0)[1]
    setting = noisy.NoisySetting(
        inverse_temp=4.0, noise_multiplier=4.0, sampling_prob=0.5, steps=40, repetitions=24, seed=1
    )
    cs = np.array([4.0 * data.max_norm, 0.25, 1.0])
    cv = noisy.excess_curve(data, setting, cs)
    # Bias against SLSQP optima (no shared code with PGD), to SLSQP's accuracy 1e-9.
    _, f_u = solvers.scipy_minimise(data.z, data.y, inverse_temp=4.0, radius=1.0)
    for c, b in zip(cs, cv.bias):
        th, _ = solvers.scipy_minimise(data.z, data.y, inverse_temp=4.0, clip_norm=c, radius=1.0)
        assert b == pytest.approx(
            solvers.objective(th, data.z, data.y, inverse_temp=4.0) - f_u, abs=1e-8
        )
    assert cv.bias[0] == 0.0  # C >= T max||z||: clipping never fires
    total = cv.bias + cv.optimisation + cv.noise_mean
    np.testing.assert_allclose(total, cv.excess_mean, atol=1e-15)
    assert np.all(cv.excess_mean - cv.excess_half <= cv.bound)
    assert np.all(cv.excess_mean + cv.excess_half > 0)
    row = noisy.check_noisy_bound([cv])
    assert row.passed and 0 < row.value < 1


def test_separable_data_end_on_the_sphere_of_radius_r():
    """All y z = e1: the unclipped and clipped optima are R e1 (the loss decreases along e1)."""
    z = np.zeros((6, 2))
    z[:, 0] = 1.0
    data = Dataset(name="separable", z=z, y=np.ones(6))
    setting = noisy.NoisySetting(
        inverse_temp=2.0,
        noise_multiplier=0.0,
        sampling_prob=1.0,
        steps=200,
        radius=0.7,
        repetitions=2,
    )
    _, last = noisy.run_dp_gd(data, setting, np.array([0.1, math.inf]))
    np.testing.assert_allclose(last[0], [[0.7, 0.0], [0.7, 0.0]], atol=1e-15)


def test_scaling_invariance_of_the_noisy_run():
    setting = noisy.NoisySetting(
        inverse_temp=3.0, noise_multiplier=2.0, sampling_prob=0.5, steps=30, repetitions=4
    )
    row = noisy.check_noisy_invariance(NOISY, setting, np.array([0.3, 1.0, 3.0]))
    assert row.passed, row
    # T = 3 is not a power of 2: the twin run rounds differently, so 0 would be suspicious.
    assert 0 < row.value <= 1e-9
    # A different T is not a twin: the check is sensitive.
    off = dataclasses.replace(setting, inverse_temp=2.0)
    a, _ = noisy.run_dp_gd(NOISY, off, np.array([0.3 * 2 / 3, 1.0 * 2 / 3, 2.0]))
    b, _ = noisy.run_dp_gd(NOISY, setting, np.array([0.3, 1.0, 3.0]))
    assert not np.allclose(
        noisy.risks(a, NOISY, inverse_temp=2.0), noisy.risks(b, NOISY, inverse_temp=3.0)
    )


def test_bst_scale_uses_the_rdp_epsilon():
    setting = noisy.NoisySetting(
        inverse_temp=1.0, noise_multiplier=8.0, sampling_prob=1.0, steps=100
    )
    eps = noisy.epsilon_of(setting)
    # Full batch: K Gaussian mechanisms with rdp K alpha / (2 sigma^2); classic conversion at its
    # best alpha is an upper bound on the accountant's tighter one.
    classic = min(
        100 * a / (2 * 64) + math.log(1e5) / (a - 1) for a in np.linspace(1.01, 200, 20000)
    )
    assert 0 < eps <= classic
    n, d = NOISY.z.shape
    want = 0.5 * 2 * math.sqrt(d * math.log(1e5)) / (n * eps)
    assert noisy.bst_scale(NOISY, setting, np.array([0.5]))[0] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("field", "value"),
    [("inverse_temp", 0.0), ("sampling_prob", 1.5), ("steps", 0), ("repetitions", 1)],
)
def test_setting_rejects_bad_values_naming_them(field, value):
    kw = dict(inverse_temp=1.0, noise_multiplier=1.0, sampling_prob=1.0, steps=10)
    kw[field] = value
    with pytest.raises(ValueError, match=f"^{field}="):
        noisy.NoisySetting(**kw)


def test_figure_command_rejects_a_missing_directory(tmp_path, capsys):
    assert noisy_figure.main(["--out", str(tmp_path / "no" / "fig")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out=") and err.count("\n") == 1
