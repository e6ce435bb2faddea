"""Does one example's gradient depend on that example alone? Checks run before training.

The sensitivity bound of DP-SGD needs, for every example e, that e's clipped gradient is
the same whichever other examples share its batch, however many there are, and whichever
row, micro-batch or device it lands in. Two checks test that on real examples, at the
micro-batch size the loop will run (`rows`), on every row
(`toolkit.grads._per_example.ClippedGradFn.checked` runs both). The batches compared, of the
first `rows` training examples A = [x_0 .. x_{P-1}]:

- A with its second half replaced by other examples, and with its first half replaced;
- A with its second half replaced by copies of x_0 (the loop's padding rows are copies);
- A in reverse order (`keyed_by_example` only).

`rows_interact`: the model as written, in training mode, one forward pass per batch. The
loss of every row kept in its slot, and example 0's loss gradient, must not change. (Rows
keep their slots here because a model's own dropout masks are drawn for the batch as a
whole.) A layer with batch statistics in training mode fails it whatever it stores them
in, as does any layer that moves values between rows; the innermost layer whose kept
output rows move while its kept input rows do not is named.

`keyed_by_example`: the per-example implementation that will run, with the examples'
own keys (`toolkit.privacy.randomness`), no clipping. Every example's gradient norm and loss
must be the same wherever it sits, the sum over A must not change when A is reversed,
and the sum over the kept half must not change when the other half is replaced.
Randomness tied to the row slot fails it.

Both are tests on P examples and one draw of the randomness, not proofs: a model that
mixes rows only for some inputs, or draws randomness outside its state's PRNG keys in a
way that happens to agree here, can pass them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.privacy import randomness

# A per-example model gives each row's loss and gradient bit for bit in every batch (the
# other rows enter only as exact zeros); 1e-4 only absorbs a backend that reorders a sum.
# Rows that interact move them by O(1).
RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class _Batch:
    idx: np.ndarray  # indices into x, one per row
    kept: np.ndarray  # bool: the rows that hold A's example of the same slot


def _batches(n: int, rows: int) -> tuple[np.ndarray, list[_Batch]]:
    """A's indices and the slot-keeping variants of it (n >= rows >= 1)."""
    a = np.arange(rows)
    half = np.arange(rows) < (rows + 1) // 2
    others = (rows + np.arange(rows)) % n  # other examples where there are (else repeats)
    variants = [
        _Batch(np.where(half, a, others), half),
        _Batch(np.where(half, others, a), ~half),
        _Batch(np.where(half, a, 0), half),  # padding: copies of example 0
    ]
    return a, [v for v in variants if not np.array_equal(v.idx, a)]


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(tree)])


def _close(a, b, scale: float | None = None) -> bool:
    """Equal to RTOL of `scale` (default ||a||), with non-finite entries in the same places."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(a)
    if not np.array_equal(finite, np.isfinite(b)):
        return False
    a, b = a[finite], b[finite]
    scale = float(np.linalg.norm(a)) if scale is None else scale
    return bool(np.linalg.norm(a - b) <= RTOL * scale + 1e-30)


def rows_interact(
    graphdef: nnx.GraphDef, loss_fn: Callable, params: Any, state: Any, x, y, *, rows: int = 4
) -> str | None:
    """None if each row's training-mode loss (and row 0's gradient) ignores the other rows;
    otherwise where they interact."""
    rows = min(rows, len(x))
    x, y = _head(x, 2 * rows), _head(y, 2 * rows)
    a, variants = _batches(len(x), rows)
    probe = _probe_fn(graphdef, loss_fn)
    ref_loss, ref_grad = probe(params, state, x[a], y[a])
    ref_loss, ref_grad = np.asarray(ref_loss, np.float64), _flat(ref_grad)
    for v in variants:
        loss, grad = probe(params, state, x[v.idx], y[v.idx])
        k = v.kept
        same = _close(ref_loss[k], np.asarray(loss)[k])
        if k[0]:
            same = same and _close(ref_grad, _flat(grad))
        if not same:
            xa, xv = jnp.asarray(x[a]), jnp.asarray(x[v.idx])
            return _innermost_mover(graphdef, params, state, xa, xv, k)
    return None


def _head(a, k: int) -> np.ndarray:
    """The first `k` rows of `a` on the host: the batches below are cut from it by NumPy
    indexing (an eager gather on a device array compiles once per index shape and dtype)."""
    return np.asarray(a[:k] if len(a) > k else a)


def _cached(build: Callable) -> Callable:
    """`build(*key)`, cached per key; built afresh when the key cannot be hashed (a model
    with a dict attribute, a loss that is a mutable callable object)."""
    cached = functools.lru_cache(maxsize=16)(build)

    def get(*key):
        try:
            return cached(*key)
        except TypeError:  # unhashable: compile for this call only
            return build(*key)

    return get


@_cached
def _probe_fn(graphdef: nnx.GraphDef, loss_fn: Callable) -> Callable:
    """Jitted `(params, state, x, y) -> (losses, d losses[0] / d params)`, one per model and
    loss, so that runs of the same model (and shapes) compile the check once."""

    @jax.jit
    def probe(p, s, xb, yb):
        # The state is a primal of the vjp, not a constant: NNX mutates its counters
        # (dropout's RngCount) only at the trace level they were merged at.
        def losses(p, s):
            return loss_fn(nnx.merge(graphdef, p, *([] if s is None else [s]))(xb), yb)

        out, back = jax.vjp(losses, p, s)
        return out, back(jnp.zeros_like(out).at[0].set(1.0))[0]

    return probe


@_cached
def _keyed_fn(raw: Any) -> Callable:
    """Jitted `(params, state, x, y, ids, mask) -> (clipped sum, norms, losses)` of a
    `ClippedGradFn`, one per function (its model, loss and path). The examples' keys are
    derived inside, from their identities `ids` and a fixed stream: one compilation."""

    @jax.jit
    def run(params, state, xb, yb, ids, mask):
        keys = randomness.example_keys(randomness.example_stream(jax.random.key(0)), 0, ids)
        out = raw(params, state, xb, yb, mask, keys)
        return out.clipped_sum, out.norms, out.losses

    return run


def keyed_by_example(clip: Any, params: Any, state: Any, x, y, *, rows: int = 4) -> bool:
    """Whether `clip` (a `ClippedGradFn`) gives every example the same gradient everywhere."""
    rows = min(rows, len(x))
    x, y = _head(x, 2 * rows), _head(y, 2 * rows)
    raw = dataclasses.replace(clip, clipping="flat", clip_norm=math.inf)
    ids = randomness.example_ids(x, y)
    run = _keyed_fn(raw)

    def call(idx, mask):
        s, n, loss = run(params, state, x[idx], y[idx], ids[idx], mask)
        return _flat(s), np.asarray(n, np.float64), np.asarray(loss, np.float64)

    a, variants = _batches(len(x), rows)
    everything = np.ones(rows, bool)
    ref_sum, ref_norms, ref_loss = call(a, everything)
    scale = float(np.sum(ref_norms[np.isfinite(ref_norms)]))  # what rounding is relative to
    reverse = a[::-1]
    total, norms, loss = call(reverse, everything)
    if not (
        _close(ref_norms, norms[::-1])
        and _close(ref_loss, loss[::-1])
        and _close(ref_sum, total, scale)
    ):
        return False
    parts: dict[bytes, np.ndarray] = {}  # the sum over A's kept rows, per kept half
    for v in variants:
        k = v.kept
        if k.tobytes() not in parts:
            parts[k.tobytes()] = call(a, k)[0]
        part = parts[k.tobytes()]
        total, norms, loss = call(v.idx, k)
        if not (
            _close(ref_norms[k], norms[k])
            and _close(ref_loss[k], loss[k])
            and _close(part, total, scale)
        ):
            return False
    return True


def _innermost_mover(graphdef, params, state, xa, xb, kept: np.ndarray) -> str:
    """The deepest sub-module whose kept output rows differ between `xa` and `xb` while its
    kept input rows do not (eager, on fresh copies of the model: the same PRNG draws)."""

    def fresh():
        return nnx.merge(graphdef, params, *([] if state is None else [state]))

    first, second = _record_calls(fresh(), xa), _record_calls(fresh(), xb)
    movers = [
        path
        for path, (inp, out) in first.items()
        if path in second
        and _rows_equal(inp, second[path][0], kept)
        and not _rows_equal(out, second[path][1], kept)
    ]
    if not movers:
        return "the model's own __call__ or its loss_fn"
    path = max(movers, key=len)
    module = dict(nnx.iter_modules(fresh()))[path]
    return f"layer {'/'.join(map(str, path))} ({type(module).__name__})"


def _record_calls(model: nnx.Module, xb) -> dict[tuple, tuple[Any, Any]]:
    """{path: (first input, output)} of each sub-module's first call during `model(xb)`."""
    modules = [(path, m) for path, m in nnx.iter_modules(model) if path]
    paths = {id(m): path for path, m in modules}
    seen: dict[tuple, tuple[Any, Any]] = {}
    classes = {type(m) for _, m in modules}
    own = {cls: cls.__dict__.get("__call__") for cls in classes}

    def wrap(call):
        def recorded(self, *args, **kwargs):
            out = call(self, *args, **kwargs)
            path = paths.get(id(self))
            if path is not None and args and path not in seen:
                seen[path] = (args[0], out)
            return out

        return recorded

    try:
        for cls in classes:
            cls.__call__ = wrap(cls.__call__)
        model(xb)
    finally:
        for cls, call in own.items():
            if call is None:
                del cls.__call__
            else:
                cls.__call__ = call
    return seen


def _rows_equal(a, b, kept: np.ndarray) -> bool:
    """Whether the `kept` rows of two arrays agree (True for anything not batch-shaped)."""
    arrays = (jax.Array, np.ndarray)
    if not (isinstance(a, arrays) and isinstance(b, arrays)):
        return True
    if a.shape != b.shape or a.ndim == 0 or a.shape[0] != len(kept):
        return True
    return _close(np.asarray(a)[kept], np.asarray(b)[kept])
