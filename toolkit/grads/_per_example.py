"""Per-example clipped gradients of any Flax NNX model and per-example loss.

For a batch of examples (x_i, y_i) with weights w_i (1, or 0 for padding rows):

    g_i  = grad_theta loss_fn(model_theta(x_i), y_i)       per example
    sum  = sum_i w_i clip(g_i)                              toolkit.grads.clipping (flat, automatic)

`ClippedGradFn(params, state, x, y, mask)` returns that sum together with the pre-clip
norms ||g_i|| and the losses. Its `sensitivity` is the most one example can move the sum:
C under flat clipping, 1 under automatic clipping (norms g / (||g|| + gamma) < 1). It is
the part of DP-SGD that touches examples; noise goes on its output
(`toolkit.privacy._privatizer`), and nothing may rescale the sum before that.

Two implementations give the same sum to float32 rounding:
  bookkeeping: one batched backward pass, per-layer norms (`toolkit.grads._bookkeeping`),
               for models of Linear, LinearGeneral, Conv (weight-standardised too) and
               Embed layers, any other parameter given one copy per example;
  vmap:        `jax.vmap(jax.grad(loss))` over examples, the reference; any model.
`implementation="auto"` takes book-keeping when `checked` finds that it agrees with vmap
on real examples, vmap otherwise.

Models with state besides `nnx.Param` work: the state is passed through unchanged and
never trained. Each example's randomness (the PRNG keys in the state, such as
nnx.Dropout's stream, and augmult's views) is drawn from the example's own key, given as
`keys` (`toolkit.privacy.randomness`: the run's secret key, the step and the example's identity,
a hash of its bytes), on both paths: never from its row. A model that mixes the examples
of a batch has no per-example gradient: `check_model` refuses BatchNorm, and `checked`
refuses any model whose rows interact in training mode.

Compare `jax_privacy.clipped_grad` (a loss of (params, batch) -> clipped mean or sum)
and Opacus' `GradSampleModule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from toolkit.base import ToolkitError
from toolkit.base.choices import IMPLEMENTATIONS
from toolkit.grads import _bookkeeping as bookkeeping
from toolkit.grads import _independence as independence
from toolkit.grads import clipping as clip_lib
from toolkit.grads._augment import Augmult
from toolkit.privacy import randomness

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
# How per-example gradients are clipped; all give the same clipped sum to float32 rounding.


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels: (B, k), (B,) -> (B,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example logistic loss of a one-logit binary model: (B,) or (B, 1), (B,) -> (B,).

    loss_i = log(1 + exp(-s_i z_i)), s_i = +1 for a positive label (1, or +1) and -1 for
    a negative one (0, or -1); computed through log-sigmoid, finite for any finite z.
    """
    if logits.ndim not in (1, 2) or logits.shape[1:] not in ((), (1,)):
        raise ToolkitError(
            f"sigmoid_binary_cross_entropy: logits of shape {logits.shape}; a binary model "
            "has one logit per example, shape (batch,) or (batch, 1)."
        )
    z = logits.reshape(logits.shape[0])
    labels = labels.reshape(z.shape)
    positive = labels > jnp.zeros((), labels.dtype)  # bool labels too, under strict dtypes
    return optax.sigmoid_binary_cross_entropy(z, positive.astype(z.dtype))


# Per-example losses by name (a run records its loss by this name).
LOSSES: dict[str, LossFn] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
}


class ClippedGrad(NamedTuple):
    """What one call returns. Padded rows of `norms` and `losses` are junk (use the mask)."""

    clipped_sum: Any  # pytree like params: sum_i w_i clip(g_i), weights 0 on padding rows
    norms: jax.Array  # (B,) pre-clip ||g_i||; NaN/inf: that example's gradient was dropped
    losses: jax.Array  # (B,) per-example losses


def check_model(model: nnx.Module) -> None:
    """Refuse layers that mix the examples of a batch (they break per-example privacy)."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            where = "/".join(map(str, path)) or "the model"
            raise ToolkitError(
                f"layer {where} is BatchNorm: it normalises each example with statistics of "
                "the whole batch, so no per-example gradient (and no per-example privacy) "
                "exists; use nnx.GroupNorm or nnx.LayerNorm."
            )
    if jax.tree.leaves(nnx.state(model, nnx.BatchStat)):
        raise ToolkitError(
            "the model holds nnx.BatchStat variables (batch statistics mix examples, which "
            "breaks per-example privacy); use nnx.GroupNorm or nnx.LayerNorm."
        )


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`(graphdef, params, state)`: the trainable `nnx.Param`s and everything else."""
    check_model(model)
    return nnx.split(model, nnx.Param, ...)


def merge(graphdef: nnx.GraphDef, params: Any, state: Any = None, key: Any = None) -> nnx.Module:
    """The model with `params` and `state` (its PRNG keys folded with the example `key`)."""
    state = randomness.fold_state(state, key)
    return nnx.merge(graphdef, params, *([] if state is None else [state]))


def per_example_loss_fn(
    graphdef: nnx.GraphDef, loss_fn: LossFn | None = None, augment: Augmult | None = None
) -> Callable:
    """`loss(params, x, y, state=None, key=None)` for ONE example (x without batch axis).

    `key` is the example's own key (`toolkit.privacy.randomness`): its model randomness and views.
    With `augment`, the mean loss over the example's K views (`toolkit.grads._augment`).
    """
    loss_fn = loss_fn or softmax_cross_entropy

    def loss(params, x: jax.Array, y: jax.Array, state=None, key=None) -> jax.Array:
        if augment is None:
            outputs = merge(graphdef, params, state, key)(x[None])
            return loss_fn(outputs, y[None])[0]
        if key is None:
            raise ToolkitError("augmentation multiplicity needs each example's key (keys=).")
        outputs = merge(graphdef, params, state, key)(augment.views(x, key))
        return jnp.mean(loss_fn(outputs, jnp.repeat(y[None], augment.k, axis=0)))

    return loss


def per_example_grads_fn(
    graphdef: nnx.GraphDef, loss_fn: LossFn | None = None, augment: Augmult | None = None
) -> Callable:
    """`(params, x, y, state=None, keys=None) -> (losses, grads)` per example, by jax.vmap.

    The reference path. Example i's randomness (its PRNG keys, its augmented views) comes
    from `keys[i]` alone (`augment`: one gradient per example, the mean over its views).
    """
    one = jax.value_and_grad(per_example_loss_fn(graphdef, loss_fn, augment))

    def grads(params, x, y, state=None, keys=None):
        if keys is None:
            return jax.vmap(lambda xi, yi: one(params, xi, yi, state))(x, y)
        return jax.vmap(lambda xi, yi, ki: one(params, xi, yi, state, ki))(x, y, keys)

    return grads


@dataclasses.dataclass(frozen=True)
class ClippedGradFn:
    """`fn(params, state, x, y, mask=None, keys=None) -> ClippedGrad`, traceable (jit it).

    Build with `clipped_grad`. `state` is the non-Param state from `split_model` (None or
    empty for a model without any); `keys` (B,) are the examples' own PRNG keys
    (`toolkit.privacy.randomness.example_keys`), required when the model draws randomness (PRNG
    keys in its state) or with `augment`; `mask` (B,) bool marks real rows (padding rows
    contribute zeros).
    """

    graphdef: nnx.GraphDef
    loss_fn: LossFn
    clipping: str
    clip_norm: float
    gamma: float
    implementation: str
    norm_rule: str = "mixed"
    augment: Augmult | None = None  # K views per example, averaged before clipping
    layer_split: str = "equal"  # per-layer clipping's C_l (toolkit.grads.clipping)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped sum (add/remove one example): C flat, 1 automatic."""
        return clip_lib.sensitivity(clipping=self.clipping, clip_norm=self.clip_norm)

    @property
    def per_layer(self) -> bool:
        return self.clipping == "per-layer"

    def weights(self, norms, mask: jax.Array | None, *, params=None, clip_norm=None):
        """Clip factors times the mask: (B,) from the (B,) norms, or {layer: (B,)} from
        {layer: (B,)} norms under per-layer clipping (its C_l from `params`' shapes).
        `clip_norm` (a traced scalar) replaces C: the quantile rule's C_t."""
        c = self.clip_norm if clip_norm is None else clip_norm
        if self.per_layer:
            factors = clip_lib.layer_weights(
                norms, clip_lib.layer_clip_norms(params, clip_norm=c, split=self.layer_split)
            )
            return {k: v if mask is None else jnp.where(mask, v, 0.0) for k, v in factors.items()}
        factors = clip_lib.clip_factors(
            norms, clipping=self.clipping, clip_norm=c, gamma=self.gamma
        )
        return factors if mask is None else jnp.where(mask, factors, 0.0)

    def __call__(self, params, state, x, y, mask=None, keys=None, clip_norm=None) -> ClippedGrad:
        """`clip_norm` (a scalar, may be traced) clips at it instead of `self.clip_norm`:
        the quantile rule's clip norm of the step, whose privatizer scales the noise by it
        (`toolkit.privacy._quantile`); refused under the other rules, whose `sensitivity`
        is the fixed C."""
        if clip_norm is not None and self.clipping != "quantile":
            raise ToolkitError(
                f"clip_norm= is the quantile rule's clip norm of a step; clipping="
                f"{self.clipping!r} clips at its fixed C (its sensitivity)."
            )
        random_state = randomness.has_keys(state)
        if keys is None and (random_state or self.augment is not None):
            raise ToolkitError(
                "this model draws randomness (PRNG keys in its state, or augmult views): "
                "pass keys=, one key per example (toolkit.randomness.example_keys), so that "
                "each example's randomness is keyed by the example, not by its row."
            )

        def weights_fn(norms):
            return self.weights(norms, mask, params=params, clip_norm=clip_norm)

        if self.implementation != "vmap":
            fast = bookkeeping.make_clipped_grad(
                self.graphdef, loss_fn=self.loss_fn, norm_rule=self.norm_rule,
                per_layer=self.per_layer, augment=self.augment,
            )  # fmt: skip
            keyed = random_state or self.augment is not None
            try:  # decided once, while tracing
                out = fast(params, x, y, weights_fn, state, keys if keyed else None)
                return _checked_shapes(ClippedGrad(*out), x)
            except bookkeeping.Unsupported:
                if self.implementation == "bookkeeping":
                    raise
        grads_fn = per_example_grads_fn(self.graphdef, self.loss_fn, self.augment)
        losses, grads = grads_fn(params, x, y, state, keys)
        norms = clip_lib.per_example_norms(grads)
        weights = weights_fn(clip_lib.per_layer_norms(grads) if self.per_layer else norms)
        out = ClippedGrad(clip_lib.clipped_sum(grads, weights), norms, losses)
        return _checked_shapes(out, x)

    def checked(self, params, state, x: jax.Array, y: jax.Array, *, rows: int = 8) -> ClippedGradFn:
        """This function with `implementation` fixed to the path that is right for the model.

        Run once, before training, on real examples: the first `rows` of `x` (the loop
        passes its micro-batch size, so the checks see the batch shape training runs)
        and the `rows` after them (`toolkit.grads._independence`). Three checks:

        1. The model as written, in training mode, one forward pass per batch: every
           row's loss, and example 0's gradient, must not change when the other half of
           the batch is replaced by other examples or by copies of example 0 (the padding
           rows). A model whose rows interact (batch statistics in training mode) is
           refused, naming the innermost layer that mixes them
           (`toolkit.grads._independence.rows_interact`).
        2. Book-keeping assumes what it cannot check while tracing (each kernel used only by
           its own layer), so, in evaluation mode, it must give the reference (vmap)
           per-example norms on 3 examples; `auto` falls back to vmap when it does not, an
           explicit `bookkeeping` is refused.
        3. The chosen path in training mode, with the examples' own keys, no clipping:
           every example's gradient norm and loss must not change with its row or with the
           other examples, and the clipped sum must not change when the batch is reversed
           or when the rows outside a kept half are replaced
           (`toolkit.grads._independence.keyed_by_example`). This is what the sensitivity bound
           needs of the implementation. `auto` falls back to vmap when book-keeping fails.

        What they cannot prove: they test 2 x `rows` examples and one draw of the keys,
        not every input; a model that mixes rows only for some inputs or batch sizes, or
        through randomness not held as typed PRNG keys in its state, can pass. The
        neighbour test of the suite (`tests/toolkit/test_neighbours.py`) exercises the same
        property end to end.
        """
        _check_loss_shape(self, params, state, x[:3], y[:3])
        culprit = independence.rows_interact(
            self.graphdef, self.loss_fn, params, state, x, y, rows=rows
        )
        if culprit is not None:
            raise ToolkitError(
                f"{culprit} mixes the examples of a batch in training mode (an example's "
                "loss or gradient changes when the other rows change), so no per-example "
                "gradient, "
                "and no per-example privacy, exists; use per-example layers (LayerNorm, "
                "GroupNorm) instead of batch statistics."
            )
        chosen = self._choose(params, state, x, y)
        if not independence.keyed_by_example(chosen, params, state, x, y, rows=rows):
            if self.implementation == "auto" and chosen.implementation == "bookkeeping":
                chosen = dataclasses.replace(self, implementation="vmap")
                if independence.keyed_by_example(chosen, params, state, x, y, rows=rows):
                    return chosen
            raise ToolkitError(
                f"per_example={chosen.implementation!r}: an example's gradient "
                "changes with its row or with the other examples of its batch in training "
                "mode, which breaks the sensitivity bound; this model cannot be trained with "
                "DP-SGD here."
            )
        return chosen

    def _choose(self, params, state, x, y) -> ClippedGradFn:
        """Check 2 of `checked`: book-keeping against vmap, in evaluation mode."""
        if self.implementation == "vmap":
            return self
        x, y = x[:3], y[:3]
        graphdef, state = _deterministic(self.graphdef, params, state)
        # augmult's views need keys: any fixed ones, the same on both paths
        keys = None
        if self.augment is not None:
            keys = jax.random.split(jax.random.key(0), x.shape[0])
        fast = bookkeeping.make_clipped_grad(
            graphdef, loss_fn=self.loss_fn, norm_rule=self.norm_rule, augment=self.augment
        )
        try:
            _, norms, _ = jax.jit(lambda p: fast(p, x, y, jnp.ones_like, state=state, keys=keys))(
                params
            )
        except bookkeeping.Unsupported as e:
            if self.implementation == "bookkeeping":
                raise ToolkitError(
                    f"per_example='bookkeeping' cannot run this model: {e}"
                ) from None
            return dataclasses.replace(self, implementation="vmap")
        # The reference at full float32 precision, as book-keeping's norms are: on a GPU the
        # default (TF32) alone can differ from them by ~1e-3 and fail the comparison.
        with jax.default_matmul_precision("highest"):
            grads_fn = per_example_grads_fn(graphdef, self.loss_fn, self.augment)
            ref_norms = jax.jit(
                lambda p: clip_lib.per_example_norms(grads_fn(p, x, y, state, keys)[1])
            )
            ref = np.asarray(ref_norms(params))
        norms = np.asarray(norms)
        # Equal to rounding, plus the ghost norms' rounding slack (<= 2e-4 on the paper's CNNs).
        if np.allclose(norms, ref, rtol=1e-3, atol=0.0, equal_nan=True):
            return dataclasses.replace(self, implementation="bookkeeping")
        if self.implementation == "bookkeeping":
            raise ToolkitError(
                f"per_example='bookkeeping' gives per-example gradient norms {norms} where "
                f"vmap gives {ref} (examples interacting inside the model or the loss, or a "
                "shared kernel?); use per_example='auto' or 'vmap'."
            )
        return dataclasses.replace(self, implementation="vmap")


def clipped_grad(
    graphdef: nnx.GraphDef,
    *,
    loss_fn: LossFn | None = None,
    clipping: str = "flat",
    clip_norm: float,
    gamma: float = 0.01,
    implementation: str = "auto",
    norm_rule: str = "mixed",
    augment: Augmult | None = None,
    layer_split: str = "equal",
) -> ClippedGradFn:
    """The per-example clipped-gradient function of a split model and a per-example loss.

    Args:
        graphdef: From `split_model(model)`.
        loss_fn: `loss_fn(outputs, labels) -> (B,)` per-example losses; default softmax
            cross-entropy with integer labels.
        clipping: "flat" (g min(1, C/||g||)), "automatic" (g / (||g|| + gamma)),
            "quantile" (flat at the clip norm passed to each call, default C) or
            "per-layer" (each layer at its C_l, sum_l C_l^2 = C^2); `toolkit.grads.clipping`.
        clip_norm: C, > 0 (inf: no clipping, no DP bound).
        gamma: Automatic clipping's stabiliser.
        implementation: "auto", "bookkeeping" or "vmap" (speed only, see module doc).
        norm_rule: Book-keeping's per-layer choice ("mixed", "ghost", "materialise").
        augment: Augmentation multiplicity (`toolkit.grads._augment.Augmult`): each example's
            gradient is the mean over its K views, then clipped; sensitivity unchanged.
        layer_split: Per-layer clipping's C_l: "equal" (C / sqrt(L)) or "size"
            (C sqrt(d_l / d)).

    Returns:
        A `ClippedGradFn`; call `.checked(params, state, x, y)` once on real examples.
    """
    if clipping not in clip_lib.CLIPPING_RULES:
        raise ToolkitError(
            f"clipping={clipping!r} is unknown; "
            f"expected one of {', '.join(clip_lib.CLIPPING_RULES)}."
        )
    if not clip_norm > 0:
        raise ToolkitError(f"clip_norm={clip_norm} must be > 0.")
    if implementation not in IMPLEMENTATIONS:
        raise ToolkitError(
            f"implementation={implementation!r} is unknown; "
            f"expected one of {', '.join(IMPLEMENTATIONS)}."
        )
    if layer_split not in clip_lib.LAYER_SPLITS:
        raise ToolkitError(
            f"layer_split={layer_split!r} is unknown; "
            f"expected one of {', '.join(clip_lib.LAYER_SPLITS)}."
        )
    return ClippedGradFn(
        graphdef, loss_fn or softmax_cross_entropy, clipping, clip_norm, gamma, implementation,
        norm_rule, augment, layer_split,
    )  # fmt: skip


def _checked_shapes(out: ClippedGrad, x: jax.Array) -> ClippedGrad:
    if out.losses.shape != (x.shape[0],):
        raise ToolkitError(
            f"loss_fn returned shape {out.losses.shape} for a batch of {x.shape[0]}; it must "
            "return one loss per example, shape (batch,)."
        )
    return out


def _check_loss_shape(fn: ClippedGradFn, params, state, x, y) -> None:
    """Trace one call on a few examples: a loss of the wrong shape fails here, in one line."""
    try:
        out = jax.eval_shape(lambda p, s: fn.loss_fn(merge(fn.graphdef, p, s)(x), y), params, state)
    except ToolkitError:
        raise
    except (TypeError, ValueError) as e:
        raise ToolkitError(
            f"the model or loss_fn failed on a batch of training data: {e}"
        ) from None
    if getattr(out, "shape", None) != (x.shape[0],):
        raise ToolkitError(
            f"loss_fn returned shape {getattr(out, 'shape', type(out))} for a batch of "
            f"{x.shape[0]}; it must return one loss per example, shape (batch,)."
        )
    if fn.loss_fn is softmax_cross_entropy:
        logits = jax.eval_shape(lambda p, s: merge(fn.graphdef, p, s)(x), params, state)
        if len(logits.shape) == 1 or logits.shape[-1] == 1:
            # softmax over one class is constant: every gradient would be 0
            raise ToolkitError(
                f"the model has one output (shape {logits.shape}) and the loss is the default "
                "softmax cross-entropy, whose gradient is then 0; for a binary model use "
                "loss_fn='sigmoid_binary_cross_entropy'."
            )


def _deterministic(graphdef, params, state) -> tuple[nnx.GraphDef, Any]:
    """The model in evaluation mode (dropout off), split again: for comparing the two paths."""
    model = merge(graphdef, params, state)
    model.eval()
    graphdef, _, state = nnx.split(model, nnx.Param, ...)
    return graphdef, state
