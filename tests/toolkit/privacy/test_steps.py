"""The loop runs exactly the steps the accountant counts: T = epochs * (N // B).

Every other training test uses an N that B divides, where N // B, round(N / B) and
ceil(N / B) agree. Here N = 250 and B = 40 (N / B = 6.25): 6 steps per epoch, 12 in two
epochs, and a derivation that rounds up (7, 14) or any other way fails. The step counts
are read from what ran, not from the code that derives them: the privatizer's counter in
the final optimizer state (one increment per noise draw) and a counting optax
transformation chained in front of the optimizer (one per update applied). Counts are
integers and compared exactly; eps is compared with the accountant's own value for the
counted steps to 1e-9 relative (float round-off; the per-epoch PLD curve is composed
incrementally, equal to a fresh computation to ~1e-8, so PLD gets 1e-7).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from typer.testing import CliRunner

import toolkit
from tests.configs import tiny_config
from toolkit.cli import app
from toolkit.privacy import ShuffleSampler, accounting, steps_per_epoch
from toolkit.runs import rundir
from toolkit.training import _dpsgd as dpsgd
from toolkit.training import _sources as sources
from toolkit.training import train

N, B, EPOCHS = 250, 40, 2
STEPS = EPOCHS * 6  # N // B = 6 steps per epoch, not ceil(6.25) = 7
D, K = 6, 3


class _Mlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(D, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, K, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.fc1(x)))


def _data(n=N):
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, n)
    x = (rng.normal(size=(K, D))[y] * 2 + rng.normal(size=(n, D))).astype(np.float32)
    return x, y.astype(np.int32)


def _counting() -> optax.GradientTransformation:
    """An identity transformation whose state counts the updates that pass through it."""
    return optax.GradientTransformation(
        lambda params: jnp.zeros((), jnp.int32), lambda u, count, params=None: (u, count + 1)
    )


def _checkpoint(out) -> dict[str, int]:
    """The counters in a run's final checkpoint (arrays are named by their tree path)."""
    z = np.load(out / rundir.CHECKPOINT)
    # The privatizer is the first transformation of the chain (`Mechanism.privatized`).
    counts = {"noised": int(z["tree/opt_state/0/count"])}
    if "tree/opt_state/1/0" in z.files:  # `_counting()` chained in front of the optimizer
        counts["applied"] = int(z["tree/opt_state/1/0"])
    return counts


def _assert_eps_is_the_accountants(history, final_eps, *, sigma):
    """Each epoch's eps, and the final one, are the accountants' eps for the steps run."""
    q = B / N
    for record in history:
        assert record.step == record.epoch * 6
        for name in accounting.ACCOUNTANTS:
            want = accounting.epsilon(
                accountant=name, noise_multiplier=sigma, sampling_prob=q, steps=record.step,
                delta=1e-5,
            )  # fmt: skip
            rel = 1e-7 if name == "pld" else 1e-9
            assert record.epsilon[name] == pytest.approx(want, rel=rel), (name, record.epoch)
    assert final_eps == history[-1].epsilon


def test_one_derivation_rounds_down():
    """`steps_per_epoch` and everything that counts steps from it: N // B, not ceil."""
    assert steps_per_epoch(N, B) == 6 and steps_per_epoch(240, B) == 6
    assert steps_per_epoch(B, B) == 1 and steps_per_epoch(2 * B - 1, B) == 1
    p = toolkit.PrivacyParams(N, B, EPOCHS, 1.0)
    assert p.steps_per_epoch == 6 and p.steps == STEPS and p.steps_after(1.5) == 9
    assert ShuffleSampler(N, B, seed=0).steps_per_epoch == 6
    assert accounting.steps_for(num_examples=N, batch_size=B, epochs=EPOCHS) == STEPS
    assert accounting.steps_for(num_examples=50, batch_size=30, epochs=2) == 2  # not 100 // 30


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_fit_runs_the_steps_the_accountant_counts(tmp_path, sampling):
    """12 noise draws and 12 updates, as `PrivacyParams.steps` counts, and eps for 12."""
    sigma = 1.0
    result = toolkit.fit(
        _Mlp(nnx.Rngs(0)), _data(), optimizer=optax.chain(_counting(), optax.sgd(0.1)),
        batch_size=B, epochs=EPOCHS, clip_norm=1.0, noise_multiplier=sigma, sampling=sampling,
        out=tmp_path / "run",
    )  # fmt: skip
    counts = _checkpoint(tmp_path / "run")
    privacy = toolkit.PrivacyParams(N, B, EPOCHS, sigma, sampling=sampling)
    assert counts == {"noised": STEPS, "applied": STEPS} and privacy.steps == STEPS
    _assert_eps_is_the_accountants(result.history, result.epsilon, sigma=sigma)
    if sampling == "shuffle":  # an epoch is 6 batches of exactly B, never a short 7th
        assert [r.batch_size_mean for r in result.history] == [float(B)] * EPOCHS


def test_shuffled_epochs_are_disjoint_full_batches():
    """N // B batches of exactly B distinct examples per epoch; the N mod B rest sit out."""
    s = ShuffleSampler(N, B, seed=3)
    for epoch in range(3):
        batches = [s.indices(t) for t in range(epoch * 6, (epoch + 1) * 6)]
        assert [len(b) for b in batches] == [B] * 6
        assert len(np.unique(np.concatenate(batches))) == 6 * B


@pytest.mark.standard_promotion  # optax's cosine schedule (float ** int32 step count)
def test_train_runs_the_steps_the_accountant_counts(tiny_data_dir, tmp_path, monkeypatch):
    """`toolkit train` with --limit-train 250 --batch-size 40, sigma calibrated, cosine lr."""
    made = []
    make_optimizer = dpsgd.make_optimizer
    monkeypatch.setattr(  # where a run builds its optimizer (toolkit.training._sources)
        sources, "make_optimizer", lambda *a, **kw: made.append(kw) or make_optimizer(*a, **kw)
    )
    cfg = tiny_config(
        tiny_data_dir, limit_train=N, batch_size=B, epochs=EPOCHS, noise_multiplier=None,
        target_epsilon=8.0, lr_schedule="cosine", warmup_epochs=1,
    )  # fmt: skip
    result = train(cfg, out=tmp_path / "run")
    sigma = result.config.noise_multiplier
    calibrated = toolkit.PrivacyParams.calibrated(
        target_epsilon=8.0, num_examples=N, batch_size=B, epochs=EPOCHS
    )
    assert sigma == calibrated.noise_multiplier  # calibrated for the 12 steps that run
    assert _checkpoint(tmp_path / "run") == {"noised": STEPS} and calibrated.steps == STEPS
    # The lr schedule ends (decays to 0) at the last step that runs, warm-up is one epoch.
    assert [(kw["warmup_steps"], kw["total_steps"]) for kw in made] == [(6, STEPS)]
    _assert_eps_is_the_accountants(result.history, result.epsilon, sigma=sigma)
    assert result.epsilon["rdp-classic"] <= 8.0


def test_non_private_cli_run_takes_the_same_steps(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tiny_data_dir), "--quiet",
            "--limit-train", str(N), "--batch-size", str(B), "--epochs", str(EPOCHS),
            "--lr", "0.5", "--max-physical-batch", "64", "--no-privacy",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _checkpoint(out) == {"noised": STEPS}  # the privatizer runs with sigma = 0
    assert [r.step for r in rundir.read_epochs(out)] == [6, STEPS]


def test_account_command_counts_the_same_steps():
    result = CliRunner().invoke(
        app, ["account", "--n", str(N), "--batch-size", str(B), "--epochs", str(EPOCHS),
              "--noise-multiplier", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"steps={STEPS}," in result.output
