"""Convolution gradients per example, without a patch tensor where it can be avoided.

Channels-last (N, spatial..., C) inputs and (spatial..., I, O) kernels, the layout
`nnx.Conv` uses. At stride 1 each kernel offset is a constant shift of the flattened
input, so an example's kernel gradient is one slice and one batched matmul per offset;
a strided convolution is first rewritten as a stride-1 one on s x s space-to-depth
blocks; only a strided and dilated one takes explicit patches. `patches` also feeds the
ghost norms' Gram matrices (`toolkit.grads._layer_rules`).
"""

from __future__ import annotations

import inspect
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

SIGNATURE = inspect.signature(lax.conv_general_dilated)
# Below this many (offset, channel) columns, a convolution's per-example gradients come
# from one matmul over concatenated shifted inputs rather than one tiny matmul per offset.
_FUSE_OFFSETS_UP_TO = 256


def canonical_dims(ndim: int) -> lax.ConvDimensionNumbers:
    """Channels-last (N, spatial..., C) / (spatial..., I, O), the layout nnx.Conv uses."""
    spatial = tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, ndim - 1, *spatial),
        rhs_spec=(ndim - 1, ndim - 2, *range(ndim - 2)),
        out_spec=(0, ndim - 1, *spatial),
    )


def unsupported_reason(ndim: int, args) -> str | None:
    """Why these `conv_general_dilated` arguments are outside this module's scope, or None."""
    n = ndim - 2
    if tuple(args.get("lhs_dilation") or (1,) * n) != (1,) * n:
        return "input dilation is not supported"
    if args.get("feature_group_count", 1) != 1 or args.get("batch_group_count", 1) != 1:
        return "grouped convolutions are not supported"
    dims = args.get("dimension_numbers")
    if not isinstance(dims, lax.ConvDimensionNumbers) or dims != canonical_dims(ndim):
        return "only channels-last convolutions are supported"
    return None


def _padding(x: jax.Array, kernel_shape, args) -> tuple[list, tuple, tuple]:
    """Explicit (lo, hi) padding, strides and kernel dilation of a channels-last convolution."""
    spatial = kernel_shape[:-2]
    strides = tuple(args["window_strides"])
    dilation = tuple(args.get("rhs_dilation") or (1,) * len(spatial))
    padding = args["padding"]
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(spatial, dilation)]
        padding = lax.padtype_to_pads(x.shape[1:-1], dilated, strides, padding)
    return [tuple(p) for p in padding], strides, dilation


def patches(x: jax.Array, kernel_shape, args) -> jax.Array:
    """(B, prod(kernel spatial), T, C) input patches, offsets ordered like the kernel.

    Strided slices, pure data movement: `lax.conv_general_dilated_patches` would
    cost prod(kernel) * C times more multiply-adds than the convolution itself.
    Offsets lead and channels trail so that each slice is written contiguously.
    """
    spatial = kernel_shape[:-2]
    padding, strides, dilation = _padding(x, kernel_shape, args)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    out = [
        (s - (k - 1) * d - 1) // st + 1
        for s, k, d, st in zip(x.shape[1:-1], spatial, dilation, strides)
    ]
    cols = []
    for offset in itertools.product(*(range(k) for k in spatial)):
        start = [0, *(o * d for o, d in zip(offset, dilation)), 0]
        limit = [
            x.shape[0],
            *(s + (m - 1) * st + 1 for s, m, st in zip(start[1:], out, strides)),
            x.shape[-1],
        ]
        cols.append(
            lax.slice(x, start, limit, (1, *strides, 1)).reshape(x.shape[0], -1, x.shape[-1])
        )
    return jnp.stack(cols, axis=1)


def grads_stride1(x: jax.Array, d: jax.Array, kernel_shape, args) -> jax.Array:
    """Per-example kernel gradients (B, *kernel_shape) of a stride-1 convolution, no patches.

    With the padded input and the output gradient both flattened over space in the
    padded input's row-major order (d zero-padded to the input's trailing widths),
    kernel offset (i, j, ...) becomes a constant shift of the flat index, so each
    offset is one contiguous slice of x and one batched matmul with d: the same
    multiply-adds as the batched weight gradient, and no (B, T, K) patch tensor.
    """
    spatial = kernel_shape[:-2]
    padding, _, dilation = _padding(x, kernel_shape, args)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    b, c, o = x.shape[0], x.shape[-1], d.shape[-1]
    padded = x.shape[1:-1]
    d = jnp.pad(
        d, [(0, 0), (0, 0), *((0, p - n) for p, n in zip(padded[1:], d.shape[2:-1])), (0, 0)]
    )
    d = d.reshape(b, -1, o)
    place = [math.prod(padded[i + 1 :]) for i in range(len(padded))]  # flat stride of each dim
    shifts = [
        sum(i * dl * pl for i, dl, pl in zip(offset, dilation, place))
        for offset in itertools.product(*(range(k) for k in spatial))
    ]
    length = d.shape[1]
    tail = max(0, max(shifts) + length - math.prod(padded))  # room for the last shift
    x = jnp.pad(x.reshape(b, -1, c), [(0, 0), (0, tail), (0, 0)])
    # One physical transpose of d, so that every offset is a plain (O, L) @ (L, C) matmul;
    # without the barrier XLA folds the transpose into each dot as a slower transposed GEMM.
    d_t = lax.optimization_barrier(jnp.swapaxes(d, 1, 2))
    if c * len(shifts) <= _FUSE_OFFSETS_UP_TO:  # few channels: one matmul for all offsets
        cols = jnp.concatenate([x[:, s : s + length] for s in shifts], axis=-1)
        grads = jnp.matmul(d_t, cols).reshape(b, o, len(shifts), c).swapaxes(1, 2)
    else:
        grads = jnp.stack([jnp.matmul(d_t, x[:, s : s + length]) for s in shifts], axis=1)
    return jnp.swapaxes(grads, 2, 3).reshape(b, *kernel_shape)


def grads_strided(x: jax.Array, d: jax.Array, kernel_shape, args) -> jax.Array:
    """Per-example kernel gradients of a strided, undilated convolution via space-to-depth.

    With x regrouped into s x s blocks (channels (a, b, c)), kernel tap (s i' + a, s j' + b)
    of the stride-s convolution is tap (i', j') of a stride-1 convolution on the blocks,
    whose gradients `grads_stride1` computes without a patch tensor.
    """
    spatial, (c, o) = kernel_shape[:-2], kernel_shape[-2:]
    padding, strides, _ = _padding(x, kernel_shape, args)
    small = [-(-k // st) for k, st in zip(spatial, strides)]  # kernel taps per block
    out = d.shape[1:-1]
    size = [
        max(-(-(n + lo + hi) // st), m - 1 + k)
        for n, (lo, hi), st, m, k in zip(x.shape[1:-1], padding, strides, out, small)
    ]
    x = jnp.pad(
        x,
        [
            (0, 0),
            *(
                (lo, sz * st - n - lo)
                for n, (lo, _), sz, st in zip(x.shape[1:-1], padding, size, strides)
            ),
            (0, 0),
        ],
    )
    b, n = x.shape[0], len(spatial)
    x = x.reshape(b, *(v for sz, st in zip(size, strides) for v in (sz, st)), c)
    x = x.transpose(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    x = x.reshape(b, *size, -1)  # (B, blocks..., s..., C) -> channels (a, b, c)
    unit = {"window_strides": (1,) * n, "padding": [(0, 0)] * n, "rhs_dilation": (1,) * n}
    g = grads_stride1(x, d, (*small, math.prod(strides) * c, o), unit)
    g = g.reshape(b, *small, *strides, c, o)
    g = g.transpose(0, *(v for i in range(n) for v in (1 + i, 1 + n + i)), 2 * n + 1, 2 * n + 2)
    g = g.reshape(b, *(k * st for k, st in zip(small, strides)), c, o)
    return g[(slice(None), *(slice(0, k) for k in spatial))]


def per_example(x: jax.Array, d: jax.Array, kernel_shape, args) -> jax.Array:
    """Every row's kernel gradient, shape (N, *kernel_shape), for input x and output gradient d."""
    n = len(kernel_shape) - 2
    if tuple(args["window_strides"]) == (1,) * n:
        return grads_stride1(x, d, kernel_shape, args)
    if tuple(args.get("rhs_dilation") or (1,) * n) == (1,) * n:
        return grads_strided(x, d, kernel_shape, args)
    b = x.shape[0]  # strided and dilated: explicit patches
    p = patches(x, kernel_shape, args)
    return jnp.einsum("bktc,bto->bkco", p, d.reshape(b, -1, d.shape[-1])).reshape(b, *kernel_shape)
