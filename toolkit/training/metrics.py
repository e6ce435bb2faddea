"""Per-epoch metric hooks for `toolkit.training._loop` (and `toolkit.fit(metrics=...)`).

A hook is any function `hook(ctx: EpochContext) -> {name: value}`; the loop stores the
values in the epoch record's `metrics`. Hooks see the trained model, never the training
examples' gradients, and what they compute is NOT covered by the run's eps when it
reads private data (evaluation on the test set is the usual, public, case).

The hooks here read only the model and the arrays they are given: `toolkit train` gives
them the test set, or the validation split (`--validation`), neither of which it trains
on, so their values are functions of the DP parameters and of that held-out data, which
eps does not protect. Given training data, `evaluation` is a diagnostic of it: not
covered. Every epoch record says so in its `not_covered_by_dp` field.

`evaluation` reports accuracy only for the models it can read a class off: class logits
(B, k >= 2) of integer labels, or one logit (B,) / (B, 1) of binary labels. For any other
model, pass a metric of its own; for a regression model, the mean absolute error on
held-out arrays `x_val`, `y_val` (outputs and targets of one shape), recorded as
`val_mae` by `toolkit.fit(..., classification=False, metrics=[mae])`:

    def mae(ctx: EpochContext) -> dict:
        error = ctx.model()(jnp.asarray(x_val)) - jnp.asarray(y_val)
        return {"val_mae": float(jnp.mean(jnp.abs(error)))}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.grads import LossFn, softmax_cross_entropy
from toolkit.training._loop import EpochContext, MetricFn

_EVAL_BATCH = 1000
_ACT_NORM_EXAMPLES = 1000  # fixed test images on which Figure 5's activation norm is measured
_ARGMAX = "argmax"  # class logits (B, k >= 2): the predicted class is the largest logit
_SIGN = "sign"  # one logit (B,) or (B, 1): the predicted class is positive when z > 0


def _jitted(fn: Callable) -> Callable:
    """`fn(model, *arrays)` jitted over the model's params and state, one trace per graph."""
    cache: dict = {}

    def call(model: nnx.Module, *arrays):
        graphdef, params, state = nnx.split(model, nnx.Param, ...)
        if graphdef not in cache:
            cache[graphdef] = jax.jit(lambda p, s, *a: fn(nnx.merge(graphdef, p, s), *a))
        return cache[graphdef](params, state, *arrays)

    return call


def evaluation(
    data: tuple[np.ndarray, np.ndarray],
    *,
    loss_fn: LossFn | None = None,
    classification: bool = True,
    num_classes: int | None = None,
    prefix: str = "test",
    averaged: bool = False,
) -> MetricFn:
    """Loss (and accuracy, per-class accuracy) of the trained model on `(inputs, labels)`.

    Returns `{prefix}_loss`, and with `classification` an accuracy that fits the model,
    read off the outputs' shape on the first batch evaluated:

        outputs (B, k), k >= 2, integer labels (B,):   prediction argmax_j outputs_j
        outputs (B,) or (B, 1), labels in {0, 1} or {-1, +1}:   prediction z > 0 (positive
            label 1, or +1), classes ordered (negative, positive)

    as `{prefix}_accuracy`, `per_class_accuracy` and its std (the paper's fairness note).
    Any other model (regression outputs, labels that are not classes) gets no accuracy
    key, and one warning per hook that says why and how to pass a metric of its own
    (module docstring). With `averaged`, the parameter average is evaluated instead,
    under `ema_{prefix}_*` (no per-class keys), and nothing is returned while the run
    tracks none.
    """
    x_all, y_all = np.asarray(data[0]), np.asarray(data[1])
    loss_fn = loss_fn or softmax_cross_entropy
    rule: str | None = None
    decided = False

    def batch(model, x, y):
        outputs = model(x)
        if rule == _ARGMAX:
            hits = jnp.argmax(outputs, -1) == y
        elif rule == _SIGN:
            hits = _positive(outputs.reshape(x.shape[0])) == _positive(y.reshape(x.shape[0]))
        else:
            hits = None
        return hits, loss_fn(outputs, y)

    run = _jitted(batch)

    def hook(ctx: EpochContext) -> dict:
        nonlocal rule, decided
        if averaged and ctx.averaged is None:
            return {}
        model = ctx.model(averaged=averaged)
        if not decided and classification:
            first = jax.ShapeDtypeStruct(
                x_all[:_EVAL_BATCH].shape, jax.dtypes.canonicalize_dtype(x_all.dtype)
            )
            rule, why = _accuracy_rule(_output_shape(model, first), y_all)
            if rule is None:
                warnings.warn(
                    f"no {'ema_' if averaged else ''}{prefix}_accuracy: {why}. Pass "
                    "classification=False to leave it out silently, or a metric that fits "
                    "the model: toolkit.fit(metrics=[hook]) (see toolkit.training.metrics).",
                    stacklevel=2,
                )
        decided = True
        correct, losses = [], []
        for i in range(0, len(y_all), _EVAL_BATCH):
            part = slice(i, i + _EVAL_BATCH)
            hits, loss = run(model, jnp.asarray(x_all[part]), jnp.asarray(y_all[part]))
            if hits is not None:
                correct.append(np.asarray(hits))
            losses.append(np.asarray(loss))
        losses = np.concatenate(losses)
        correct = np.concatenate(correct) if rule is not None else None
        if averaged:
            out = {f"ema_{prefix}_loss": float(losses.mean())}
            if rule is not None:
                out[f"ema_{prefix}_accuracy"] = float(correct.mean())
            return out
        out = {f"{prefix}_loss": float(losses.mean())}
        if rule is not None:
            if rule == _SIGN:
                classes, k = (y_all.reshape(-1) > 0).astype(np.int64), 2
            else:
                classes, k = y_all, num_classes or int(y_all.max()) + 1
            per_class = np.bincount(classes, weights=correct, minlength=k) / np.maximum(
                np.bincount(classes, minlength=k), 1
            )
            out = {
                f"{prefix}_accuracy": float(correct.mean()),
                **out,
                "per_class_accuracy": [float(a) for a in per_class],
                "per_class_accuracy_std": float(np.std(per_class)),
            }
        return out

    return hook


def _accuracy_rule(output_shape: tuple[int, ...], labels: np.ndarray) -> tuple[str | None, str]:
    """How a prediction is read off outputs of `output_shape` (batch first), or None and why.

    `_ARGMAX` for class logits (B, k >= 2) of integer labels (N,); `_SIGN` for one logit
    per example, (B,) or (B, 1), of labels (N,) or (N, 1) in {0, 1} or {-1, +1}.
    """
    features = tuple(output_shape[1:])
    if len(features) == 1 and features[0] >= 2:
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
            return _ARGMAX, ""
        return None, (
            f"the model has {features[0]} outputs per example but the labels "
            f"({labels.dtype}, shape {labels.shape}) are not integer classes, shape (N,)"
        )
    if features in ((), (1,)):
        binary = labels.shape[1:] in ((), (1,)) and (
            np.isin(labels, (0, 1)).all() or np.isin(labels, (-1, 1)).all()
        )
        if binary:
            return _SIGN, ""
        return None, (
            "the model has one output per example but the labels are not binary classes "
            "in {0, 1} or {-1, +1}, shape (N,)"
        )
    return None, (
        f"the model's outputs have shape {tuple(output_shape)}, neither class logits "
        "(batch, k >= 2) nor one logit (batch,) or (batch, 1)"
    )


def _positive(values: jax.Array) -> jax.Array:
    """values > 0, for any dtype (bool too) under strict dtype promotion."""
    return values > jnp.zeros((), values.dtype)


def _output_shape(model: nnx.Module, x: jax.ShapeDtypeStruct) -> tuple[int, ...]:
    """The shape of `model(x)`, traced abstractly (nothing is computed)."""
    graphdef, state = nnx.split(model)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x).shape


def first_activation_norm(images: np.ndarray) -> MetricFn:
    """Figure 5: mean L2 norm of the first conv layer's activations on fixed images.

    For models with a `first_activation(x)` method (the paper's CNNs). `toolkit train`
    passes the held-out images (test, or validation), never training images.
    """
    x = jnp.asarray(images[:_ACT_NORM_EXAMPLES])

    def norm(model, x):
        a = model.first_activation(x)
        return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1)))

    run = _jitted(norm)

    def hook(ctx: EpochContext) -> dict:
        return {"first_conv_activation_norm": float(run(ctx.model(), x))}

    return hook


def every(hook: MetricFn, k: int, *, last: int) -> MetricFn:
    """`hook` after every `k`-th epoch and after epoch `last`; no values after the others."""

    def sparse(ctx: EpochContext) -> dict:
        return dict(hook(ctx)) if ctx.epoch % k == 0 or ctx.epoch == last else {}

    return sparse
