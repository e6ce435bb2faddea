import jax.numpy as jnp
import pytest

from toolkit.nn import ActivationSpec, build_model, count_params


@pytest.mark.parametrize(
    "dataset, shape, n_params",
    [
        ("mnist", (3, 28, 28, 1), 26_010),
        pytest.param("cifar10", (3, 32, 32, 3), 605_226, marks=pytest.mark.standard_promotion),
    ],
)
def test_paper_architectures(dataset, shape, n_params):
    model = build_model(dataset, ActivationSpec("tanh"), seed=0)
    assert count_params(model) == n_params
    assert model(jnp.zeros(shape)).shape == (3, 10)


def test_mnist_first_activation_shape_and_activation_injected():
    x = jnp.linspace(0, 1, 2 * 28 * 28).reshape(2, 28, 28, 1)
    relu = build_model("mnist", ActivationSpec("relu"), seed=0)
    tanh = build_model("mnist", ActivationSpec("tanh"), seed=0)
    a_relu, a_tanh = relu.first_activation(x), tanh.first_activation(x)
    assert a_relu.shape == (2, 14, 14, 16)
    assert float(a_relu.min()) >= 0.0 and float(jnp.abs(a_tanh).max()) < 1.0
    # Same seed, same weights: the pre-activations agree, so tanh(relu) equals relu(tanh).
    assert jnp.allclose(jnp.maximum(a_tanh, 0), jnp.tanh(a_relu), atol=1e-6)


def test_same_seed_same_model():
    a = build_model("mnist", ActivationSpec("tanh"), seed=3)
    b = build_model("mnist", ActivationSpec("tanh"), seed=3)
    x = jnp.ones((1, 28, 28, 1))
    assert jnp.array_equal(a(x), b(x))
