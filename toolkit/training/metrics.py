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
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.grads import LossFn, softmax_cross_entropy
from toolkit.training._loop import EpochContext, MetricFn

_EVAL_BATCH = 1000
_ACT_NORM_EXAMPLES = 1000  # fixed test images on which Figure 5's activation norm is measured


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

    Returns `{prefix}_loss`, and with `classification` (outputs (B, k), integer labels)
    `{prefix}_accuracy`, `per_class_accuracy` and its std (the paper's fairness note).
    With `averaged`, the parameter average is evaluated instead, under `ema_{prefix}_*`
    (no per-class keys), and nothing is returned while the run tracks none.
    """
    x_all, y_all = np.asarray(data[0]), np.asarray(data[1])
    loss_fn = loss_fn or softmax_cross_entropy

    def batch(model, x, y):
        outputs = model(x)
        hits = jnp.argmax(outputs, -1) == y if classification else jnp.zeros(x.shape[0], bool)
        return hits, loss_fn(outputs, y)

    run = _jitted(batch)

    def hook(ctx: EpochContext) -> dict:
        if averaged and ctx.averaged is None:
            return {}
        model = ctx.model(averaged=averaged)
        correct, losses = [], []
        for i in range(0, len(y_all), _EVAL_BATCH):
            part = slice(i, i + _EVAL_BATCH)
            hits, loss = run(model, jnp.asarray(x_all[part]), jnp.asarray(y_all[part]))
            correct.append(np.asarray(hits))
            losses.append(np.asarray(loss))
        correct, losses = np.concatenate(correct), np.concatenate(losses)
        if averaged:
            out = {f"ema_{prefix}_loss": float(losses.mean())}
            if classification:
                out[f"ema_{prefix}_accuracy"] = float(correct.mean())
            return out
        out = {f"{prefix}_loss": float(losses.mean())}
        if classification:
            k = num_classes or int(y_all.max()) + 1
            per_class = np.bincount(y_all, weights=correct, minlength=k) / np.maximum(
                np.bincount(y_all, minlength=k), 1
            )
            out = {
                f"{prefix}_accuracy": float(correct.mean()),
                **out,
                "per_class_accuracy": [float(a) for a in per_class],
                "per_class_accuracy_std": float(np.std(per_class)),
            }
        return out

    return hook


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
