"""The DP-SGD step (Abadi et al. 2016) over a split Flax NNX model.

One logical step, for a sampled batch S and expected batch size B = q N:

    g_i   = grad_theta loss(model_theta(x_i), y_i)           (per example; toolkit.grads)
    s     = sum_{i in S} clip(g_i)                           (toolkit.grads.clipping)
    g_hat = (s + N(0, (sigma * Delta)^2 I)) / B              (toolkit.privacy; Delta = C flat
                                                              and per-layer, 1 automatic)
    theta <- optimizer(theta, g_hat)                         (any optax transformation)

Noise goes on the clipped *sum*; only then is anything rescaled. The division
is by the expected batch size, not the realised one, which would leak the
batch size. Large logical batches are split into fixed-shape physical
micro-batches whose clipped sums are accumulated by a Python loop over the
jitted `accumulate` function (convolutions inside `lax.scan` bodies are ~20x
slower on XLA:CPU). Under the quantile rule the step clips at C_t, held in the
privatizer's state, which also takes the noisy count that moves it
(`toolkit.privacy._quantile`). `Mechanism` holds the privatisation settings and builds
the pieces; `toolkit.training._loop` runs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from toolkit.base.choices import LR_SCHEDULES
from toolkit.grads import IMPLEMENTATIONS, Augmult, ClippedGradFn, LossFn, clipped_grad
from toolkit.grads import clipping as clip_lib
from toolkit.privacy import (
    default_count_noise,
    gaussian_privatizer,
    quantile_privatizer,
    randomness,
)

__all__ = ["IMPLEMENTATIONS", "Mechanism", "make_accumulate", "make_update", "make_optimizer"]


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """The privatisation of one step: clipping rule and noise.

    `clip_norm = inf` and `noise_multiplier = 0` give plain (non-private) SGD
    through the same code path.
    """

    clipping: str = "flat"
    clip_norm: float = 1.0
    gamma: float = 0.01  # automatic clipping's stabiliser, g / (||g|| + gamma)
    noise_multiplier: float = 0.0
    layer_split: str = "equal"  # per-layer clipping's C_l
    # The quantile rule (clip_norm is C_0): gamma_q, eta, sigma_b (None: B / 20).
    target_quantile: float = 0.5
    quantile_lr: float = 0.2
    count_noise: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Mechanism:
        """From anything with the fields of this class (a `RunConfig`)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @property
    def adaptive(self) -> bool:
        """The clip norm moves (quantile rule): the privatizer takes a `ClippedStep`."""
        return self.clipping == "quantile"

    def clipped_grad(
        self,
        graphdef: nnx.GraphDef,
        *,
        loss_fn: LossFn | None = None,
        implementation: str = "auto",
        norm_rule: str = "mixed",
        augment: Augmult | None = None,
    ) -> ClippedGradFn:
        """This mechanism's per-example clipped-gradient function for a split model."""
        return clipped_grad(
            graphdef, loss_fn=loss_fn, clipping=self.clipping, clip_norm=self.clip_norm,
            gamma=self.gamma, implementation=implementation, norm_rule=norm_rule,
            augment=augment, layer_split=self.layer_split,
        )  # fmt: skip

    def privatized(
        self, optimizer: optax.GradientTransformation, *, expected_batch_size: float, key
    ) -> optax.GradientTransformation:
        """`optax.chain(privatizer, optimizer)`: noise on the sum, / B, step.

        The quantile rule's privatizer also updates C_t from the noisy count; its sigma is
        the accounted one, split between gradient and count (`toolkit.privacy._quantile`).
        """
        if self.adaptive:
            noise = quantile_privatizer(
                noise_multiplier=self.noise_multiplier,
                count_noise=(
                    self.count_noise
                    if self.count_noise is not None
                    else default_count_noise(expected_batch_size)
                ),
                target_quantile=self.target_quantile, learning_rate=self.quantile_lr,
                initial_clip_norm=self.clip_norm, expected_batch_size=expected_batch_size,
                key=key,
            )  # fmt: skip
            return optax.chain(noise, optimizer)
        noise = gaussian_privatizer(
            noise_multiplier=self.noise_multiplier,
            sensitivity=clip_lib.sensitivity(clipping=self.clipping, clip_norm=self.clip_norm),
            expected_batch_size=expected_batch_size,
            key=key,
        )
        return optax.chain(noise, optimizer)


def make_accumulate(
    graphdef: nnx.GraphDef,
    mechanism: Mechanism,
    *,
    implementation: str = "auto",
    norm_rule: str = "mixed",
    loss_fn: LossFn | None = None,
    augment: Augmult | None = None,
) -> Callable:
    """Jitted `accumulate(params, acc, images, labels, idx, mask, state=None, stream=None,
    step=None, ids=None, clip_norm=None)`.

    Returns `(acc, norms, losses)`. Gathers the micro-batch `images[idx]` on device,
    clips its per-example gradients (`toolkit.grads._per_example`; `implementation` as there)
    and adds their masked sum to `acc`. The pre-clip norms and losses are for the
    metrics only (padded rows are junk: use `mask`; a non-finite norm means that
    example's gradient was dropped, see `toolkit.grads.clipping`). `state` is the model's
    non-Param state; `stream` (`toolkit.privacy.randomness.example_stream`), `step` and `ids` (every
    training example's identity, `toolkit.privacy.randomness.example_ids`) give each example its
    own key (needed by models that draw randomness). `clip_norm` (a scalar array) clips at
    it instead of the mechanism's C: the quantile rule's C_t.

    Inputs sharded over the batch axis (`jax.sharding`) shard the per-example
    work; the sum comes back replicated.
    """
    clip = mechanism.clipped_grad(
        graphdef, loss_fn=loss_fn, implementation=implementation, norm_rule=norm_rule,
        augment=augment,
    )  # fmt: skip
    return make_accumulate_fn(clip)


def make_accumulate_fn(clip: ClippedGradFn) -> Callable:
    """`make_accumulate` for an already built `ClippedGradFn`."""

    @jax.jit
    def accumulate(params, acc, images, labels, idx, mask, state=None, stream=None, step=None,
                   ids=None, clip_norm=None):  # fmt: skip
        keys = None if stream is None else randomness.example_keys(stream, step, ids[idx])
        summed, norms, losses = clip(
            params, state, images[idx], labels[idx], mask, keys, clip_norm=clip_norm
        )
        return jax.tree.map(jnp.add, acc, summed), norms, losses

    return accumulate


def make_update(optimizer: optax.GradientTransformation) -> Callable:
    """Jitted `update(params, opt_state, clipped_sum) -> (params, opt_state)`.

    `optimizer` must privatize (`Mechanism.privatized`): its input is the clipped sum (a
    `toolkit.privacy.ClippedStep` under the quantile rule).
    """

    @jax.jit
    def update(params, opt_state, clipped_sum):
        updates, opt_state = optimizer.update(clipped_sum, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return update


def zeros_like(params):
    return jax.tree.map(jnp.zeros_like, params)


def make_optimizer(
    name: str,
    *,
    lr: float,
    momentum: float = 0.0,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """`sgd` (with optional heavy-ball momentum) or `adam`, at a constant or scheduled lr.

    `schedule="cosine"`: linear warm-up from 0 over `warmup_steps`, then cosine decay to 0
    at `total_steps`. `"constant"` with `warmup_steps` warms up and then stays at `lr`.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {', '.join(LR_SCHEDULES)}.")
    rate: float | optax.Schedule = lr
    if schedule == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(f"cosine schedule: total_steps={total_steps} must be > warm-up.")
        rate = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 0), total_steps)
    elif warmup_steps > 0:
        rate = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
            [warmup_steps],
        )
    if name == "sgd":
        return optax.sgd(rate, momentum=momentum or None)
    if name == "adam":
        return optax.adam(rate)
    raise ValueError(f"optimizer={name!r}; expected 'sgd' or 'adam'.")
