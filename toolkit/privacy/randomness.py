"""Per-example randomness, keyed by the example: never by its row slot, micro-batch or device.

Every random quantity in one example's gradient (dropout masks, augmult views, any PRNG
stream in the model's state) at step t is a function of the example's key

    k_i = fold_in(fold_in(S, t), id_i),      S = fold_in(run key, EXAMPLE_STREAM)

where the run key is the secret noise key (`toolkit.privacy._privatizer`), t the step and id_i the
example's identity: a 64-bit hash of its input's and label's bytes (`example_ids`). Not
its index in the training arrays: removing example j renumbers every later example,
while their contents, hence their keys, stay. So removing an example moves the others
into other rows, micro-batches and devices but leaves their keys and their gradients
unchanged, and the clipped sum moves by at most one example's clipped gradient for every
draw of the secret key, which is what the sensitivity bound needs (not only in
distribution). Two identical examples share a key, which keeps that true. A padding row
is a copy of example 0 with its key; it is masked out of the sum.

The model's own keys still count: `fold_state` folds the words of k_i into every PRNG key
of the model's state, so each `nnx.Rngs` stream stays distinct and another `nnx.Rngs`
seed gives other masks. That seed is not secret (`nnx.Rngs(0)`); S is.

Not seen here: randomness a model draws from anything but typed PRNG keys in its state
(raw uint32 keys, numpy, a global). `toolkit.grads._per_example.ClippedGradFn.checked` tests the
result on real examples in training mode, but only as a test.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The example stream's tag under the run key. The privatizer folds its int32 step counter
# into the same key; that counter never reaches this value.
EXAMPLE_STREAM = 0xFFFFFFFF
_VIEWS, _MODEL = 0, 1  # sub-streams of one example's key


def example_stream(run_key: jax.Array) -> jax.Array:
    """S: the key every example's randomness derives from (secret as the run key is)."""
    return jax.random.fold_in(run_key, EXAMPLE_STREAM)


def example_ids(x, y) -> np.ndarray:
    """(N, 2) uint32: each example's identity, the BLAKE2b-64 hash of its input and label."""
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    digests = b"".join(
        hashlib.blake2b(xi.tobytes() + yi.tobytes(), digest_size=8).digest() for xi, yi in zip(x, y)
    )
    return np.frombuffer(digests, dtype="<u4").reshape(len(y), 2).copy()


def example_keys(stream: jax.Array, step: jax.Array | int, ids: jax.Array) -> jax.Array:
    """(B,) keys k_i of the examples with identities `ids` (B, 2) at `step`. Traceable."""
    step_key = jax.random.fold_in(stream, jnp.asarray(step, jnp.uint32))

    def key(words):
        return jax.random.fold_in(jax.random.fold_in(step_key, words[0]), words[1])

    return jax.vmap(key)(ids)


def view_key(key: jax.Array) -> jax.Array:
    """The example's augmentation sub-key."""
    return jax.random.fold_in(key, _VIEWS)


def is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def has_keys(state: Any) -> bool:
    """Whether the model state holds typed PRNG keys (dropout's `nnx.Rngs` streams)."""
    return state is not None and any(is_key(x) for x in jax.tree.leaves(state))


def fold_state(state: Any, key: jax.Array | None) -> Any:
    """A fresh copy of `state`, the example key's model sub-key folded into its PRNG keys.

    Always a new tree (new `nnx.Variable` objects): NNX lets a model mutate its variables
    (dropout's RngCount, a user's counter) only at the trace level they were made at.
    """
    if state is None:
        return None
    words = None
    if key is not None and has_keys(state):
        words = jax.random.key_data(jax.random.fold_in(key, _MODEL)).reshape(-1)

    def fold(x):
        if words is not None and is_key(x):
            for i in range(words.shape[0]):
                x = jax.random.fold_in(x, words[i])
        return x

    return jax.tree.map(fold, state)
