"""Quantile-adaptive clipping: the noise split, its accounting, and the privatizer's draws.

The split sigma_g = (sigma^-2 - (2 sigma_b)^-2)^-1/2 (Andrew et al. 2021, Thm. 1) makes the
pair (clipped sum, centred count) one Gaussian mechanism of multiplier sigma. Checked here
independently of that algebra: the hockey-stick divergence of the two-dimensional
Poisson-subsampled pair, integrated numerically on a grid, equals dp-accounting's PLD delta
for one subsampled Gaussian step of multiplier sigma.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

import toolkit
from tests import zoo
from toolkit.base import ToolkitError
from toolkit.privacy import (
    ClippedStep,
    PrivacyParams,
    centred_count,
    default_count_noise,
    gradient_noise,
    quantile_privatizer,
)


@pytest.mark.parametrize(("sigma", "sigma_b"), [(1.2, 1.5), (2.35, 102.4), (0.8, 0.45)])
def test_the_split_is_andrew_et_al_formula(sigma, sigma_b):
    sg = gradient_noise(sigma, sigma_b)
    assert sg > sigma
    assert math.isclose((sg**-2 + (2 * sigma_b) ** -2) ** -0.5, sigma, rel_tol=1e-12)


@pytest.mark.parametrize(("sigma", "sigma_b", "q", "eps"), [(1.2, 1.5, 0.3, 0.8),
                                                            (0.9, 0.6, 0.05, 0.3)])  # fmt: skip
def test_the_two_dimensional_step_has_the_delta_of_one_gaussian_of_multiplier_sigma(
    sigma, sigma_b, q, eps
):
    """In units of each release's noise, one example shifts the pair by (1/sigma_g,
    1/(2 sigma_b)) (clipped norm C, centred count 1/2). delta(eps) of the subsampled pair,
    both directions (remove: Q vs P; add: P vs Q), on a 0.005 grid over [-9, 11]^2 (the
    Gaussian mass outside is < 1e-18), against the PLD accountant at a 1e-4 value
    discretisation: they agree to 1e-6 relative (measured: 1e-11); with the count's cost
    ignored (sigma_g = sigma) delta is more than 10% larger."""
    h = 0.005
    grid = np.arange(-9.0, 11.0, h)
    z1, z2 = np.meshgrid(grid, grid, indexing="ij")

    def density(a, b):
        return np.exp(-(a**2 + b**2) / 2) / (2 * np.pi)

    def delta_2d(sg):
        p = density(z1, z2)
        q_mix = (1 - q) * p + q * density(z1 - 1 / sg, z2 - 1 / (2 * sigma_b))
        remove = np.sum(np.maximum(0.0, q_mix - math.exp(eps) * p)) * h * h
        add = np.sum(np.maximum(0.0, p - math.exp(eps) * q_mix)) * h * h
        return max(remove, add)

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)))
    reference = accountant.get_delta(eps)
    assert reference > 1e-4  # a delta that the comparison can see
    assert math.isclose(delta_2d(gradient_noise(sigma, sigma_b)), reference, rel_tol=1e-6)
    assert delta_2d(sigma) > 1.1 * reference  # the count's cost ignored: sigma_g = sigma


def test_a_count_noise_too_small_for_sigma_is_one_line():
    with pytest.raises(ToolkitError, match=r"count_noise=0.5 must be > noise_multiplier / 2"):
        gradient_noise(1.0, 0.5)


def _release(key_seed: int, *, d: int, c0: float, sigma: float, sigma_b: float,
             unclipped: float, b: float = 100.0, eta: float = 0.2):  # fmt: skip
    tx = quantile_privatizer(
        noise_multiplier=sigma, count_noise=sigma_b, target_quantile=0.5,
        learning_rate=eta, initial_clip_norm=c0, expected_batch_size=b,
        key=jax.random.key(key_seed),
    )  # fmt: skip
    state = tx.init(None)
    zeros = {"w": jnp.zeros((d,), jnp.float32)}
    out, state = tx.update(ClippedStep(zeros, jnp.float32(unclipped)), state)
    return np.asarray(out["w"], np.float64) * b, float(state.clip_norm)


def test_the_gradient_noise_has_std_sigma_g_times_the_step_clip_norm():
    """On a zero sum of 200,000 coordinates, the noise * B has std sigma_g C_0 within
    5 / sqrt(400,000) = 0.8% (sigma_g here is 34% above sigma)."""
    sigma, sigma_b, c0 = 1.0, 0.75, 0.3
    noise, _ = _release(0, d=200_000, c0=c0, sigma=sigma, sigma_b=sigma_b, unclipped=0.0)
    expected = gradient_noise(sigma, sigma_b) * c0
    assert abs(noise.std() / expected - 1) < 5 / math.sqrt(400_000)
    assert abs(noise.mean()) < 5 * expected / math.sqrt(200_000)


def test_the_clip_norm_moves_by_the_noisy_count_with_std_sigma_b():
    """C_1 = C_0 exp(-eta (b~ / B + 1/2 - gamma)): over 400 keys the recovered count b~
    has mean b (within 5 sigma_b / sqrt(400)) and std sigma_b (within 5 / sqrt(800) =
    18%); a batch three quarters unclipped (b = B/4, share 0.75 > gamma = 0.5) shrinks C,
    one three quarters clipped grows it. The noisy share is clamped to [0, 1]: with a
    count noise of 50 B, C never moves by more than exp(eta / 2) in one step."""
    b, eta, sigma_b = 100.0, 0.2, 4.0
    for unclipped, direction in ((b / 4, -1), (-b / 4, 1)):
        counts = []
        for seed in range(400):
            _, c1 = _release(seed, d=1, c0=1.0, sigma=1.0, sigma_b=sigma_b,
                             unclipped=unclipped, b=b, eta=eta)  # fmt: skip
            counts.append(-math.log(c1) / eta * b)  # gamma = 1/2 cancels the centring
        counts = np.asarray(counts)
        assert abs(counts.mean() - unclipped) < 5 * sigma_b / math.sqrt(400)
        assert abs(counts.std() / sigma_b - 1) < 5 / math.sqrt(800)
        c_mean = math.exp(-eta * (unclipped / b))  # gamma = 1/2
        assert (c_mean - 1) * direction > 0
    moves = [_release(seed, d=1, c0=1.0, sigma=1.0, sigma_b=50 * b, unclipped=0.0, b=b,
                      eta=eta)[1] for seed in range(50)]  # fmt: skip
    assert min(moves) == pytest.approx(math.exp(-eta / 2), rel=1e-6)
    assert max(moves) == pytest.approx(math.exp(eta / 2), rel=1e-6)


def test_centred_count_counts_real_rows_and_clipped_non_finite_norms():
    norms = jnp.asarray([0.1, 0.5, jnp.nan, 2.0, 0.2], jnp.float32)
    mask = jnp.asarray([True, True, True, True, False])
    # rows 0, 1 unclipped (+1/2 each), NaN and 2.0 clipped (-1/2 each), row 4 padding
    assert float(centred_count(norms, mask, jnp.float32(0.5))) == 0.0
    assert float(centred_count(norms, mask, jnp.float32(0.05))) == -2.0


def test_a_quantile_run_reports_the_eps_of_sigma_and_moves_its_clip_norm():
    """The accountant composes the step's sigma: a quantile run's eps (every accountant)
    is that of the same sigma, q and steps without the count; its clip norm is recorded
    each epoch and moves towards the median norm from a C_0 below every norm."""
    warnings.simplefilter("ignore")
    x, y = zoo.vectors(64)
    result = toolkit.fit(
        zoo.ZOO["mlp"][0](), (x, y), optimizer=optax.sgd(0.1), batch_size=16, epochs=4,
        clip_norm=1e-3, clipping="quantile", quantile_lr=0.5, noise_multiplier=1.3,
        delta=1e-3, seed=2,
    )  # fmt: skip
    expected = PrivacyParams(num_examples=64, batch_size=16, epochs=4, noise_multiplier=1.3,
                             delta=1e-3).epsilons()  # fmt: skip
    assert result.epsilon == pytest.approx(expected, rel=1e-12)
    clip_norms = [e.clip_norm for e in result.history]
    assert all(c is not None for c in clip_norms)
    assert clip_norms[0] > 1e-3 and clip_norms == sorted(clip_norms)  # all clipped: C grows
    assert default_count_noise(16) == 0.8


def test_rule_settings_without_their_rule_and_a_count_noise_below_sigma_half_are_refused():
    x, y = zoo.vectors(32)
    common = dict(optimizer=optax.sgd(0.1), batch_size=8, epochs=1, clip_norm=0.1, delta=1e-3)
    with pytest.raises(ToolkitError, match=r"target_quantile=0.9 set\(s\) the quantile"):
        toolkit.fit(zoo.ZOO["mlp"][0](), (x, y), noise_multiplier=1.0, target_quantile=0.9,
                    **common)  # fmt: skip
    with pytest.raises(ToolkitError, match=r"layer_split='size' set\(s\) the per-layer"):
        toolkit.fit(zoo.ZOO["mlp"][0](), (x, y), noise_multiplier=1.0, layer_split="size",
                    clipping="quantile", **common)  # fmt: skip
    with pytest.raises(ToolkitError, match=r"count_noise=0.4 must be > noise_multiplier / 2"):
        toolkit.fit(zoo.ZOO["mlp"][0](), (x, y), noise_multiplier=1.0, count_noise=0.4,
                    clipping="quantile", **common)  # fmt: skip
