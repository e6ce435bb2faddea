"""The public API: `toolkit.fit` on users' own models and losses, `load_run`, the lower layer.

Tolerances. "Step for step" compares `fit` with a hand-written loop over the public lower
layer on the same batches, keys and noise: the two differ only in how a batch is padded
into micro-batches (padding rows contribute exact zeros, but the float32 reduction order
of the sums may change), so parameters agree to ~1e-6 relative after a few steps; 1e-5
catches a missing example, a noise draw, or a wrong divisor (each moves them by > 1e-3).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import toolkit
from tests import REPO, zoo
from toolkit.base import ToolkitError
from toolkit.privacy import PoissonSampler
from toolkit.runs import AuditRecord, EpochRecord, GradNormStats, RunSummary, rundir

README = REPO / "README.md"
N, D, K = 240, 6, 3


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, D)) * 2
    y = rng.integers(0, K, n)
    x = (centres[y] + rng.normal(size=(n, D))).astype(np.float32)
    return x, y.astype(np.int32)


class Mlp(nnx.Module):
    """Linear layers only: the book-keeping path serves it."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8):
        self.fc1 = nnx.Linear(D, width, rngs=rngs)
        self.fc2 = nnx.Linear(width, K, rngs=rngs)

    def __call__(self, x):
        h = toolkit.tempered_sigmoid(self.fc1(x), scale=1.5, inverse_temp=2.0, offset=0.5)
        return self.fc2(h)


class Normed(nnx.Module):
    """A LayerNorm's scale and bias are parameters outside Linear/Conv: vmap only."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(D, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, K, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.norm(self.fc1(x))))


class Dropped(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(D, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.fc2 = nnx.Linear(16, K, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(jnp.tanh(self.fc1(x))))


class Batched(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(D, K, rngs=rngs)
        self.bn = nnx.BatchNorm(K, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.fc(x))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _by_hand(model, data, *, loss_fn, optimizer, batch_size, epochs, clip_norm, sigma, seed):
    """DP-SGD from the lower layer alone: clipped_grad, gaussian_privatizer, a sampler."""
    x, y = map(jnp.asarray, data)
    graphdef, params, state = toolkit.split_model(model)
    clip = toolkit.clipped_grad(graphdef, loss_fn=loss_fn, clip_norm=clip_norm)
    clip = clip.checked(params, state, x, y)
    noise = toolkit.gaussian_privatizer(
        noise_multiplier=sigma, sensitivity=clip.sensitivity,
        expected_batch_size=batch_size, key=jax.random.key(seed),
    )  # fmt: skip
    tx = optax.chain(noise, optimizer)
    opt_state = tx.init(params)
    sampler = PoissonSampler(len(y), batch_size / len(y), seed)
    step_fn = jax.jit(lambda p, xb, yb: clip(p, state, xb, yb).clipped_sum)
    per_epoch = []
    for t in range(epochs * (len(y) // batch_size)):
        idx = sampler.indices(t)
        updates, opt_state = tx.update(step_fn(params, x[idx], y[idx]), opt_state, params)
        params = optax.apply_updates(params, updates)
        if (t + 1) % (len(y) // batch_size) == 0:
            per_epoch.append(params)
    return per_epoch, clip.implementation


@pytest.mark.parametrize(
    "module, path", [(Mlp, "bookkeeping"), (Normed, "bookkeeping")], ids=["linear", "layernorm"]
)
def test_fit_matches_the_lower_level_path_step_for_step(module, path, tmp_path):
    data = _data()
    kw = dict(optimizer=optax.sgd(0.5, momentum=0.9), batch_size=40, epochs=2, clip_norm=0.5)
    result = toolkit.fit(module(nnx.Rngs(0)), data, noise_multiplier=0.7, seed=5, **kw,
                         out=tmp_path / "run", max_physical_batch=24,
                         keep_checkpoints=1)  # fmt: skip
    by_hand, impl = _by_hand(module(nnx.Rngs(0)), data, loss_fn=None, sigma=0.7, seed=5, **kw)
    assert impl == path and [r.per_example_grads for r in result.history] == [path] * 2
    final = nnx.state(result.model, nnx.Param)
    for a, b in zip(_leaves(final), _leaves(by_hand[-1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Epoch 1 as well, through the checkpoint kept after it (its values replace the
    # skeleton's).
    one = toolkit.load_run(tmp_path / "run", model=module(nnx.Rngs(1)), epoch=1)
    for a, b in zip(_leaves(nnx.state(one.model, nnx.Param)), _leaves(by_hand[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # eps under every accountant, for q = 40/240 and 2 * 6 steps (the loop's per-epoch PLD
    # curve composes incrementally: equal to a fresh computation to ~1e-8, see accounting).
    expected = toolkit.PrivacyParams(N, 40, 2, 0.7).epsilons()
    assert result.epsilon == pytest.approx(expected, rel=1e-8) and set(expected) == {
        "rdp", "rdp-classic", "pld"
    }  # fmt: skip


@pytest.mark.standard_promotion  # optax.adam
def test_load_run_round_trip_gives_identical_outputs(tmp_path):
    x, y = _data()
    result = toolkit.fit(Mlp(nnx.Rngs(0)), (x, y), optimizer=optax.adam(1e-2), batch_size=48,
                         epochs=2, clip_norm=1.0, target_epsilon=4.0, out=tmp_path / "r",
                         eval_data=(x[:50], y[:50]))  # fmt: skip
    for model in (Mlp(nnx.Rngs(9)), lambda: Mlp(nnx.Rngs(9))):  # skeleton or factory
        back = toolkit.load_run(tmp_path / "r", model=model)
        np.testing.assert_array_equal(np.asarray(back.model(x)), np.asarray(result.model(x)))
        assert back.epsilon == result.epsilon and back.history == list(result.history)
        assert back.config == result.config and back.summary == result.summary
    assert result.epsilon["rdp-classic"] <= 4.0
    with pytest.raises(ToolkitError, match=r"given in Python \(python:Mlp\); pass model= an"):
        toolkit.load_run(tmp_path / "r")
    with pytest.raises(ToolkitError, match="does not match the checkpoint"):
        toolkit.load_run(tmp_path / "r", model=Mlp(nnx.Rngs(0), width=9))


def test_load_run_rebuilds_a_toolkit_train_run(tiny_data_dir, tiny_run):
    from toolkit.data import load_dataset, to_float

    trained = tiny_run.result  # train(tiny_config(...), out=...): the paper CNN, by name
    back = toolkit.load_run(tiny_run.out)
    test = load_dataset("fashion-mnist", data_dir=tiny_data_dir)
    xs = jnp.asarray(to_float(test.test_images[:64]))
    np.testing.assert_array_equal(np.asarray(back.model(xs)), np.asarray(trained.model(xs)))
    acc = float(np.mean(np.argmax(back.model(xs), -1) == test.test_labels[:64]))
    hits = np.argmax(trained.model(jnp.asarray(to_float(test.test_images))), -1)
    assert back.summary.test_accuracy == pytest.approx(np.mean(hits == test.test_labels))
    assert 0 <= acc <= 1 and back.config == trained.config


def test_dropout_model_trains_deterministically_and_masks_vary(tmp_path):
    data = _data()
    kw = dict(optimizer=optax.sgd(0.3), batch_size=40, epochs=2, clip_norm=1.0,
              noise_multiplier=0.5, eval_data=data)  # fmt: skip
    a = toolkit.fit(Dropped(nnx.Rngs(params=0, dropout=1)), data, **kw)
    b = toolkit.fit(Dropped(nnx.Rngs(params=0, dropout=1)), data, **kw)
    for u, v in zip(_leaves(nnx.state(a.model, nnx.Param)), _leaves(nnx.state(b.model, nnx.Param))):
        np.testing.assert_array_equal(u, v)  # same seed, same masks, same noise
    c = toolkit.fit(Dropped(nnx.Rngs(params=0, dropout=2)), data, **kw)
    assert not np.array_equal(_leaves(nnx.state(a.model, nnx.Param))[0],
                              _leaves(nnx.state(c.model, nnx.Param))[0])  # fmt: skip
    assert a.history[-1].test_accuracy > 0.5  # evaluated with dropout off: 3 separable blobs
    v = toolkit.fit(Dropped(nnx.Rngs(params=0, dropout=1)), data, per_example="vmap", **kw)
    assert v.history[-1].per_example_grads == "vmap" and v.history[-1].test_accuracy > 0.5
    # Masks differ between steps: the same batch twice gives two different clipped sums.
    graphdef, params, state = toolkit.split_model(Dropped(nnx.Rngs(params=0, dropout=1)))
    clip = toolkit.clipped_grad(graphdef, clip_norm=1.0, implementation="bookkeeping")
    x, y = map(jnp.asarray, data)
    stream = toolkit.privacy.randomness.example_stream(jax.random.key(0))
    ids = jnp.asarray(toolkit.privacy.randomness.example_ids(x[:8], y[:8]))
    s0 = clip(
        params, state, x[:8], y[:8], keys=toolkit.privacy.randomness.example_keys(stream, 0, ids)
    )
    s1 = clip(
        params, state, x[:8], y[:8], keys=toolkit.privacy.randomness.example_keys(stream, 1, ids)
    )
    assert not np.array_equal(_leaves(s0.clipped_sum)[0], _leaves(s1.clipped_sum)[0])
    with pytest.raises(ToolkitError, match="pass keys="):  # no silent row-keyed masks
        clip(params, state, x[:8], y[:8])


def test_batchnorm_is_refused_with_the_reason():
    with pytest.raises(ToolkitError, match="BatchNorm.*per-example privacy"):
        toolkit.fit(Batched(nnx.Rngs(0)), _data(), optimizer=optax.sgd(0.1), batch_size=40,
                    epochs=1, clip_norm=1.0, noise_multiplier=1.0)  # fmt: skip


def _label_smoothing(logits, labels):
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, K), 0.2))


def _mse(outputs, targets):
    return jnp.mean(jnp.square(outputs - targets), axis=-1)


@pytest.mark.parametrize("loss", ["smoothing", "mse"])
def test_losses_other_than_cross_entropy_match_vmap_and_clip(loss):
    x, y = _data()
    if loss == "mse":
        loss_fn, labels = _mse, jax.nn.one_hot(y, K)
    else:
        loss_fn, labels = _label_smoothing, y
    graphdef, params, state = toolkit.split_model(Mlp(nnx.Rngs(0)))
    xs, ys = jnp.asarray(x[:16]), jnp.asarray(labels[:16])

    def reference(p):  # one example at a time, through the user's loss
        def one(p, xi, yi):
            return loss_fn(nnx.merge(graphdef, p, state)(xi[None]), yi[None])[0]

        return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(p, xs, ys)

    grads = reference(params)
    norms = np.sqrt(sum(np.sum(np.square(g.reshape(16, -1)), 1) for g in _leaves(grads)))
    for impl in ("bookkeeping", "vmap"):
        fn = toolkit.clipped_grad(graphdef, loss_fn=loss_fn, clip_norm=0.05, implementation=impl)
        out = jax.jit(lambda p, fn=fn: fn(p, state, xs, ys))(params)
        np.testing.assert_allclose(np.asarray(out.norms), norms, rtol=1e-5)
        factors = np.minimum(1.0, 0.05 / norms)
        expected = jax.tree.map(lambda g, f=factors: np.tensordot(f, np.asarray(g), 1), grads)
        for a, b in zip(_leaves(out.clipped_sum), _leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert fn.sensitivity == 0.05
    result = toolkit.fit(Mlp(nnx.Rngs(0)), (x, labels), loss_fn=loss_fn, optimizer=optax.sgd(0.5),
                         batch_size=40, epochs=1, clip_norm=1.0, noise_multiplier=0.5,
                         eval_data=(x, labels), classification=loss != "mse")  # fmt: skip
    assert math.isfinite(result.history[-1].metrics["test_loss"])


def test_a_loss_of_the_wrong_shape_is_one_error():
    with pytest.raises(ToolkitError, match=r"shape \(batch,\)"):
        toolkit.fit(Mlp(nnx.Rngs(0)), _data(), loss_fn=lambda o, y: jnp.mean(o),
                    optimizer=optax.sgd(0.1), batch_size=40, epochs=1, clip_norm=1.0,
                    noise_multiplier=1.0)  # fmt: skip


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"noise_multiplier": None}, "exactly one of noise_multiplier"),
        ({"target_epsilon": 1.0}, "exactly one of noise_multiplier"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"clip_norm": math.inf}, "clip_norm=inf"),
        ({"accountant": "gdp"}, "accountant='gdp'"),
        ({"optimizer": "sgd"}, "optax GradientTransformation"),
    ],
)
def test_bad_fit_arguments_name_the_value(kw, needle):
    args = dict(optimizer=optax.sgd(0.1), batch_size=40, epochs=1, clip_norm=1.0,
                noise_multiplier=1.0)  # fmt: skip
    with pytest.raises(ToolkitError, match=re.escape(needle)):
        toolkit.fit(Mlp(nnx.Rngs(0)), _data(), **{**args, **kw})


def test_privatizer_noise_on_the_sum_then_divided_by_b():
    """std of (sum + N(0, (sigma C)^2)) / B over 20,000 coordinates: relative error ~0.5%."""
    zeros = {"w": jnp.zeros(20_000)}
    tx = toolkit.gaussian_privatizer(noise_multiplier=2.0, sensitivity=0.5,
                                     expected_batch_size=4.0, key=jax.random.key(0))  # fmt: skip
    state = tx.init(zeros)
    first, state = tx.update(zeros, state)
    second, state = tx.update({"w": jnp.full(20_000, 8.0)}, state)
    assert abs(float(jnp.std(first["w"])) / (2.0 * 0.5 / 4.0) - 1) < 5 / math.sqrt(40_000)
    assert float(jnp.mean(second["w"])) == pytest.approx(2.0, abs=0.05)  # 8 / B
    assert int(state.count) == 2
    # Keyed by (key, step): a fresh transformation at count 1 draws step 1's noise again.
    again, _ = tx.update({"w": jnp.full(20_000, 8.0)}, state._replace(count=jnp.int32(1)))
    np.testing.assert_array_equal(np.asarray(again["w"]), np.asarray(second["w"]))
    # Steps 0 and 1 draw independent noise: their correlation has standard error
    # 1/sqrt(20,000); a reused key gives 1. (Not array_equal: float32 rounding of 8 / B
    # would tell even equal draws apart.)
    noise0, noise1 = np.asarray(first["w"]), np.asarray(second["w"]) - 2.0
    assert abs(np.corrcoef(noise0, noise1)[0, 1]) < 5 / math.sqrt(20_000)


def test_privacy_params_event_gives_the_accountants_eps():
    """dp-accounting's own PLD accountant on the event agrees with `epsilon('pld')`."""
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

    p = toolkit.PrivacyParams(num_examples=60000, batch_size=256, epochs=60, noise_multiplier=1.1)
    assert p.steps == 60 * (60000 // 256) and p.sampling_prob == 256 / 60000
    rdp = RdpAccountant()
    rdp.compose(p.event())
    assert p.epsilon("rdp") == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-9)
    pld = PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(p.event())
    assert p.epsilon("pld") == pytest.approx(pld.get_epsilon(1e-5), rel=1e-3)
    assert p.epsilon() == pytest.approx(3.01, abs=0.005)  # TF Privacy's published number
    calibrated = toolkit.PrivacyParams.calibrated(
        target_epsilon=3.01, num_examples=60000, batch_size=256, epochs=60
    )
    assert calibrated.epsilon() <= 3.01
    assert calibrated.noise_multiplier == pytest.approx(1.1, rel=2e-3)
    with pytest.raises(ToolkitError, match="batch_size=0"):
        toolkit.PrivacyParams(10, 0, 1, 1.0)


def test_records_round_trip_through_json():
    stats = GradNormStats(1.0, 0.5, 3.0, 0.25, 0.0)
    epoch = EpochRecord(3, 30, 0.7, 0.0, {"rdp": 1.0, "rdp-classic": None, "pld": 0.8},
                        "rdp", "poisson", "rdp, Poisson sampling", stats, "vmap", 41.5, 2.0,
                        {"test_accuracy": 0.9, "per_class_accuracy": [0.8, 1.0]})  # fmt: skip
    summary = RunSummary(None, None, 3, 300, True, 1.1, {"rdp": 1.0}, 1e-5, "rdp", "poisson",
                         "rdp, Poisson sampling", 6.0, "vmap", {"test_accuracy": 0.9})  # fmt: skip
    for record in (epoch, summary):
        text = json.dumps(rundir.record_to_json(record))
        assert rundir.record_from_json(type(record), json.loads(text), where="x") == record
    flat = rundir.record_to_json(epoch)
    assert flat["test_accuracy"] == 0.9 and flat["grad_norm"]["median"] == 0.5  # old layout
    fields = {f.name for f in dataclasses.fields(AuditRecord)}
    assert {"epsilon_lower_bound", "consistent", "epsilon", "not_covered_by_dp"} <= fields
    # Each record is written with what eps does not cover; records from before the label
    # load with it, and it never becomes a metric.
    for record in (epoch, summary):
        label = rundir.record_to_json(record)["not_covered_by_dp"]
        assert "not covered by eps" in label and "per_example_grads" in label
        assert "not_covered_by_dp" not in record.metrics
        older = {k: v for k, v in rundir.record_to_json(record).items() if k != "not_covered_by_dp"}
        assert rundir.record_from_json(type(record), older, where="x") == record
    assert all(
        name in flat["not_covered_by_dp"] for name in toolkit.runs._records.TRAINING_DIAGNOSTICS
    )
    with pytest.raises(toolkit.runs._records.RecordError, match="lacks train_loss"):
        rundir.record_from_json(EpochRecord, {k: v for k, v in flat.items() if k != "train_loss"},
                                where="x")  # fmt: skip


def test_checkpoint_meta_says_what_eps_does_not_cover(tmp_path):
    stats = GradNormStats(1.0, 0.5, 3.0, 0.25, 0.0)
    epoch = EpochRecord(1, 10, 0.7, 0.0, {"rdp": 1.0}, "rdp", "poisson", "rdp, Poisson sampling",
                        stats, "vmap", 41.5, 2.0)  # fmt: skip
    params = {"w": jnp.arange(3.0)}
    rundir.save_checkpoint(tmp_path, params=params, opt_state={"m": jnp.ones(3)},
                           key=jax.random.key(0), step=10, epoch=1, history=[epoch],
                           cfg_hash="h")  # fmt: skip
    with np.load(tmp_path / rundir.CHECKPOINT) as z:
        meta = json.loads(z["meta"].tobytes().decode())
    label = meta["not_covered_by_dp"]
    assert label == rundir.CHECKPOINT_NOT_COVERED and "secret randomness" in label
    assert "not covered by eps" in meta["history"][0]["not_covered_by_dp"]
    back, _, _, _, meta = rundir.load_checkpoint(
        tmp_path, params=params, opt_state={"m": jnp.zeros(3)}, cfg_hash="h"
    )
    np.testing.assert_array_equal(back["w"], params["w"])
    assert meta["history"] == [epoch]


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.standard_promotion  # optax.adam
def test_readme_python_api_example_runs_as_written(tiny_data_dir, tmp_path, monkeypatch, capsys):
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 25
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(tiny_data_dir))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("rdp", "rdp-classic", "pld"))


def test_fit_with_ema_keeps_the_iterates_and_evaluates_the_average():
    x, y = _data()
    kw = dict(optimizer=optax.sgd(0.3), batch_size=40, epochs=2, clip_norm=1.0,
              noise_multiplier=0.8, eval_data=(x, y), seed=2)  # fmt: skip
    plain = toolkit.fit(Mlp(nnx.Rngs(0)), (x, y), **kw)
    ema = toolkit.fit(Mlp(nnx.Rngs(0)), (x, y), ema_decay=0.5, **kw)
    for a, b in zip(jax.tree.leaves(nnx.state(plain.model, nnx.Param)),
                    jax.tree.leaves(nnx.state(ema.model, nnx.Param)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)  # the returned model is the last iterate
    m = ema.history[-1].metrics
    assert m["test_accuracy"] == plain.history[-1].metrics["test_accuracy"]
    assert (
        0.0 <= m["ema_test_accuracy"] <= 1.0
        and "ema_test_accuracy" not in plain.history[-1].metrics
    )
    assert ema.config.ema_decay == 0.5
    with pytest.raises(ToolkitError, match="ema_decay=1.5"):
        toolkit.fit(Mlp(nnx.Rngs(0)), (x, y), ema_decay=1.5, **kw)


def test_a_single_logit_model_reports_accuracy_by_the_sign_of_its_logit():
    """One logit per example (B, 1), the loss by name: accuracy is the share of held-out
    examples with (z > 0) == (label == 1), here checked against the returned model's
    logits. Two thirds of the labels are 1, so argmax over the single output (always
    class 0) would report about 1/3 where the sign, on separable data, gives more."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x @ rng.normal(size=8) > -0.8).astype(np.int32)  # a linear rule: 2/3 positive
    held_x, held_y = x[200:], y[200:]
    result = toolkit.fit(zoo.Logit(nnx.Rngs(0)), (x[:200], y[:200]),
                         loss_fn="sigmoid_binary_cross_entropy",
                         optimizer=toolkit.optimizer("sgd", lr=1.0), batch_size=50, epochs=2,
                         clip_norm=1.0, noise_multiplier=0.5, delta=1e-3,
                         eval_data=(held_x, held_y))  # fmt: skip
    assert result.config.loss == "sigmoid_binary_cross_entropy"
    m = result.history[-1].metrics
    z = np.asarray(result.model(jnp.asarray(held_x)), np.float64)
    assert z.shape == (100, 1)
    z = z[:, 0]
    # The hook's float32 logits and these agree to ~1e-6; no logit is that close to 0.
    assert np.min(np.abs(z)) > 1e-4
    hits = (z > 0) == (held_y == 1)
    assert m["test_accuracy"] == hits.mean()
    assert m["test_accuracy"] > 0.7 and np.mean(held_y == 0) < 0.4  # argmax would give < 0.4
    assert m["per_class_accuracy"] == [hits[held_y == 0].mean(), hits[held_y == 1].mean()]
    # The loss is the logistic loss log(1 + exp(-s z)), s = +-1: float32 vs float64, 1e-5.
    s = np.where(held_y == 1, 1.0, -1.0)
    assert m["test_loss"] == pytest.approx(np.mean(np.logaddexp(0.0, -s * z)), rel=1e-5)


def test_numpy_scalars_are_accepted_and_recorded_as_python_numbers(tmp_path):
    x, y = zoo.vectors(128)
    result = toolkit.fit(zoo.Mlp(nnx.Rngs(0)), (x, y),
                         optimizer=toolkit.optimizer("sgd", lr=np.float32(0.5)),
                         batch_size=np.int64(64), epochs=np.int64(1), clip_norm=np.float32(1.0),
                         noise_multiplier=np.float64(0.7), delta=np.float64(1e-3),
                         seed=np.int32(2), keep_checkpoints=np.int64(1),
                         out=tmp_path / "r")  # fmt: skip
    recorded = json.loads((tmp_path / "r" / rundir.CONFIG).read_text())["config"]
    expected = dict(batch_size=64, epochs=1, clip_norm=1.0, noise_multiplier=0.7, delta=1e-3,
                    seed=2, lr=0.5, keep_checkpoints=1)  # fmt: skip
    for name, value in expected.items():
        got = getattr(result.config, name)
        assert got == value and type(got) is type(value), (name, got)
        assert recorded[name] == value and type(recorded[name]) is type(value), name
    # The numbers mean what they say: 128 // 64 = 2 steps at q = 1/2 and sigma 0.7.
    assert [r.step for r in result.history] == [2]
    assert list(rundir.kept_checkpoints(tmp_path / "r")) == [1]
    expected_eps = toolkit.PrivacyParams(128, 64, 1, 0.7, delta=1e-3).epsilons()
    assert result.epsilon == pytest.approx(expected_eps, rel=1e-8)
