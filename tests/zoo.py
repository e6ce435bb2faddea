"""Models that users write, small enough to compile in seconds: the neighbour test's zoo,
and the factories, models and losses of the run tests (`tiny_mlp`, `Logit`, `nan_loss`).

Each entry of `ZOO` is `(make_model, make_data)`: `make_model()` builds the model from
fixed seeds (`nnx.Rngs(0)`, as the README example does: the model's own key is not
secret), `make_data(n)` gives `(x, y)` with integer labels in [0, K). `BatchStandardize`
mixes the examples of a batch in training mode only, so it must be refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.nn import ActivationSpec, WSConv, build_model

K = 3  # classes


def vectors(n: int, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32) * 2, rng.integers(0, K, n).astype(np.int32)


def images(n: int, side: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, side, side, 1)).astype(np.float32)
    return x, rng.integers(0, K, n).astype(np.int32)


def digits(n: int):
    """28 x 28 images with 10 classes: the paper CNN's input."""
    rng = np.random.default_rng(0)
    return rng.uniform(size=(n, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, n).astype(
        np.int32
    )


def tokens(n: int, length: int = 5, vocab: int = 20):
    rng = np.random.default_rng(0)
    return rng.integers(0, vocab, (n, length)).astype(np.int32), rng.integers(0, K, n).astype(
        np.int32
    )


def sequences(n: int, length: int = 5, d: int = 8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, length, d)).astype(np.float32), rng.integers(0, K, n).astype(
        np.int32
    )


class Mlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.fc1, self.fc2 = nnx.Linear(d, 16, rngs=rngs), nnx.Linear(16, K, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.fc1(x)))


class DropoutMlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.fc1, self.fc2 = nnx.Linear(d, 32, rngs=rngs), nnx.Linear(32, K, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(jnp.tanh(self.fc1(x))))


class LayerNormMlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.fc1, self.fc2 = nnx.Linear(d, 16, rngs=rngs), nnx.Linear(16, K, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.norm(self.fc1(x))))


class GroupNormCnn(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.norm = nnx.GroupNorm(4, num_groups=2, rngs=rngs)
        self.fc = nnx.Linear(4, K, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(jnp.tanh(self.norm(self.conv(x))), axis=(1, 2)))


class WSCnn(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = WSConv(1, 4, 3, 1, "SAME", rngs)
        self.fc = nnx.Linear(4, K, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(jnp.tanh(self.conv(x)), axis=(1, 2)))


class SmallCnn(nnx.Module):
    """Conv and Linear only (book-keeping serves it); the augmult entry's model."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, K, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(jnp.tanh(self.conv(x)), axis=(1, 2)))


class Embedder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, vocab: int = 20):
        self.embed = nnx.Embed(vocab, 8, rngs=rngs)
        self.fc = nnx.Linear(8, K, rngs=rngs)

    def __call__(self, tokens):
        return self.fc(jnp.mean(self.embed(tokens), axis=1))


class Attention(nnx.Module):
    """Self-attention over a sequence, with dropout on the attention weights."""

    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.attn = nnx.MultiHeadAttention(
            num_heads=2,
            in_features=d,
            dropout_rate=0.3,
            broadcast_dropout=False,
            deterministic=False,
            decode=False,
            rngs=rngs,
        )
        self.fc = nnx.Linear(d, K, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(self.attn(x), axis=1))


class Buffer(nnx.Variable):
    """User-defined non-trainable state."""


class WithBuffer(nnx.Module):
    """A fixed random projection and a call counter in custom `nnx.Variable`s."""

    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.proj = Buffer(jax.random.normal(rngs.params(), (d, d)) / np.sqrt(d))
        self.calls = Buffer(jnp.zeros((), jnp.int32))
        self.fc = nnx.Linear(d, K, rngs=rngs)

    def __call__(self, x):
        self.calls[...] += 1
        return self.fc(jnp.tanh(x @ self.proj[...]))


class BatchStandardize(nnx.Module):
    """Standardises features with the batch's statistics unless `use_running_average`.

    Parameter-free, and its running mean is an `nnx.Variable`, not `nnx.BatchStat`: in
    evaluation mode it is per-example, in training mode it mixes the batch.
    """

    def __init__(self, d: int):
        self.use_running_average = False
        self.mean = nnx.Variable(jnp.zeros(d))

    def __call__(self, x):
        if self.use_running_average:
            return x - self.mean[...][None]
        mean, std = jnp.mean(x, axis=0, keepdims=True), jnp.std(x, axis=0, keepdims=True)
        return (x - mean) / (std + 1e-3)


class BatchMixing(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.fc1, self.fc2 = nnx.Linear(d, 16, rngs=rngs), nnx.Linear(16, K, rngs=rngs)
        self.stand = BatchStandardize(16)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.stand(self.fc1(x))))


class SizeGatedStats(nnx.Module):
    """Batch statistics only for batches of 5 rows or more: per-example on small ones."""

    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.fc1, self.fc2 = nnx.Linear(d, 16, rngs=rngs), nnx.Linear(16, K, rngs=rngs)

    def __call__(self, x):
        h = self.fc1(x)
        if h.shape[0] >= 5:
            h = (h - jnp.mean(h, 0, keepdims=True)) / (jnp.std(h, 0, keepdims=True) + 1e-3)
        return self.fc2(jnp.tanh(h))


class RowShift(nnx.Module):
    """Adds row i+3's (stop-gradient) activations to row i: a forward-only leak, late rows."""

    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.fc1, self.fc2 = nnx.Linear(d, 16, rngs=rngs), nnx.Linear(16, K, rngs=rngs)

    def __call__(self, x):
        h = self.fc1(x)
        if h.shape[0] > 3:
            h = h + jax.lax.stop_gradient(jnp.roll(h, 3, axis=0))
        return self.fc2(jnp.tanh(h))


class TinyMlp(nnx.Module):
    """784 inputs (a 28 x 28 x 1 image, flattened) -> 8 tanh units -> 10 class logits."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8):
        self.fc1, self.fc2 = nnx.Linear(784, width, rngs=rngs), nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.fc1(x.reshape(x.shape[0], -1))))


def tiny_mlp(*, rngs: nnx.Rngs) -> TinyMlp:
    """A model factory with an import path: a run records it as "tests.zoo:tiny_mlp"."""
    return TinyMlp(rngs)


class Logit(nnx.Module):
    """One logit per example, shape (B, 1): a binary classifier."""

    def __init__(self, rngs: nnx.Rngs, d: int = 8):
        self.fc = nnx.Linear(d, 1, rngs=rngs)

    def __call__(self, x):
        return self.fc(x)


def nan_loss(outputs, labels):
    """A loss that is never finite: a run with it diverges in its first epoch."""
    del labels
    return jnp.full(outputs.shape[:1], jnp.nan, outputs.dtype)


ZOO = {
    "mlp": (lambda: Mlp(nnx.Rngs(0)), vectors),
    "paper-cnn": (lambda: build_model("mnist", ActivationSpec("tanh"), seed=0), digits),
    "dropout": (lambda: DropoutMlp(nnx.Rngs(0)), vectors),
    "layernorm": (lambda: LayerNormMlp(nnx.Rngs(0)), vectors),
    "groupnorm": (lambda: GroupNormCnn(nnx.Rngs(0)), images),
    "ws-conv": (lambda: WSCnn(nnx.Rngs(0)), images),
    "embedding": (lambda: Embedder(nnx.Rngs(0)), tokens),
    "attention": (lambda: Attention(nnx.Rngs(0)), sequences),
    "augmult": (lambda: SmallCnn(nnx.Rngs(0)), images),
    "custom-variable": (lambda: WithBuffer(nnx.Rngs(0)), vectors),
}
