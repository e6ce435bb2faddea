"""Per-example clipping by book-keeping: one batched backward, no per-example backward.

One forward and one backward pass of the summed loss give, for every layer l that
contracts an input with a kernel, its input `a` and the gradient `d` of the loss w.r.t.
its contraction's output. Row i of `d` is example i's own output gradient, so example
i's kernel gradient is a contraction of `a_i` with `d_i` (Bu et al. 2023,
"book-keeping"); its norm and the clipped sum need no per-example backward pass
(`toolkit.grads._layer_rules` has the per-layer rules, `toolkit.grads._conv_grads` the
convolutions).

The layers are found generically in the merged model and tapped:

- a module holding a `kernel` `nnx.Param` and a contraction hook, `conv_general_dilated`
  (`nnx.Conv`, `toolkit.nn.WSConv`) or `dot_general` (`nnx.Linear`, `nnx.LinearGeneral`,
  so the query, key, value and output projections of `nnx.MultiHeadAttention`), with an
  optional `bias` `nnx.Param` added to the contraction's output. A module with a
  `kernel_transform` attribute contracts with `kernel_transform(kernel)` (weight
  standardisation); its kernel's gradient is that map's vjp of the contraction kernel's.
- `nnx.Embed`, whose table lookup is a contraction with one-hot rows.

The hook is wrapped to record its operands and to add a zero perturbation to its output,
whose gradient is `d`. Every other parameter (LayerNorm and GroupNorm scales and biases, a
user's free scalar) gets its per-example gradients directly: the forward then runs per
example under `jax.vmap`, those parameters given one copy per example, and the backward
returns their gradient per copy. The tapped kernels stay shared, so the convolutions and
matmuls stay batched. The same per-example forward runs when examples draw randomness
(dropout: each example's PRNG keys folded with its own key, `toolkit.privacy.randomness`)
and with augmult (each example's K views, `toolkit.grads._augment`: the views' rows
belong to their example).

With weights w_i = mask_i * clip_factor_i (toolkit.grads.clipping, so the same rule,
bound and edge cases), rows with weight 0 (masked, non-finite) are zeroed before any
product, so they contribute exact zeros.

Checked at trace time, with an `Unsupported` error otherwise: each tapped layer is called
once per forward pass with the example axis leading, convolutions are channels-last with
no input dilation, no feature groups and no kernel mask, and `dot_general` contracts the
input's trailing axes with the kernel's leading ones, with no batch axes. What cannot be
checked here (a tapped kernel also used outside its hook, a bias that is not simply
added, a `kernel_transform` that differs from the one used, rows mixed inside the model)
is checked against `jax.vmap(jax.grad(...))` on real examples before training
(`toolkit.grads._per_example.ClippedGradFn.checked`). Not handled: layers inside
`nnx.remat` / `nnx.scan` (they fail while tracing; use vmap), and a layer created with an
explicit `precision=` keeps it in its ghost-sum contraction while norms run at "highest".

References:
  Bu, Mao, Xu (2022), "Scalable and Efficient Training of Large Convolutional Neural
    Networks with Differential Privacy" (mixed ghost clipping), NeurIPS.
  Bu, Wang, Zha, Karypis (2023), "Differentially Private Optimization on Large Model
    at Small Cost" (book-keeping), ICML.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from toolkit.base import ToolkitError
from toolkit.grads import _conv_grads as conv_grads
from toolkit.grads import _layer_rules as rules
from toolkit.grads import clipping as clip_lib
from toolkit.grads._augment import Augmult
from toolkit.privacy import randomness

NORM_RULES = rules.NORM_RULES
_DOT_SIGNATURE = inspect.signature(lax.dot_general)


class Unsupported(ToolkitError):
    """The model has a layer the book-keeping path cannot handle; use vmap."""


def _hook_of(module) -> tuple[str, str] | None:
    """(kind, hook attribute) of a layer that contracts through a hook, or None."""
    if not isinstance(getattr(module, "kernel", None), nnx.Param):
        return None
    if callable(getattr(module, "conv_general_dilated", None)):
        return "conv", "conv_general_dilated"
    if hasattr(module, "dot_general"):  # nnx.LinearGeneral keeps None for lax.dot_general
        return "linear", "dot_general"
    return None


def _install_taps(model: nnx.Module, calls: list[rules.Layer], perturb, record) -> set[tuple]:
    """Tap every layer of the model; returns the parameter paths the taps cover."""
    covered = set()
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Embed):
            covered.add((*path, "embedding"))
            tap = _tap(path, "embed", "embedding", None, False, None, calls, perturb, record)
            base = type(module)
            # This private copy of the model only: its lookup goes through the tap.
            object.__setattr__(
                module, "__class__", type(base.__name__, (base,), {"__call__": _tapped_embed(tap)})
            )
            continue
        found = _hook_of(module)
        if found is None:
            continue
        kind, hook = found
        if getattr(module, "mask", None) is not None:
            raise Unsupported(f"layer {path}: masked kernels are not supported.")
        if getattr(module, "dot_general_cls", None) is not None:
            raise Unsupported(f"layer {path}: a dot_general_cls is not supported.")
        has_bias = isinstance(getattr(module, "bias", None), nnx.Param)
        covered.add((*path, "kernel"))
        if has_bias:
            covered.add((*path, "bias"))
        original = getattr(module, hook) or lax.dot_general
        transform = getattr(module, "kernel_transform", None)
        tap = _tap(path, kind, "kernel", original, has_bias, transform, calls, perturb, record)
        setattr(module, hook, tap)
    return covered


def _tapped_embed(tap):
    def __call__(self, inputs, out_sharding=None):
        if out_sharding is not None:
            raise Unsupported("nnx.Embed with out_sharding is not supported.")
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("Input type must be an integer or unsigned integer.")
        (table,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
        return tap(inputs, table)

    return __call__


def _tap(path, kind, param, original, bias, transform, calls, perturb, record):
    def tapped(lhs, rhs, *args, **kwargs):
        if any(c.path == path for c in calls):
            raise Unsupported(f"layer {path} is called more than once per forward pass.")
        conv_args = None
        if kind == "embed":
            out = jnp.take(rhs, lhs, axis=0)
            contract, k, o = None, 1, rhs.shape[-1]
        else:
            contract = lambda a, w: original(a, w, *args, **kwargs)  # noqa: E731
            if kind == "conv":
                conv_args = conv_grads.SIGNATURE.bind(lhs, rhs, *args, **kwargs).arguments
                reason = conv_grads.unsupported_reason(lhs.ndim, conv_args)
                k, o = math.prod(rhs.shape[:-1]), rhs.shape[-1]
            else:
                reason, k, o = _dot_geometry(lhs, rhs, args, kwargs)
            if reason:
                raise Unsupported(f"layer {path}: {reason}.")
            out = original(lhs, rhs, *args, **kwargs)
        call = rules.Layer(
            path, kind, param, contract, conv_args, bias, transform,
            jax.ShapeDtypeStruct(out.shape, out.dtype), k, o,
        )  # fmt: skip
        calls.append(call)
        record(lhs, rhs)
        return out + perturb(len(calls) - 1, out)

    return tapped


def _dot_geometry(lhs, rhs, args, kwargs) -> tuple[str | None, int, int]:
    """(why unsupported or None, K, O) of a dot_general call: trailing x leading axes only."""
    try:
        bound = _DOT_SIGNATURE.bind(lhs, rhs, *args, **kwargs).arguments
    except TypeError as e:
        return f"dot_general arguments not understood ({e})", 0, 0
    (lc, rc), (lb, rb) = bound["dimension_numbers"]
    lc, rc = tuple(int(i) % lhs.ndim for i in lc), tuple(int(i) % rhs.ndim for i in rc)
    n = len(lc)
    if lb or rb:
        return "dot_general with batch axes is not supported", 0, 0
    if lc != tuple(range(lhs.ndim - n, lhs.ndim)) or rc != tuple(range(n)):
        return "dot_general must contract the input's trailing axes with the kernel's", 0, 0
    return None, math.prod(rhs.shape[:n]), math.prod(rhs.shape[n:])


def _softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _path_of(keypath) -> tuple:
    return tuple(
        getattr(k, "key", getattr(k, "idx", None))
        for k in keypath
        if not isinstance(k, jax.tree_util.GetAttrKey)
    )


def make_clipped_grad(
    graphdef: nnx.GraphDef,
    *,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    norm_rule: str = "mixed",
    per_layer: bool = False,
    augment: Augmult | None = None,
) -> Callable:
    """`clipped_grad(params, x, y, weights_fn, state=None, keys=None) -> (sum, norms, losses)`.

    Traceable. `loss_fn(outputs, labels)` gives the (B,) per-example losses (default:
    softmax cross-entropy with integer labels); each must depend on its own example
    only, which `toolkit.grads._per_example.ClippedGradFn.checked` verifies against vmap.
    `state` is the model's non-`nnx.Param` state (`toolkit.grads._per_example.split_model`),
    merged back in for the forward pass and never differentiated. `keys` ((B,) PRNG keys,
    one per example: `toolkit.privacy.randomness`) are required with `augment` (each
    example's K views, its loss the mean over them) and fold into the state's PRNG keys
    (for models that draw randomness).

    `weights_fn(norms) -> weights` maps the (B,) per-example gradient norms to the
    weights of the sum (clip factor times mask; rows with weight 0 contribute exact
    zeros, even when their gradient is not finite). With `per_layer`, `weights_fn` maps
    {layer: (B,) norms of the examples' gradients in that layer} to {layer: (B,) weights}
    (`toolkit.grads.clipping.layer_of` names a parameter's layer), and `norms` are still
    the whole gradients' norms. `norm_rule` chooses per layer: "mixed" (Bu et al.'s
    rule), "ghost" or "materialise" for every layer (a reparameterised kernel always
    materialises). Raises `Unsupported` at trace time for models outside the scope above.
    """
    if norm_rule not in NORM_RULES:
        raise ValueError(f"norm_rule={norm_rule!r}; expected one of {NORM_RULES}.")
    loss_fn = loss_fn or _softmax_cross_entropy

    def run_model(params, state, x, y, calls, perturb, record):
        """The per-example losses; taps every layer; returns (losses, covered paths)."""
        model = nnx.merge(graphdef, params, *([] if state is None else [state]))
        covered = _install_taps(model, calls, perturb, record)
        losses = loss_fn(model(x), y)
        missing = {p[:-1] for p in covered} - {c.path for c in calls}
        if missing:
            raise Unsupported(f"layers never called through their hook: {sorted(missing)}.")
        return losses, covered

    def example_inputs(xi, yi, key):
        """One example's rows: itself, or its K views (with its label K times)."""
        if augment is None:
            return xi[None], yi[None]
        return augment.views(xi, key), jnp.repeat(yi[None], augment.k, axis=0)

    def batched_forward(params, state, x, y):
        """One forward over the batch: [(layer, (input, kernel))], output gradients, losses."""
        calls: list[rules.Layer] = []

        # `state` is an input of the vjp, not a closure: NNX refuses to mutate a variable
        # (dropout's RngCount) merged from a value of another trace level.
        def forward(zs, state):
            operands = []
            losses, _ = run_model(
                params, state, x, y, calls, lambda i, o: zs[i], lambda a, k: operands.append((a, k))
            )
            return losses, operands

        zeros = [jnp.zeros(c.out.shape, c.out.dtype) for c in probe_batched(params, state, x, y)]
        losses, backward, operands = jax.vjp(forward, zeros, state, has_aux=True)
        grads_out, _ = backward(jnp.ones_like(losses))
        return list(zip(calls, operands, strict=True)), grads_out, {}, losses

    def probe_batched(params, state, x, y):
        """Shapes only: which layers, in which order, with which output shapes."""
        probe: list[rules.Layer] = []
        jax.eval_shape(
            lambda p, s: run_model(p, s, x, y, probe, lambda i, o: 0.0, lambda a, k: None)[0],
            params,
            state,
        )
        for c in probe:
            if c.out.shape[0] != x.shape[0]:
                raise Unsupported(f"layer {c.path}: leading axis {c.out.shape[0]} != batch.")
        return probe

    def per_example_forward(params, state, x, y, keys, free):
        """Each example's forward pass alone (jax.vmap): its rows (itself or its views),
        its state's PRNG keys folded with its own key, and its own copy of every free
        parameter (paths `free`), whose gradients come back per example. Inputs and output
        gradients come out with each example's rows consecutive, as (B * rows, ...); the
        kernel operand is a zero of the kernel's shape, all the sums need (the
        contraction is linear in the kernel)."""
        b = x.shape[0]
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        free_at = [i for i, (kp, _) in enumerate(leaves) if _path_of(kp) in free]
        values = [v for _, v in leaves]
        calls: list[rules.Layer] = []
        kernels: list[jax.ShapeDtypeStruct] = []

        def one(zs, free_values, xi, yi, key, state, probe):
            own = list(values)
            for i, v in zip(free_at, free_values, strict=True):
                own[i] = v
            inputs = []

            def record(a, k):
                inputs.append(a)
                if probe:
                    kernels.append(jax.ShapeDtypeStruct(k.shape, k.dtype))

            rows_x, rows_y = example_inputs(xi, yi, key)
            losses, _ = run_model(
                jax.tree_util.tree_unflatten(treedef, own), randomness.fold_state(state, key),
                rows_x, rows_y, calls if probe else [],
                lambda i, o: 0.0 if zs is None else zs[i], record,
            )  # fmt: skip
            return jnp.mean(losses), inputs

        copies = [jnp.broadcast_to(values[i], (b, *values[i].shape)) for i in free_at]
        key_axis = None if keys is None else 0
        jax.eval_shape(
            lambda c, s: jax.vmap(one, in_axes=(None, 0, 0, 0, key_axis, None, None))(
                None, c, x, y, keys, s, True
            ),
            copies,
            state,
        )
        rows = 1 if augment is None else augment.k
        for c in calls:
            if c.out.shape[0] != rows:
                raise Unsupported(f"layer {c.path}: leading axis {c.out.shape[0]} != {rows}.")

        def forward(zs, copies, state):
            return jax.vmap(one, in_axes=(0, 0, 0, 0, key_axis, None, None))(
                zs, copies, x, y, keys, state, False
            )

        zeros = [jnp.zeros((b, *c.out.shape), c.out.dtype) for c in calls]
        losses, backward, inputs = jax.vjp(forward, zeros, copies, state, has_aux=True)
        grads_out, free_grads, _ = backward(jnp.ones_like(losses))
        operands = [
            (call, (a.reshape(b * rows, *a.shape[2:]), jnp.zeros(k.shape, k.dtype)))
            for call, a, k in zip(calls, inputs, kernels, strict=True)
        ]
        grads_out = [d.reshape(b * rows, *d.shape[2:]) for d in grads_out]
        free_paths = [_path_of(leaves[i][0]) for i in free_at]
        return operands, grads_out, dict(zip(free_paths, free_grads, strict=True)), losses

    def free_paths_of(params, state) -> set[tuple]:
        """Parameter paths no tap covers: given to each example as its own copy."""
        model = nnx.merge(graphdef, params, *([] if state is None else [state]))
        covered = _install_taps(model, [], None, None)  # the taps are never called here
        return {_path_of(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(params)} - covered

    def clipped_grad(params, x, y, weights_fn, state=None, keys=None):
        b = x.shape[0]
        if augment is not None and keys is None:
            raise ToolkitError("augmentation multiplicity needs each example's key (keys=).")
        free = free_paths_of(params, state)
        if free or keys is not None:
            operands, grads_out, free_grads, losses = per_example_forward(
                params, state, x, y, keys, free
            )
        else:
            operands, grads_out, free_grads, losses = batched_forward(params, state, x, y)
        by_path = {_path_of(kp): v for kp, v in jax.tree_util.tree_leaves_with_path(params)}
        layer_of = {
            _path_of(kp): clip_lib.layer_of(kp)
            for kp, _ in jax.tree_util.tree_leaves_with_path(params)
        }

        # Norms and sums in full float32 precision on every backend (no TF32 on GPU): the
        # clip bound holds only if each norm matches the gradient it scales to rounding.
        with jax.default_matmul_precision("highest"):
            sq = jnp.zeros(b, jnp.float32)  # the whole gradient's squared norm
            sq_layers = {}  # layer name -> (B,) squared norm of its parameters' gradients
            layers = []
            for (call, (a, kernel)), d in zip(operands, grads_out, strict=True):
                raw = by_path[(*call.path, call.param)]
                t = rules.positions(call, d, b)
                per_example = None
                if call.transform is not None:  # J^T of each example's gradient w.r.t. W
                    _, to_raw = jax.vjp(call.transform, raw)
                    per_example = jax.vmap(lambda g: to_raw(g)[0])(  # noqa: B023
                        rules.per_example_grads(call, a, d, b, kernel.shape)
                    )
                elif rules.use_ghost(norm_rule, t, call.k, call.o):
                    sq_part = rules.ghost_sq_norms(call, a, d, b, kernel.shape)
                else:
                    per_example = rules.per_example_grads(call, a, d, b, kernel.shape)
                if per_example is not None:
                    sq_part = jnp.sum(jnp.square(per_example.reshape(b, -1)), axis=1)
                bias = None
                if call.bias:
                    bias = rules.bias_grads(d, b, by_path[(*call.path, "bias")].shape)
                    sq_bias = jnp.sum(jnp.square(bias.reshape(b, -1)), axis=1)
                    sq = sq + sq_part  # kernel, then bias: one rounding order on every path
                    sq_part = sq_part + sq_bias
                    sq = sq + sq_bias
                else:
                    sq = sq + sq_part
                sq_layers[call.name] = sq_layers.get(call.name, 0.0) + sq_part
                layers.append((call, a, kernel, d, per_example, bias))
            for path, g in free_grads.items():
                part = jnp.sum(jnp.square(g.reshape(b, -1)), axis=1)
                sq += part
                sq_layers[layer_of[path]] = sq_layers.get(layer_of[path], 0.0) + part

            norms = jnp.sqrt(sq)
            if per_layer:
                weights = weights_fn({name: jnp.sqrt(v) for name, v in sq_layers.items()})
            else:
                weights = dict.fromkeys(sq_layers, weights_fn(norms))

            def rows(v, w):  # zero dropped rows before any product: 0 * inf = NaN
                return jnp.where((w != 0).reshape((-1,) + (1,) * (v.ndim - 1)), v, 0)

            def scaled(v, w):
                return rows(v, w) * w.reshape((-1,) + (1,) * (v.ndim - 1))

            def tensordot(w, v):
                return jnp.tensordot(w, rows(v, w), axes=1)

            sums = {}
            for call, a, kernel, d, per_example, bias in layers:
                w = weights[call.name]
                if per_example is not None:
                    g = tensordot(w, per_example)
                else:
                    w_rows = jnp.repeat(w, a.shape[0] // b)  # each example's rows
                    g = rules.weighted_sum(call, rows(a, w_rows), scaled(d, w_rows), kernel)
                sums[(*call.path, call.param)] = g
                if bias is not None:
                    sums[(*call.path, "bias")] = tensordot(w, bias)
            for path, g in free_grads.items():
                sums[path] = tensordot(weights[layer_of[path]], g)

        def leaf(kp, p):
            return sums[_path_of(kp)].astype(p.dtype)

        return jax.tree_util.tree_map_with_path(leaf, params), norms, losses

    return clipped_grad
