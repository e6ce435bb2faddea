"""Issue 12's levers: parameter averaging (EMA) and the validation split.

- The EMA is post-processing: training with it gives bit-identical iterates, and it equals
  the debiased average computed by hand from those iterates.
- The validation split is carved from the training set: disjoint from what is trained on,
  and the accountant counts only the examples trained on.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.configs import TINY_MODEL, cut_after_epoch_1
from toolkit import training as train_lib
from toolkit.base import ToolkitError
from toolkit.grads import Augmult
from toolkit.grads import _per_example as per_example
from toolkit.runs import RunConfig, resolve, rundir
from toolkit.training import _averaging as averaging
from toolkit.training import _dpsgd as dpsgd


def _cfg(data_dir, **kw) -> RunConfig:
    base = dict(
        dataset="fashion-mnist", epochs=2, batch_size=100, lr=0.5, momentum=0.9,
        clip_norm=0.5, noise_multiplier=1.0, data_dir=str(data_dir), seed=3,
    )  # fmt: skip
    return RunConfig(**{**base, **kw})


def test_track_ema_is_identity_on_updates_and_debiased():
    tx = optax.chain(optax.sgd(0.1), averaging.track_ema(0.9))
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)
    assert averaging.averaged(state) is None  # no update yet: no average
    iterates = []
    for t in range(5):
        grads = {"w": jnp.array([0.5 * t, 1.0])}
        updates, state = tx.update(grads, state, params)
        plain, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params), params)
        np.testing.assert_array_equal(updates["w"], plain["w"])  # the update is untouched
        params = optax.apply_updates(params, updates)
        iterates.append(np.asarray(params["w"], np.float64))
    # By hand: weights (1 - d) d^(t-1-s) over iterates s, normalised by 1 - d^t. float32
    # recursion over 5 steps: agreement to ~1e-6 relative.
    d, t = 0.9, len(iterates)
    want = sum((1 - d) * d ** (t - 1 - s) * w for s, w in enumerate(iterates)) / (1 - d**t)
    np.testing.assert_allclose(averaging.averaged(state)["w"], want, rtol=1e-6)


def test_ema_rejects_bad_decay():
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay"):
            averaging.track_ema(bad)


@pytest.fixture(scope="module")
def ema_run(tiny_data_dir, tmp_path_factory):
    """The EMA recipe on 300 examples, 2 epochs, every checkpoint kept: `(dir, result)`,
    read by the tests (a resume copies it first). The EMA is an optax transformation
    chained after the privatized update, the same for every model: a small one here."""
    out = tmp_path_factory.mktemp("ema") / "run"
    cfg = _cfg(tiny_data_dir, limit_train=300, ema_decay=0.9, keep_checkpoints=1, **TINY_MODEL)
    return out, train_lib.train(cfg, out=out)


@pytest.mark.slow
def test_ema_never_feeds_into_the_privatized_update(tiny_data_dir, ema_run, tmp_path):
    cfg = _cfg(tiny_data_dir, limit_train=300, keep_checkpoints=1, **TINY_MODEL)  # no EMA
    plain = train_lib.train(cfg, out=tmp_path / "plain")
    ema = ema_run[1]
    a = jax.tree.leaves(nnx.state(plain.model, nnx.Param))
    b = jax.tree.leaves(nnx.state(ema.model, nnx.Param))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # bit for bit: the iterates are the same
    p, e = plain.history[-1], ema.history[-1]
    assert p.epsilon == e.epsilon and p.train_loss == e.train_loss
    assert e.metrics["test_accuracy"] == p.metrics["test_accuracy"]
    assert 0.0 <= e.metrics["ema_test_accuracy"] <= 1.0 and "ema_test_accuracy" not in p.metrics
    assert "ema_test_accuracy" in ema.summary.metrics


def test_validation_split_is_disjoint_and_the_accountant_counts_only_training(tiny_data_dir):
    full = train_lib.load_data(_cfg(tiny_data_dir))
    cfg = _cfg(tiny_data_dir, validation=100, **TINY_MODEL)
    data = train_lib.load_data(cfg)
    val_x, val_y = data.validation
    n = len(full.train_labels)
    assert len(data.train_labels) == n - 100 and len(val_y) == 100
    np.testing.assert_array_equal(data.train_images, full.train_images[: n - 100])
    np.testing.assert_array_equal(val_x, full.train_images[n - 100 :])
    np.testing.assert_array_equal(val_y, full.train_labels[n - 100 :])
    # The sampler draws indices into the training part only, and that is the N accounted.
    s = train_lib.setup(resolve(cfg, num_examples=n - 100), data, evaluate=False)
    assert s.loop.train_x.shape[0] == n - 100 and s.loop.privacy.num_examples == n - 100
    assert s.loop.sampler.indices(0).max() < n - 100
    limited = train_lib.load_data(dataclasses.replace(cfg, limit_train=200))
    assert len(limited.train_labels) == 200  # the limit applies to what the split leaves
    np.testing.assert_array_equal(limited.validation[0], val_x)  # the split stays put


@pytest.mark.slow
def test_a_validation_run_reports_validation_not_test_accuracy(tiny_data_dir, tmp_path):
    cfg = _cfg(tiny_data_dir, epochs=1, validation=100, limit_train=200, **TINY_MODEL)
    result = train_lib.train(cfg, out=tmp_path / "r")
    last = result.history[-1]
    assert "val_accuracy" in last.metrics and "test_accuracy" not in last.metrics
    assert result.summary.num_train == 200
    assert "val_accuracy" in rundir.read_summary(tmp_path / "r").metrics


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("ema_decay", 1.0, "ema_decay=1.0"),
        ("ema_decay", 0.0, "ema_decay=0.0"),
        ("validation", -1, "validation=-1"),
        ("validation", 600, "validation=600"),
    ],
)
def test_bad_lever_settings_are_one_line_errors(tiny_data_dir, field, value, match):
    with pytest.raises(ToolkitError, match=match):
        train_lib.train(_cfg(tiny_data_dir, **{field: value}))


def test_old_config_hashes_do_not_move_when_the_new_fields_are_at_their_defaults():
    cfg = RunConfig()
    d = cfg.to_dict()
    for key in RunConfig.HASH_DEFAULTS:
        del d[key]

    class Old:  # a config as written before the fields existed
        def to_dict(self):
            return dict(d)

    assert rundir.config_hash(cfg) == rundir.config_hash(Old())
    assert rundir.config_hash(dataclasses.replace(cfg, ema_decay=0.99)) != rundir.config_hash(cfg)


def test_make_optimizer_unchanged_by_ema():  # the privatized chain only gains a state leaf
    mech = dpsgd.Mechanism(clip_norm=1.0, noise_multiplier=0.0)
    tx = mech.privatized(optax.sgd(0.1), expected_batch_size=1.0, key=jax.random.key(0))
    chained = optax.chain(tx, averaging.track_ema(0.5))
    p = {"w": jnp.ones(3)}
    g = {"w": jnp.arange(3.0)}
    u1, _ = tx.update(g, tx.init(p), p)
    u2, _ = chained.update(g, chained.init(p), p)
    np.testing.assert_array_equal(u1["w"], u2["w"])


@pytest.mark.parametrize(
    "schedule",
    ["constant", pytest.param("cosine", marks=pytest.mark.standard_promotion)],  # optax promotes
)
def test_lr_schedules_warm_up_then_hold_or_decay(schedule):
    tx = dpsgd.make_optimizer("sgd", lr=2.0, schedule=schedule, warmup_steps=4, total_steps=12)
    p, g = {"w": jnp.zeros(())}, {"w": jnp.ones(())}
    state, rates = tx.init(p), []
    for _ in range(12):
        u, state = tx.update(g, state, p)
        rates.append(-float(u["w"]))  # sgd without momentum: update = -lr_t * grad
    np.testing.assert_allclose(rates[:5], [0.0, 0.5, 1.0, 1.5, 2.0], rtol=1e-6)
    if schedule == "constant":
        np.testing.assert_allclose(rates[4:], 2.0, rtol=1e-6)
    else:  # cosine from 2 at step 4 to 0 at step 12: 1 + cos(pi (t - 4) / 8)
        want = [1 + np.cos(np.pi * (t - 4) / 8) for t in range(4, 12)]
        np.testing.assert_allclose(rates[4:], want, rtol=1e-5, atol=1e-6)


def test_bad_schedule_settings_are_one_line_errors(tiny_data_dir):
    with pytest.raises(ToolkitError, match="lr_schedule='step'"):
        train_lib.train(_cfg(tiny_data_dir, lr_schedule="step"))
    with pytest.raises(ToolkitError, match="warmup_epochs=2 must be in"):
        train_lib.train(_cfg(tiny_data_dir, warmup_epochs=2))


# ---------------------------------------------------------------- augmentation multiplicity


def _cnn_problem(batch=6):
    from toolkit.grads import split_model
    from toolkit.nn import ActivationSpec, build_model

    graphdef, params, state = split_model(build_model("mnist", ActivationSpec("tanh"), seed=0))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((batch, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    return graphdef, params, state, x, y


def test_augmult_views_are_shifts_and_flips_of_the_image():
    aug = Augmult(8, max_shift=2, flip=True)
    x = jnp.asarray(np.random.default_rng(0).random((28, 28, 1), dtype=np.float32))
    views = np.asarray(aug.views(x, jax.random.key(4)))
    padded = np.pad(np.asarray(x), ((2, 2), (2, 2), (0, 0)))
    candidates = [
        c[:, ::-1] if f else c
        for dy in range(5)
        for dx in range(5)
        for c in [padded[dy : dy + 28, dx : dx + 28]]
        for f in (False, True)
    ]
    for v in views:  # every view is exactly one shift (and maybe flip) of the image
        assert sum(np.array_equal(v, c) for c in candidates) >= 1
    assert len({v.tobytes() for v in views}) > 1  # and they are not all the same
    again = np.asarray(aug.views(x, jax.random.key(4)))
    np.testing.assert_array_equal(views, again)  # keyed: the same example key repeats


@pytest.mark.parametrize("implementation", ["bookkeeping", "vmap"])
@pytest.mark.parametrize(("clipping", "bound"), [("flat", 0.05), ("automatic", 1.0)])
def test_augmult_clips_the_mean_of_the_views_once_and_keeps_the_sensitivity(
    clipping, bound, implementation
):
    graphdef, params, state, x, y = _cnn_problem()
    aug = Augmult(4)
    fn = per_example.clipped_grad(
        graphdef, clip_norm=0.05, clipping=clipping, implementation=implementation, augment=aug
    ).checked(params, state, x, y)
    assert fn.implementation == implementation
    keys = jax.random.split(jax.random.key(7), 6)
    # By hand for example 0: K view gradients of the plain loss, averaged, then clipped.
    views = aug.views(x[0], keys[0])
    plain = per_example.per_example_loss_fn(graphdef)
    grads = [jax.grad(plain)(params, v, y[0]) for v in views]
    mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
    norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in jax.tree.leaves(mean))))
    factor = min(1.0, 0.05 / norm) if clipping == "flat" else 1.0 / (norm + 0.01)
    # One compiled shape: rows are switched off by the mask (padding rows contribute 0).
    call = jax.jit(lambda m: fn(params, state, x, y, m, keys))
    one = call(jnp.arange(6) == 0)
    assert float(one.norms[0]) == pytest.approx(norm, rel=1e-5)  # float32 sums of 4 views
    for got, want in zip(jax.tree.leaves(one.clipped_sum), jax.tree.leaves(mean), strict=True):
        # atol: float32 sums of 4 view gradients, entries up to ~4e-3 (1e-8 is ~3e-6 of that)
        np.testing.assert_allclose(got, factor * np.asarray(want), rtol=1e-4, atol=1e-8)
    # Neighbouring batches (one example added): the clipped sums differ by at most C (or 1).
    five, six = call(jnp.arange(6) < 5), call(jnp.ones(6, bool))
    leaves = zip(jax.tree.leaves(six.clipped_sum), jax.tree.leaves(five.clipped_sum), strict=True)
    diff = np.sqrt(sum(np.sum((np.asarray(a, np.float64) - b) ** 2) for a, b in leaves))
    assert diff <= bound * (1 + 1e-5)  # float32 rounding of the norm
    assert float(six.norms[5]) > 0.05  # the added example is clipped: the bound is tight-ish


def test_augmult_k_out_of_range_is_refused(tiny_data_dir):
    with pytest.raises(ToolkitError, match="augmult=-1"):
        train_lib.train(_cfg(tiny_data_dir, augmult=-1))


@pytest.mark.slow
def test_a_run_with_augmult_trains_on_the_bookkeeping_path(tiny_data_dir):
    # The views of an example are its rows on the book-keeping path (toolkit.grads).
    cfg = _cfg(tiny_data_dir, epochs=1, augmult=2, limit_train=200, **TINY_MODEL)
    result = train_lib.train(cfg)
    assert result.history[-1].per_example_grads == "bookkeeping"
    assert 0.0 <= result.history[-1].metrics["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_a_resumed_ema_run_matches_an_uninterrupted_one(ema_run, tmp_path):
    whole_dir, whole = ema_run
    cut = cut_after_epoch_1(whole_dir, tmp_path / "cut")  # killed during epoch 2
    resumed = train_lib.resume(cut)
    # The EMA lives in the optimizer state, so the checkpoint carries it: same numbers.
    assert resumed.history[-1].metrics == whole.history[-1].metrics
    assert "ema_test_accuracy" in resumed.history[-1].metrics
    with np.load(cut / rundir.CHECKPOINT) as a, np.load(whole_dir / rundir.CHECKPOINT) as b:
        ema = [k for k in a.files if "ema" in k.lower()]
        assert ema and all(np.array_equal(a[k], b[k]) for k in ema)


# Weight standardisation (issue 12): a reparameterisation of the conv kernels.


def test_standardized_kernel_has_zero_mean_and_unit_fan_in_norm_per_output_channel():
    from toolkit.nn import standardize_kernel

    kernel = np.random.default_rng(0).normal(0.3, 2.0, size=(4, 4, 3, 5))
    hat = np.asarray(standardize_kernel(jnp.asarray(kernel, jnp.float32)))
    flat = hat.reshape(-1, 5)  # rows: the fan-in of each output channel
    # float32 over 48 entries: 1e-5 is ~100 ulps of the values (~0.1).
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-6)
    # ||W_hat[:, o]||_2 = sqrt(fan_in) * std / (std sqrt(fan_in)) = 1 up to the eps 1e-4
    # added in quadrature to std ~2 (relative 1e-9) and float32 rounding.
    np.testing.assert_allclose(np.linalg.norm(flat, axis=0), 1.0, rtol=1e-5)
    # Independent: the numpy formula, per channel.
    c = kernel.reshape(-1, 5) - kernel.reshape(-1, 5).mean(0)
    ref = c / (c.std(0) * np.sqrt(48))
    np.testing.assert_allclose(flat, ref, rtol=1e-4, atol=1e-6)


def test_ws_model_has_the_paper_parameters_and_is_a_conv_of_the_standardized_kernel():
    from toolkit.nn import ActivationSpec, build_model, count_params, standardize_kernel

    ws = build_model("mnist", ActivationSpec("tanh"), seed=1, weight_standardization=True)
    plain = build_model("mnist", ActivationSpec("tanh"), seed=1)
    assert count_params(ws) == count_params(plain) == 26_010
    # Same initial raw kernels; the plain CNN with the standardized kernels put in by hand
    # computes the WS CNN (to float32 rounding of two conv algorithms).
    np.testing.assert_array_equal(ws.conv1.kernel[...], plain.conv1.kernel[...])
    for name in ("conv1", "conv2"):
        layer = getattr(plain, name)
        layer.kernel[...] = standardize_kernel(getattr(ws, name).kernel[...])
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    np.testing.assert_allclose(ws(x), plain(x), rtol=1e-4, atol=1e-5)


def test_ws_trains_on_bookkeeping_with_the_sensitivity_bound():
    from toolkit.nn import ActivationSpec, build_model

    model = build_model("mnist", ActivationSpec("tanh"), seed=0, weight_standardization=True)
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    fn = per_example.clipped_grad(graphdef, clip_norm=0.05, implementation="auto")
    x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
    y = jnp.arange(6) % 10
    checked = fn.checked(params, state, x, y)
    assert checked.implementation == "bookkeeping"  # WSConv's hook and kernel_transform
    out = checked(params, state, x, y)
    # Each example's clipped gradient has norm <= C: the sum of 6 has norm <= 6 C.
    total = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(out.clipped_sum)))
    assert total <= 6 * 0.05 * (1 + 1e-5)
    assert float(jnp.min(out.norms)) > 0.05  # clipping was active, so the bound was tested


@pytest.mark.slow
def test_a_ws_run_reloads_as_a_ws_model(tiny_data_dir, tmp_path):
    import toolkit

    cfg = _cfg(tiny_data_dir, epochs=1, weight_standardization=True, limit_train=200)
    result = train_lib.train(cfg, out=tmp_path / "r")
    assert result.history[-1].per_example_grads == "bookkeeping"
    loaded = toolkit.load_run(tmp_path / "r").model
    x = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
    assert type(loaded.conv1).__name__ == "WSConv"
    np.testing.assert_array_equal(loaded(x), result.model(x))
