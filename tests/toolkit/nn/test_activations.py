import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolkit.nn import ACTIVATION_NAMES, ActivationSpec, get_activation, tempered_sigmoid


def test_tempered_221_is_tanh_float32():
    x = jnp.linspace(-30.0, 30.0, 200_001, dtype=jnp.float32)
    got = tempered_sigmoid(x, scale=2.0, inverse_temp=2.0, offset=1.0)
    # 2*sigmoid(2x)-1 and tanh are computed by different float32 formulas: allow a few ulps of 1.
    assert float(jnp.max(jnp.abs(got - jnp.tanh(x)))) <= 4 * np.finfo(np.float32).eps


def test_tempered_range_and_derivative_bound():
    s, t, o = 1.5, 3.0, 0.4
    x = jnp.linspace(-10.0, 10.0, 10_001)
    y = tempered_sigmoid(x, scale=s, inverse_temp=t, offset=o)
    assert float(y.min()) > -o - 1e-6 and float(y.max()) < s - o + 1e-6
    d = jax.vmap(jax.grad(lambda v: tempered_sigmoid(v, scale=s, inverse_temp=t, offset=o)))(x)
    assert float(d.max()) <= s * t / 4 + 1e-6
    assert float(d[len(x) // 2]) == pytest.approx(s * t / 4, rel=1e-6)  # attained at x = 0


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_registry_builds_finite_functions(name):
    f = get_activation(name)
    y = f(jnp.array([-1e4, -1.0, 0.0, 1.0, 1e4]))
    assert y.shape == (5,) and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(name="swish"), "activation"),
        (dict(name="tempered", scale=0.0), "scale"),
        (dict(name="tempered", inverse_temp=-1.0), "inverse_temp"),
        (dict(name="tempered", offset=float("nan")), "offset"),
    ],
)
def test_invalid_specs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ActivationSpec(**kwargs)


def test_spec_roundtrip():
    spec = ActivationSpec("tempered", scale=1.97, inverse_temp=2.27, offset=1.15)
    assert ActivationSpec.from_dict(spec.to_dict()) == spec
    assert spec.label == "tempered(s=1.97,T=2.27,o=1.15)"
