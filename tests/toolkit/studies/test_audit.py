"""The one-run privacy audit: its statistics against independent computations, and end to end.

Independent references: the Clopper-Pearson bound (scipy.stats.beta) for delta = 0, a
direct loop over binomial tails for the delta term, and Monte Carlo runs of eps-DP and
(eps, delta)-DP randomised response, for which the audited eps must exceed the true eps
in at most a fraction 1 - confidence of the runs.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import special, stats
from typer.testing import CliRunner

from toolkit import training as train_lib
from toolkit.cli import app
from toolkit.data import load_dataset
from toolkit.privacy import PoissonSampler, accounting
from toolkit.runs import RunConfig
from toolkit.studies import _audit as audit
from toolkit.studies import _audit_stats as audit_stats
from toolkit.training import _dpsgd as dpsgd
from toolkit.training._loop import Loop

runner = CliRunner()
CONF = 0.95


# --- statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "r, v", [(10, 10), (40, 35), (100, 80), (1000, 1000), (1000, 990), (500, 300)]
)
def test_lower_bound_with_delta_zero_is_the_clopper_pearson_bound(r, v):
    """delta = 0: P[Bin(r, p) >= v] = alpha solves p = beta.ppf(alpha, v, r - v + 1) (CP)."""
    p_star = stats.beta.ppf(1 - CONF, v, r - v + 1)
    expected = max(0.0, math.log(p_star / (1 - p_star)))
    got = audit_stats.epsilon_lower_bound(m=1000, r=r, v=v, delta=0.0, confidence=CONF)
    assert got == pytest.approx(expected, abs=1e-8)  # bisection to 64 / 2^50; ppf to ~1e-12


@pytest.mark.parametrize("r, v", [(50, 45), (200, 150), (1000, 700)])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
def test_p_value_delta_term_equals_a_direct_sum_over_all_i(r, v, eps):
    """SNJ Thm 3.3: the max over i = 1..m of (f(v-i) - f(v))/i, summed with binom.sf."""
    m, delta = 1000, 1e-4
    q = float(special.expit(eps))

    def f(u):
        return 1.0 if u <= 0 else float(stats.binom.sf(u - 1, r, q))

    alpha = max((f(v - i) - f(v)) / i for i in range(1, m + 1))
    expected = min(1.0, f(v) + 2 * m * delta * alpha)
    assert audit_stats.p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(
        expected, rel=1e-9
    )


def test_bound_is_monotone_and_edge_cases():
    lbs = [
        audit_stats.epsilon_lower_bound(m=200, r=100, v=v, delta=1e-5, confidence=CONF)
        for v in range(50, 101, 10)
    ]
    assert lbs[0] == 0.0 and all(a <= b for a, b in zip(lbs, lbs[1:]))
    assert audit_stats.p_value(m=10, r=0, v=0, epsilon=3.0, delta=0.0) == 1.0
    with pytest.raises(ValueError, match="2\\*m\\*delta"):
        audit_stats.p_value(m=10**6, r=1, v=1, epsilon=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="confidence"):
        audit_stats.epsilon_lower_bound(m=10, r=5, v=5, delta=0.0, confidence=1.0)


def _randomised_response(rng, m, eps, delta=0.0):
    """Scores of an (eps, delta)-DP mechanism on S: with prob delta reveal S_i, else RR_eps."""
    s = rng.random(m) < 0.5
    keep = rng.random(m) < special.expit(eps)  # report the truth w.p. e^eps / (1 + e^eps)
    y = np.where(keep, s, ~s).astype(float)
    revealed = rng.random(m) < delta
    scores = y + 0.1 * rng.random(m)  # tie-break independent of s
    scores[revealed] = np.where(s[revealed], 10.0, -10.0)
    return scores, s


def test_single_test_on_randomised_response_has_level_one_minus_confidence():
    """Top-40 guesses on eps-DP RR are each right w.p. expit(eps), independently: W ~ Bin(40, p).

    The audit rejects the true eps exactly when W >= v*, so its false-claim rate is
    P[Bin >= v*] <= 1 - CONF; 1000 runs estimate it within 4 standard errors.
    """
    m, eps, k, runs = 200, 1.0, 40, 1000
    rng = np.random.default_rng(0)
    wrong = 0
    for _ in range(runs):
        scores, s = _randomised_response(rng, m, eps)
        result = audit_stats.audit_scores(scores, s, delta=0.0, confidence=CONF, grid=[(k, 0)])
        wrong += result.epsilon_lower_bound > eps
    p = special.expit(eps)
    v_star = next(v for v in range(k + 1) if stats.binom.sf(v - 1, k, p) < 1 - CONF)
    exact = stats.binom.sf(v_star - 1, k, p)
    assert exact <= 1 - CONF
    assert abs(wrong / runs - exact) <= 4 * math.sqrt(exact * (1 - exact) / runs)


@pytest.mark.parametrize("delta", [0.0, 2e-3])
def test_full_grid_audit_never_claims_more_than_the_true_eps_of_randomised_response(delta):
    """(eps, delta)-DP RR, default grid with Bonferroni: over-claims in <= 5% of runs (+3 se).

    With delta = 2e-3 (2 m delta = 0.8) a canary is revealed outright in 1/3 of the runs;
    the delta term then dominates and the audit (rightly) certifies little.
    """
    m, eps, runs = 200, 1.0, 200
    rng = np.random.default_rng(1)
    bounds = []
    for _ in range(runs):
        scores, s = _randomised_response(rng, m, eps, delta)
        bounds.append(
            audit_stats.audit_scores(scores, s, delta=delta, confidence=CONF).epsilon_lower_bound
        )
    bounds = np.array(bounds)
    assert np.mean(bounds > eps) <= (1 - CONF) + 3 * math.sqrt(CONF * (1 - CONF) / runs)
    if delta == 0:
        assert np.median(bounds) > 0.3  # and it is not vacuous: eps = 1 RR is detected


def test_guesses_ignore_membership_and_break_ties_by_index():
    scores = np.array([1.0, 1.0, np.nan, 0.5, 1.0])
    a = audit_stats.audit_scores(scores, np.array([1, 0, 0, 1, 1], bool), delta=0, grid=[(2, 1)])
    b = audit_stats.audit_scores(scores, np.array([0, 1, 1, 0, 0], bool), delta=0, grid=[(2, 1)])
    assert (a.correct, b.correct) == (2, 1)  # guesses in: canaries 0 and 1; out: canary 2 (NaN)


# --- end to end ----------------------------------------------------------------------------

TINY = dict(limit_train=100, epochs=8, batch_size=40, lr=0.05, momentum=0.9, max_physical_batch=64)
CLI_TINY = ["--limit-train", "100", "--epochs", "8", "--batch-size", "40", "--lr", "0.05",
            "--momentum", "0.9", "--max-physical-batch", "64"]  # fmt: skip


def test_zero_noise_run_shows_a_large_audited_eps(tiny_data_dir, tmp_path):
    """sigma = 0, C = 1e6: members are memorised; the bound must clear 0.5 (m = 100)."""
    out = tmp_path / "sigma0"
    args = ["audit", "--data-dir", str(tiny_data_dir), "--canaries", "100", *CLI_TINY,
            "--noise-multiplier", "0", "--clip-norm", "1e6", "--json",
            "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["epsilon"] == dict.fromkeys(accounting.ACCOUNTANTS)  # inf, stored as null
    assert record["epsilon_lower_bound"] > 0.5 and record["consistent"]
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "canaries.npz"]
    assert json.loads((out / "audit.json").read_text()) == record
    # The stored scores reproduce the stored bound.
    z = np.load(out / "canaries.npz")
    again = audit_stats.audit_scores(-z["loss"], z["included"], delta=1e-5, confidence=CONF)
    assert again.epsilon_lower_bound == record["epsilon_lower_bound"]
    assert z["included"].sum() == record["num_included"]
    assert np.all(z["source_index"] >= 100)  # canaries lie outside the base set
    # Both files say what is not covered by eps: the inclusion bits and what uses them.
    assert "included" in str(z["not_covered_by_dp"]) and "not covered by eps" in str(
        z["not_covered_by_dp"]
    )
    assert "inclusion bits" in record["not_covered_by_dp"]


def test_dp_run_audit_stays_below_the_accountant(tiny_data_dir, monkeypatch):
    """sigma = 3 (eps ~2): the audited bound must not exceed the accountant's eps.

    A spy on the accumulate step also checks the audit's design: excluded canaries never
    enter a batch, and each step's batch is exactly the Poisson draw over all base + m
    slots restricted to the present examples (so q = B / (base + m) does not depend on S).
    """
    seen = []
    make_accumulate = dpsgd.make_accumulate_fn

    def spy(clip):
        accumulate = make_accumulate(clip)

        def recording(params, acc, images, labels, idx, mask, *rest):
            seen.append(np.asarray(idx)[np.asarray(mask)])
            return accumulate(params, acc, images, labels, idx, mask, *rest)

        return recording

    monkeypatch.setattr(dpsgd, "make_accumulate_fn", spy)
    histories = []
    real_run = Loop.run

    def run(self, *args, **kwargs):
        result = real_run(self, *args, **kwargs)
        histories.append(result[2])
        return result

    monkeypatch.setattr(Loop, "run", run)
    cfg = RunConfig(
        dataset="fashion-mnist",
        data_dir=str(tiny_data_dir),
        noise_multiplier=3.0,
        clip_norm=1.0,
        **TINY,
    )
    record = audit.run_audit(cfg, canaries=100)
    # The train time is the epochs and their compilation, as a run's summary counts it:
    # the set-up (model, per-example check) and the scoring are not training.
    (history,) = histories
    assert record.train_time_s == sum(r.epoch_time_s + (r.compile_time_s or 0) for r in history)
    full = load_dataset("fashion-mnist", data_dir=tiny_data_dir)
    present = np.concatenate(
        [np.ones(100, bool), audit.make_canaries(full, base=100, m=100, seed=0).included]
    )
    sampler = PoissonSampler(200, 40 / 200, seed=0)
    expected = [i for t in range(40) for i in sampler.indices(t) if present[i]]
    assert np.array_equal(np.concatenate(seen), expected)  # one micro-batch per step here
    assert record.consistent and record.epsilon_lower_bound <= min(record.epsilon.values())
    # The eps is that of q = B / (base + m) over the steps actually run.
    assert record.sampling_prob == 40 / 200 and record.steps == 8 * (200 // 40)
    for name, eps in record.epsilon.items():
        assert eps == pytest.approx(
            accounting.epsilon(
                accountant=name, noise_multiplier=3.0, sampling_prob=0.2, steps=40, delta=1e-5
            ),
            rel=1e-9,
        )


def test_a_bound_above_the_accountant_is_flagged_as_a_bug(tiny_data_dir, tmp_path, monkeypatch):
    """Fake an over-claiming audit (no training): exit 1, 'BUG:' on stderr, record written."""

    def no_training(cfg, data, canaries, progress=False):
        return train_lib.init_model(cfg, data), 0, 0.0

    def over_claim(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), epsilon_lower_bound=50.0)

    real = audit_stats.audit_scores
    monkeypatch.setattr(audit, "train_with_canaries", no_training)
    monkeypatch.setattr(audit, "audit_scores", over_claim)
    out = tmp_path / "bug"
    args = ["audit", "--data-dir", str(tiny_data_dir), "--canaries", "50", "--limit-train",
            "100", "--batch-size", "30", "--noise-multiplier", "5", "--quiet",
            "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "BUG: audited eps lower bound 50.000 exceeds" in result.stderr
    assert json.loads((out / "audit.json").read_text())["consistent"] is False


BAD = [
    (["--canaries", "1"], "canaries=1"),
    (["--canaries", "600"], "limit_train=100 plus canaries=600"),
    (["--confidence", "1.5"], "confidence=1.5"),
    (["--activation", "swish"], "activation='swish'"),
    (["--noise-multiplier", "-1"], "noise_multiplier=-1.0"),
]


@pytest.mark.parametrize("extra, needle", BAD)
def test_bad_audit_input_is_one_line_exit_2_nothing_written(tiny_data_dir, tmp_path, extra, needle):
    out = tmp_path / "never"
    args = {"--data-dir": str(tiny_data_dir), "--canaries": "100", "--limit-train": "100",
            "--noise-multiplier": "1", "--out": str(out)}  # fmt: skip
    for i in range(0, len(extra), 2):
        args[extra[i]] = extra[i + 1]
    flags = [x for kv in args.items() for x in kv]
    result = runner.invoke(app, ["audit", "--quiet", *flags])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert not out.exists()
