"""Parameter averaging: an exponential moving average (EMA) of the iterates.

`track_ema(decay)` is an optax transformation placed after the privatized optimizer. It
reads the parameters each update produces and returns the update unchanged, so the
trained iterates are exactly those without it: the average is post-processing of the
DP-SGD iterates and costs no privacy (De et al. 2022, "Unlocking high-accuracy
differentially private image classification through scale", use it the same way). Its
state lives in the optimizer state, so checkpoints and resume carry it.

The average starts from zero and is debiased, as Adam's moments are: after t updates,
`averaged(state) = ema_t / (1 - decay**t)`, a weighted mean of the first t iterates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaState(NamedTuple):
    count: jax.Array  # updates seen
    decay: jax.Array  # kept with the average, so that reading it needs nothing else
    ema: Any  # params-shaped, biased towards zero; see `averaged`


def track_ema(decay: float) -> optax.GradientTransformation:
    """Identity on updates; keeps the EMA of `params + updates` (needs `params`)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay={decay}; expected 0 < decay < 1.")

    def init(params) -> EmaState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return EmaState(jnp.zeros([], jnp.int32), jnp.asarray(decay, jnp.float32), zeros)

    def update(updates, state: EmaState, params=None):
        if params is None:
            raise ValueError("track_ema needs params: call tx.update(updates, state, params).")
        new = optax.apply_updates(params, updates)
        d = state.decay
        ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema, new)
        return updates, EmaState(state.count + 1, state.decay, ema)

    return optax.GradientTransformation(init, update)


def averaged(opt_state) -> Any | None:
    """The debiased average held in `opt_state` (anywhere inside it); None if none is."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EmaState))
        if isinstance(s, EmaState)
    ]
    if not found:
        return None
    (state,) = found
    if int(state.count) == 0:
        return None
    scale = 1 - state.decay ** state.count.astype(jnp.float32)
    return jax.tree.map(lambda e: e / scale, state.ema)
