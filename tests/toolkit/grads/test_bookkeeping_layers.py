"""Book-keeping beyond Linear/Conv equals the jax.vmap reference: weight-standardised
convolutions, LayerNorm, GroupNorm, embeddings, attention, dropout, a free parameter and
augmult, under every norm rule; and `auto` picks book-keeping for each.

Tolerances as in test_bookkeeping.py: both paths compute the same float32 quantities in
different orders (~1e-7 relative); ghost norms are upper bounds with a rounding slack of
at most ~1e-4 relative on these models (measured: 2.8e-5 for augmult's 3 views of 8 x 8
images, the largest), so 1e-3 catches a wrong or missing term (which moves a result by
> 1e-2) without failing on the slack.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import zoo
from tests.toolkit.grads.test_bookkeeping import _FreeScale
from toolkit.grads import Augmult, clipping
from toolkit.grads import _bookkeeping as bookkeeping
from toolkit.grads import _per_example as per_example
from toolkit.nn import ActivationSpec, build_model, standardize_kernel

F32_EPS = float(np.finfo(np.float32).eps)
NORM_RTOL = 64 * F32_EPS
GHOST_RTOL = 1e-3
CLIP = 0.05  # below every example's gradient norm here: every row is clipped

MODELS = {
    **{name: entry for name, entry in zoo.ZOO.items() if name != "paper-cnn"},
    "free-scale": (lambda: _FreeScale(nnx.Rngs(0)), lambda n: zoo.vectors(n, d=4)),
    "ws-paper-cnn": (
        lambda: build_model("mnist", ActivationSpec("tanh"), seed=0, weight_standardization=True),
        zoo.digits,
    ),
}


def _setup(name, n=5):
    make, data = MODELS[name]
    graphdef, params, state = nnx.split(make(), nnx.Param, ...)
    x, y = (jnp.asarray(v) for v in data(n))
    augment = Augmult(3) if name == "augmult" else None
    keys = jax.random.split(jax.random.key(3), n)
    return graphdef, params, state, x, y, augment, keys


@pytest.mark.parametrize("norm_rule", bookkeeping.NORM_RULES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_bookkeeping_equals_vmap_on_every_model(name, norm_rule):
    graphdef, params, state, x, y, augment, keys = _setup(name)
    mask = jnp.asarray([True, True, False, True, True])

    def weights(norms):
        return jnp.where(mask, jnp.minimum(1.0, CLIP / norms), 0.0)

    fast = bookkeeping.make_clipped_grad(graphdef, norm_rule=norm_rule, augment=augment)
    fast_sum, fast_norms, fast_losses = jax.jit(lambda p, s: fast(p, x, y, weights, s, keys))(
        params, state
    )
    ref = jax.jit(per_example.per_example_grads_fn(graphdef, None, augment))
    ref_losses, grads = ref(params, x, y, state, keys)
    ref_norms = clipping.per_example_norms(grads)
    ref_sum = clipping.clipped_sum(grads, weights(ref_norms))

    assert float(jnp.min(ref_norms)) > CLIP
    ratio = np.asarray(fast_norms) / np.asarray(ref_norms)
    upper = 1 + (NORM_RTOL if norm_rule == "materialise" else GHOST_RTOL)
    assert np.all(ratio >= 1 - NORM_RTOL) and np.all(ratio <= upper), ratio
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=NORM_RTOL, atol=1e-6)
    tol = 16 * NORM_RTOL + (0 if norm_rule == "materialise" else GHOST_RTOL)
    for a, b in zip(jax.tree.leaves(fast_sum), jax.tree.leaves(ref_sum), strict=True):
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_auto_picks_bookkeeping_for_every_model(name):
    graphdef, params, state, x, y, augment, _ = _setup(name, n=8)
    fn = per_example.clipped_grad(graphdef, clip_norm=1.0, augment=augment)
    assert fn.checked(params, state, x, y, rows=4).implementation == "bookkeeping"


def test_a_kernel_transform_that_is_not_the_one_used_falls_back_to_vmap():
    """A layer that declares one kernel_transform and contracts with another: its
    per-example norms differ from vmap's, which the pre-training check sees."""

    class Lying(zoo.WSCnn):
        def __init__(self, rngs):
            super().__init__(rngs)
            self.conv.kernel_transform = lambda k: 2.0 * k  # the forward standardises

        def __call__(self, x):
            conv = self.conv
            kernel = standardize_kernel(conv.kernel[...])
            dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
            h = conv.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dims)
            return self.fc(jnp.mean(jnp.tanh(h + conv.bias[...].reshape(1, 1, 1, -1)), axis=(1, 2)))

    graphdef, params, state = nnx.split(Lying(nnx.Rngs(0)), nnx.Param, ...)
    x, y = (jnp.asarray(v) for v in zoo.images(8))
    fn = per_example.clipped_grad(graphdef, clip_norm=1.0)
    assert fn.checked(params, state, x, y, rows=4).implementation == "vmap"
