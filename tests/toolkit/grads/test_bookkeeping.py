"""Book-keeping clipping (toolkit.grads._bookkeeping) equals the jax.vmap reference, row for row.

Tolerances. Both paths compute the same float32 quantities in different
summation orders, so they agree to a few ulps times the number of terms; the
bounds below leave a margin over the observed errors (~1e-7 relative) without
hiding a real mistake (a wrong or missing term moves a result by > 1e-2).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toolkit.base import ToolkitError
from toolkit.grads import _bookkeeping as bookkeeping
from toolkit.grads import _per_example as per_example
from toolkit.grads import clipping
from toolkit.nn import ActivationSpec, build_model
from toolkit.training import _dpsgd as dpsgd

F32_EPS = float(np.finfo(np.float32).eps)
NORM_RTOL = 64 * F32_EPS  # norms: ~1e3-term sums of squares, reordered
# Ghost norms are rigorous upper bounds: bookkeeping adds a worst-case rounding slack
# of (K + O + 2T + 3) eps S^2 (S = sum_t ||a_t|| ||d_t||). On the paper's CNNs it
# raised norms by at most 2e-4 (relative); 1e-3 still catches a wrong or missing term.
GHOST_RTOL = 1e-3
SUM_RTOL = 256 * F32_EPS  # clipped sums: B-term sums of ~1e2-term contractions, reordered


class _Zoo(nnx.Module):
    """Every code path: stride 1 (flat shifts), dilation, stride 2 (space-to-depth), stride and
    dilation together (patches), no bias, and a Linear applied per position (Gram norms)."""

    def __init__(self, rngs: nnx.Rngs):
        self.same = nnx.Conv(2, 4, (3, 3), padding="SAME", rngs=rngs)
        self.dilated = nnx.Conv(4, 4, (3, 3), kernel_dilation=2, use_bias=False, rngs=rngs)
        self.strided = nnx.Conv(4, 6, (3, 3), strides=2, padding="VALID", rngs=rngs)
        self.both = nnx.Conv(6, 6, (2, 2), strides=2, kernel_dilation=2, rngs=rngs)
        self.seq = nnx.Linear(6, 5, rngs=rngs)  # applied per position: (B, 4, 6)
        self.head = nnx.Linear(4 * 5, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(self.dilated(jnp.tanh(self.same(x))))  # (B, 9, 9, 4)
        x = jnp.tanh(self.both(jnp.tanh(self.strided(x))))  # (B, 4, 4, 6) -> (B, 2, 2, 6)
        x = jnp.tanh(self.seq(x.reshape(x.shape[0], -1, x.shape[-1])))
        return self.head(x.reshape(x.shape[0], -1))


class _Grouped(nnx.Module):
    """A grouped convolution: outside the book-keeping path's convolutions, so refused."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(4, 4, (1,), feature_group_count=2, rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.tanh(self.conv(x[:, None, :]))[:, 0])


class _FreeScale(nnx.Module):
    """A parameter outside any tapped layer: its gradient comes per example (vmap copies)."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(4, 3, rngs=rngs)
        self.scale = nnx.Param(jnp.ones(()))

    def __call__(self, x):
        return self.scale * self.fc(x)


class _Twice(nnx.Module):
    """A layer applied twice (weight sharing): per-layer norms would be wrong, so refuse."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.tanh(self.fc(x)))


def _hostile_batch(shape, n, *, seed):
    """Row 0 huge (gradient norm >> C), row 1 NaN, row 2 masked out, the rest ordinary."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape)).astype(np.float32)
    x[0] *= 1e4
    x[1] = np.nan
    mask = np.ones(n, bool)
    mask[2] = False
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 10, n)), jnp.asarray(mask)


def _reference(graphdef, params, x, y, mask, *, rule, clip_norm):
    loss = per_example.per_example_loss_fn(graphdef)
    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)
    norms = clipping.per_example_norms(grads)
    factors = clipping.clip_factors(norms, clipping=rule, clip_norm=clip_norm)
    return clipping.clipped_sum(grads, jnp.where(mask, factors, 0.0)), norms


def _fast(graphdef, params, x, y, mask, *, rule, clip_norm, norm_rule):
    fn = bookkeeping.make_clipped_grad(graphdef, norm_rule=norm_rule)

    def weights(norms):
        factors = clipping.clip_factors(norms, clipping=rule, clip_norm=clip_norm)
        return jnp.where(mask, factors, 0.0)

    return fn(params, x, y, weights)


def _assert_same(fast_sum, fast_norms, ref_sum, ref_norms, *, ghost: bool = True):
    """Equal to rounding; with ghost layers, norms may exceed the reference by GHOST_RTOL."""
    fast_norms, ref_norms = np.asarray(fast_norms), np.asarray(ref_norms)
    np.testing.assert_array_equal(np.isnan(fast_norms), np.isnan(ref_norms))
    ok = ~np.isnan(ref_norms)
    ratio = fast_norms[ok] / ref_norms[ok]
    upper = 1 + (GHOST_RTOL if ghost else NORM_RTOL)
    assert np.all(ratio >= 1 - NORM_RTOL) and np.all(ratio <= upper), ratio  # upper bounds
    tol = SUM_RTOL + (GHOST_RTOL if ghost else 0.0)  # clip factors move with the norms
    for a, b in zip(jax.tree.leaves(fast_sum), jax.tree.leaves(ref_sum), strict=True):
        assert np.all(np.isfinite(a))
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


@pytest.fixture(scope="module")
def zoo():
    return nnx.split(_Zoo(nnx.Rngs(0)), nnx.Param)


@pytest.mark.parametrize(
    "norm_rule, rule",
    [(r, "flat") for r in bookkeeping.NORM_RULES] + [("mixed", "automatic")],
)
def test_bookkeeping_equals_vmap_on_every_layer_kind(zoo, norm_rule, rule):
    clip_norm = 0.05  # far below the ordinary rows' norms (~1): every row is clipped
    graphdef, params = zoo
    x, y, mask = _hostile_batch((9, 9, 2), 6, seed=1)
    ref_sum, ref_norms = jax.jit(
        _reference, static_argnums=0, static_argnames=("rule", "clip_norm")
    )(graphdef, params, x, y, mask, rule=rule, clip_norm=clip_norm)
    fast = jax.jit(_fast, static_argnums=0, static_argnames=("rule", "clip_norm", "norm_rule"))
    fast_sum, fast_norms, _ = fast(
        graphdef, params, x, y, mask, rule=rule, clip_norm=clip_norm, norm_rule=norm_rule
    )
    assert float(np.nanmin(ref_norms)) > clip_norm and math.isnan(float(ref_norms[1]))
    _assert_same(fast_sum, fast_norms, ref_sum, ref_norms, ghost=norm_rule != "materialise")


class _Mlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(6, 5, rngs=rngs)
        self.fc2 = nnx.Linear(5, 10, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.fc1(x)))


def test_bookkeeping_jit_and_eager_agree():
    graphdef, params = nnx.split(_Mlp(nnx.Rngs(0)), nnx.Param)
    x, y, mask = _hostile_batch((6,), 4, seed=2)
    kw = dict(rule="flat", clip_norm=0.05, norm_rule="mixed")
    eager = _fast(graphdef, params, x, y, mask, **kw)
    jitted = jax.jit(lambda p: _fast(graphdef, p, x, y, mask, **kw))(params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=SUM_RTOL, atol=1e-9)


def test_accumulate_bookkeeping_equals_vmap_on_mnist_cnn():
    """The paper's CNN (stride-2 convs, one input channel, max pools) through make_accumulate."""
    graphdef, params = nnx.split(build_model("mnist", ActivationSpec("tanh"), seed=0), nnx.Param)
    x, y, mask = _hostile_batch((28, 28, 1), 8, seed=3)
    idx = jnp.arange(8, dtype=jnp.int32)
    mech = dpsgd.Mechanism(clipping="flat", clip_norm=0.1)
    zeros = dpsgd.zeros_like(params)
    out = {
        impl: dpsgd.make_accumulate(graphdef, mech, implementation=impl)(
            params, zeros, x, y, idx, mask
        )
        for impl in ("bookkeeping", "vmap")
    }
    (fast_sum, fast_norms, fast_loss), (ref_sum, ref_norms, ref_loss) = out.values()
    _assert_same(fast_sum, fast_norms, ref_sum, ref_norms)
    # Per-example losses: the same forward pass, so equal where finite, NaN where NaN.
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=NORM_RTOL, equal_nan=True)
    assert np.isnan(np.asarray(fast_loss)).any()


def _resolve(graphdef, params, x, y, implementation):
    """The path `ClippedGradFn.checked` picks on real examples (the pre-training check)."""
    fn = per_example.clipped_grad(graphdef, clip_norm=1.0, implementation=implementation)
    return fn.checked(params, None, x, y).implementation


@pytest.mark.parametrize(
    "dataset", ["mnist", pytest.param("cifar10", marks=pytest.mark.standard_promotion)]
)
def test_auto_resolves_to_bookkeeping_for_the_paper_cnns(dataset):
    graphdef, params = nnx.split(build_model(dataset, ActivationSpec("tanh"), seed=0), nnx.Param)
    shape = (3, 28, 28, 1) if dataset == "mnist" else (3, 32, 32, 3)
    x = jnp.asarray(np.random.default_rng(0).random(shape), jnp.float32)
    y = jnp.asarray([0, 1, 2])
    assert _resolve(graphdef, params, x, y, "auto") == "bookkeeping"
    assert _resolve(graphdef, params, x, y, "vmap") == "vmap"


class _BatchMixing(nnx.Module):
    """Centres activations over the batch: examples interact, which no trace check sees."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(4, 5, rngs=rngs)
        self.fc2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.fc1(x))
        return self.fc2(h - h.mean(axis=0, keepdims=True))


class _TiedKernel(nnx.Module):
    """fc's kernel is also used outside fc (weight tying), invisible to the layer taps."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.fc(x))
        return h @ self.fc.kernel[...].T


@pytest.mark.parametrize("module", [_Grouped, _TiedKernel])
def test_auto_resolves_to_vmap_and_bookkeeping_refuses_models_it_cannot_serve(module):
    graphdef, params = nnx.split(module(nnx.Rngs(0)), nnx.Param)
    x = jnp.asarray(np.random.default_rng(1).random((5, 4)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1])
    assert _resolve(graphdef, params, x, y, "auto") == "vmap"
    with pytest.raises(ToolkitError, match="per_example='bookkeeping'"):
        _resolve(graphdef, params, x, y, "bookkeeping")


@pytest.mark.parametrize("implementation", ["auto", "bookkeeping", "vmap"])
def test_a_model_that_mixes_examples_is_refused_on_every_path(implementation):
    """vmap would run it on batches of one (h - mean(h) = 0): no path may train it."""
    graphdef, params = nnx.split(_BatchMixing(nnx.Rngs(0)), nnx.Param)
    x = jnp.asarray(np.random.default_rng(1).random((5, 4)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1])
    with pytest.raises(ToolkitError, match="model's own __call__ or its loss_fn mixes"):
        _resolve(graphdef, params, x, y, implementation)


def test_microbatched_bookkeeping_equals_one_batch():
    graphdef, params = nnx.split(_Zoo(nnx.Rngs(1)), nnx.Param)
    x, y, mask = _hostile_batch((9, 9, 2), 12, seed=4)
    acc = dpsgd.make_accumulate(
        graphdef, dpsgd.Mechanism(clip_norm=0.05), implementation="bookkeeping"
    )
    zeros = dpsgd.zeros_like(params)
    whole, _, _ = acc(params, zeros, x, y, jnp.arange(12, dtype=jnp.int32), mask)
    parts = zeros
    for start in (0, 4, 8):
        idx = jnp.arange(start, start + 4, dtype=jnp.int32)
        parts, _, _ = acc(params, parts, x, y, idx, mask[start : start + 4])
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(parts), strict=True):
        np.testing.assert_allclose(a, b, rtol=SUM_RTOL, atol=SUM_RTOL * float(np.max(np.abs(b))))


@pytest.mark.parametrize("module", [_Grouped, _Twice])
def test_unsupported_models_raise_or_fall_back_to_vmap(module):
    graphdef, params = nnx.split(module(nnx.Rngs(0)), nnx.Param)
    n_in = 4 if module is _Grouped else 3
    x = jnp.asarray(np.random.default_rng(5).random((5, n_in)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1])
    idx, mask = jnp.arange(5, dtype=jnp.int32), jnp.ones(5, bool)
    mech = dpsgd.Mechanism(clip_norm=0.5)
    zeros = dpsgd.zeros_like(params)
    with pytest.raises(bookkeeping.Unsupported):
        dpsgd.make_accumulate(graphdef, mech, implementation="bookkeeping")(
            params, zeros, x, y, idx, mask
        )
    auto, _, _ = dpsgd.make_accumulate(graphdef, mech)(params, zeros, x, y, idx, mask)
    ref, _, _ = dpsgd.make_accumulate(graphdef, mech, implementation="vmap")(
        params, zeros, x, y, idx, mask
    )
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_name_the_value():
    graphdef, _ = nnx.split(_Twice(nnx.Rngs(0)), nnx.Param)
    with pytest.raises(ValueError, match="implementation='fast'"):
        dpsgd.make_accumulate(graphdef, dpsgd.Mechanism(), implementation="fast")
    with pytest.raises(ValueError, match="norm_rule='cheap'"):
        bookkeeping.make_clipped_grad(graphdef, norm_rule="cheap")


class _Cancelling(nnx.Module):
    """A per-position Linear (T = 2) whose two positions' gradients almost cancel."""

    def __init__(self, rngs: nnx.Rngs):
        self.seq = nnx.Linear(3, 3, use_bias=False, rngs=rngs)
        self.head = nnx.Linear(6, 2, use_bias=False, rngs=rngs)

    def __call__(self, x):
        h = self.seq(x)
        return self.head(h.reshape(h.shape[0], -1))


@pytest.mark.parametrize("norm_rule", bookkeeping.NORM_RULES)
@pytest.mark.parametrize("delta", [2.0**-20, 2.0**-19])
def test_cancelling_gradients_are_never_under_clipped(norm_rule, delta):
    """Ghost norms sum <a_t, a_s><d_t, d_s> terms of both signs. Here the two positions'
    terms are ~1e13 and cancel down to ||G||^2 ~ 1-4: float32 rounding alone once gave a
    norm of 1e-6 and a contribution of 40 C. Every rule must keep the contribution <= C."""
    model = _Cancelling(nnx.Rngs(0))
    model.seq.kernel.set_value(jnp.eye(3) * 1e-6)
    u = np.array([1.0, 0.0, 0.0])
    w = np.zeros((6, 2), np.float32)
    w[:3, 0], w[3:, 0] = 2.0**21 * u, -(1 - delta) * 2.0**21 * u
    model.head.kernel.set_value(jnp.asarray(w))
    graphdef, params = nnx.split(model, nnx.Param)
    x = jnp.asarray([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], jnp.float32)
    y, mask = jnp.asarray([1]), jnp.ones(1, bool)
    summed, norms, _ = _fast(
        graphdef, params, x, y, mask, rule="flat", clip_norm=0.1, norm_rule=norm_rule
    )
    _, ref_norms = _reference(graphdef, params, x, y, mask, rule="flat", clip_norm=0.1)
    assert float(ref_norms[0]) > 0.1  # the exact gradient is large: clipping must bind
    assert float(norms[0]) >= float(ref_norms[0]) * (1 - NORM_RTOL)  # never an under-estimate
    contribution = math.sqrt(
        sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for v in jax.tree.leaves(summed))
    )
    assert contribution <= 0.1 * (1 + NORM_RTOL)
