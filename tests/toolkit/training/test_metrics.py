"""`toolkit.training.metrics.evaluation` reads an accuracy that fits the model, or none.

Tiny nnx.Linear models with set weights on a handful of examples, so every accuracy,
per-class accuracy and loss is computed here by hand. Accuracies are fractions of a few
examples, compared exactly; losses are float32 against float64 references, rtol 1e-6
(a few float32 roundings, eps = 1.2e-7).
"""

from __future__ import annotations

import re
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import toolkit.grads
from toolkit.base import ToolkitError
from toolkit.grads import LOSSES, sigmoid_binary_cross_entropy, softmax_cross_entropy
from toolkit.training import metrics
from toolkit.training._loop import EpochContext

RTOL = 1e-6


def _linear(kernel: list[list[float]]) -> nnx.Linear:
    """nnx.Linear with the given kernel (in, out) and zero bias."""
    kernel = np.asarray(kernel, np.float32)
    layer = nnx.Linear(*kernel.shape, rngs=nnx.Rngs(0))
    layer.kernel[...] = jnp.asarray(kernel)
    layer.bias[...] = jnp.zeros(kernel.shape[1], jnp.float32)
    return layer


class _OneLogit(nnx.Module):
    """A binary model whose outputs are (B,) rather than nnx.Linear's (B, 1)."""

    def __init__(self, layer: nnx.Linear):
        self.layer = layer

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer(x)[:, 0]


def _context(model: nnx.Module, *, averaged: bool = False) -> EpochContext:
    """What the training loop hands a metric hook at the end of epoch 1."""
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    return EpochContext(1, 1, graphdef, params, state, params if averaged else None)


# Binary data set: the logit z = x0 - x1 is [1, -1, 3, -1], so the model predicts
# [+, -, +, -]; the labels are [+, -, +, +]: right on examples 0, 1, 2, wrong on 3.
BINARY_X = np.array([[2, 1], [1, 2], [3, 0], [0, 1]], np.float32)
BINARY_Z = np.array([1, -1, 3, -1], np.float64)
BINARY_POSITIVE = np.array([True, False, True, True])
LABEL_ENCODINGS = {
    "0/1 int": BINARY_POSITIVE.astype(np.int32),
    "-1/+1 int": np.where(BINARY_POSITIVE, 1, -1).astype(np.int32),
    "0/1 float": BINARY_POSITIVE.astype(np.float32),
    "-1/+1 float": np.where(BINARY_POSITIVE, 1.0, -1.0).astype(np.float32),
    "bool": BINARY_POSITIVE,
}


def _binary_model(one_logit_shape: str) -> nnx.Module:
    layer = _linear([[1.0], [-1.0]])
    return layer if one_logit_shape == "(B, 1)" else _OneLogit(layer)


@pytest.mark.parametrize("encoding", LABEL_ENCODINGS)
@pytest.mark.parametrize("one_logit_shape", ["(B, 1)", "(B,)"])
def test_single_logit_accuracy_is_the_sign_rule_for_every_label_encoding(one_logit_shape, encoding):
    labels = LABEL_ENCODINGS[encoding]
    hook = metrics.evaluation(
        (BINARY_X, labels), loss_fn=sigmoid_binary_cross_entropy, num_classes=7
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model that fits gets no warning
        out = hook(_context(_binary_model(one_logit_shape)))
    # Tried: with argmax in place of the sign rule, the (B, 1) model predicts class 0
    # everywhere and this reads 0.25 with 0/1 labels (the one negative example) and 0.0
    # with -1/+1 labels; the other encodings and the (B,) model raise.
    assert out["test_accuracy"] == 0.75
    # Classes (negative, positive), whatever num_classes says: 1/1 and 2/3 right.
    np.testing.assert_allclose(out["per_class_accuracy"], [1.0, 2 / 3], rtol=RTOL)
    np.testing.assert_allclose(out["per_class_accuracy_std"], 1 / 6, rtol=RTOL)
    sign = np.where(BINARY_POSITIVE, 1.0, -1.0)
    np.testing.assert_allclose(
        out["test_loss"], np.mean(np.log1p(np.exp(-sign * BINARY_Z))), rtol=RTOL
    )
    assert list(out) == [
        "test_accuracy", "test_loss", "per_class_accuracy", "per_class_accuracy_std"
    ]  # fmt: skip


def test_single_logit_accuracy_of_the_parameter_average():
    hook = metrics.evaluation(
        (BINARY_X, LABEL_ENCODINGS["-1/+1 int"]),
        loss_fn=sigmoid_binary_cross_entropy,
        averaged=True,
    )
    out = hook(_context(_binary_model("(B, 1)"), averaged=True))
    assert set(out) == {"ema_test_loss", "ema_test_accuracy"}
    assert out["ema_test_accuracy"] == 0.75


# Class logits [x0, x1, -(x0 + x1)]: argmax [0, 1, 2, 1, 2] against labels [0, 1, 2, 0, 2].
MULTI_X = np.array([[2, 1], [1, 2], [-1, -2], [0, 3], [-3, 1]], np.float32)
MULTI_Y = np.array([0, 1, 2, 0, 2], np.int32)
MULTI_KERNEL = [[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]


def test_class_logits_accuracy_is_argmax_as_before():
    hook = metrics.evaluation((MULTI_X, MULTI_Y), prefix="val")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = hook(_context(_linear(MULTI_KERNEL)))
    logits = MULTI_X.astype(np.float64) @ np.asarray(MULTI_KERNEL)
    log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    assert list(out) == [
        "val_accuracy", "val_loss", "per_class_accuracy", "per_class_accuracy_std"
    ]  # fmt: skip
    assert out["val_accuracy"] == 0.8  # 4 of 5; example 3 (class 0) is read as class 1
    np.testing.assert_allclose(out["per_class_accuracy"], [0.5, 1.0, 1.0], rtol=RTOL)
    np.testing.assert_allclose(out["per_class_accuracy_std"], np.sqrt(1 / 18), rtol=RTOL)
    np.testing.assert_allclose(
        out["val_loss"], -np.mean(log_softmax[np.arange(5), MULTI_Y]), rtol=RTOL
    )


def _mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean squared error; targets (B,) or (B, 1) are compared with every output."""
    batch = outputs.shape[0]
    error = outputs.reshape(batch, -1) - targets.reshape(batch, -1).astype(outputs.dtype)
    return jnp.mean(jnp.square(error), axis=-1)


# Models and labels that have no class to read off: regression outputs (B, 3) with float
# targets, one output of non-binary targets, class logits of one-hot or float labels.
NO_CLASSES = {
    "regression (B, 3)": ([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]], np.full((4, 3), 0.5, np.float32)),
    "one output, targets 0.5": ([[1.0], [-1.0]], np.full(4, 0.5, np.float32)),
    "one output, labels 0/1/2": ([[1.0], [-1.0]], np.array([0, 1, 2, 1], np.int32)),
    "logits, one-hot labels": (MULTI_KERNEL, np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]),
    "logits, float labels": (MULTI_KERNEL, np.array([0, 1, 2, 0], np.float32)),
}


@pytest.mark.parametrize("case", NO_CLASSES)
def test_a_model_without_classes_gets_no_accuracy_and_one_warning(case):
    kernel, labels = NO_CLASSES[case]
    model = _linear(kernel)
    hook = metrics.evaluation((BINARY_X, labels), loss_fn=_mse)
    with pytest.warns(UserWarning, match=r"no test_accuracy: .*toolkit\.fit\(metrics=\[hook\]\)"):
        out = hook(_context(model))
    assert list(out) == ["test_loss"]  # no accuracy key at all, never a 0
    expected = np.mean(np.square(BINARY_X @ np.asarray(kernel) - labels.reshape(4, -1)), 1)
    np.testing.assert_allclose(out["test_loss"], np.mean(expected), rtol=RTOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per hook: the next epoch is silent
        assert list(hook(_context(model))) == ["test_loss"]


def test_the_warning_names_the_shapes_and_the_parameter_average():
    hook = metrics.evaluation((BINARY_X, np.zeros((4, 3), np.float32)), loss_fn=_mse, averaged=True)
    with pytest.warns(UserWarning, match=r"no ema_test_accuracy: .*\(4, 3\)"):
        out = hook(_context(_linear(MULTI_KERNEL), averaged=True))
    assert list(out) == ["ema_test_loss"]


def test_classification_false_gives_loss_only_and_no_warning():
    hook = metrics.evaluation((MULTI_X, MULTI_Y), classification=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = hook(_context(_linear(MULTI_KERNEL)))
    assert list(out) == ["test_loss"]


def test_the_docstring_metric_hook_reports_mean_absolute_error():
    block = re.search(r"\n( +def mae\(.*?)(?:\n\n|$)", metrics.__doc__, re.S)
    x_val = np.array([[1, 2], [3, -1]], np.float32)
    y_val = np.array([[0.5, 0.0], [4.0, 1.0]], np.float32)
    namespace = {"EpochContext": EpochContext, "jnp": jnp, "x_val": x_val, "y_val": y_val}
    exec(textwrap.dedent(block.group(1)), namespace)
    kernel = [[1.0, 0.0], [0.0, 1.0]]  # outputs = x: errors [0.5, 2, -1, -2]
    out = namespace["mae"](_context(_linear(kernel)))
    assert len(block.group(1).strip().splitlines()) == 3
    np.testing.assert_allclose(out["val_mae"], 5.5 / 4, rtol=RTOL)


# Logits z and labels y in {0, 1}; the loss is log(1 + exp(-s z)), s = 2 y - 1, taken
# in float64 as logaddexp(0, -s z): 1000 for z = -1000, y = 1 (exp(1000) overflows).
LOGITS = np.array([-1000.0, -30.0, -2.0, 0.0, 0.5, 30.0, 1000.0], np.float32)
POSITIVE = np.array([1, 0, 1, 0, 1, 1, 0], np.int32)


@pytest.mark.parametrize("encoding", ["0/1", "-1/+1"])
def test_sigmoid_binary_cross_entropy_matches_the_logistic_loss_at_large_logits(encoding):
    labels = POSITIVE if encoding == "0/1" else 2 * POSITIVE - 1
    sign = 2.0 * POSITIVE - 1.0
    expected = np.logaddexp(0.0, -sign * LOGITS.astype(np.float64))
    z, y = jnp.asarray(LOGITS), jnp.asarray(labels)
    for logits in (z, z[:, None]):
        eager = sigmoid_binary_cross_entropy(logits, y)
        jitted = jax.jit(sigmoid_binary_cross_entropy)(logits, y)
        assert eager.shape == (7,)
        np.testing.assert_allclose(eager, expected, rtol=RTOL, atol=0.0)
        np.testing.assert_allclose(jitted, eager, rtol=RTOL, atol=0.0)
    # The gradient is sigmoid(z) - y: finite, and -1, 0 or +1 at |z| = 1000.
    grad = jax.grad(lambda z: jnp.sum(sigmoid_binary_cross_entropy(z, y)))(z)
    expected_grad = 0.5 + 0.5 * np.tanh(LOGITS.astype(np.float64) / 2) - POSITIVE
    np.testing.assert_allclose(grad, expected_grad, rtol=RTOL, atol=1e-7)


def test_sigmoid_binary_cross_entropy_refuses_class_logits():
    with pytest.raises(ToolkitError, match=r"shape \(4, 2\)"):
        sigmoid_binary_cross_entropy(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32))


def test_losses_are_registered_by_their_names():
    assert list(LOSSES.items()) == [
        ("softmax_cross_entropy", softmax_cross_entropy),
        ("sigmoid_binary_cross_entropy", sigmoid_binary_cross_entropy),
    ]
    assert all(fn.__name__ == name for name, fn in LOSSES.items())
    assert toolkit.grads.LOSSES is LOSSES
