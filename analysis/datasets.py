"""Small synthetic binary datasets for Theorem 1, every ||z_i|| <= 1.

Four kinds, all drawn from one explicit `numpy.random.Generator` seeded with
`seed` (numpy rather than `jax.random`: threefry compiles once per shape, about
0.25 s each on a 2-core CPU, which the `bound-check` time budget cannot spare):

- `separable`: z uniform in the unit ball, y = sign(<w, z>) for a hidden unit w.
- `noisy`: as `separable`, with each label flipped with probability 0.2.
- `outliers`: as `separable`, with the last 10% of the points replaced by
  norm-1 points near -w labelled +1 (grossly misclassified by w).
- `spread`: directions uniform, norms log-uniform in [1e-3, 1], labels from w
  flipped with probability 0.1, so per-example gradient norms span 3 decades.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DATASET_KINDS: tuple[str, ...] = ("separable", "noisy", "outliers", "spread")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Features `z` (n, d) float64 with ||z_i|| <= 1 and labels `y` (n,) in {-1, +1}."""

    name: str
    z: np.ndarray
    y: np.ndarray

    @property
    def max_norm(self) -> float:
        return float(np.max(np.linalg.norm(self.z, axis=1)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def _flip(rng: np.random.Generator, y: np.ndarray, prob: float) -> np.ndarray:
    return np.where(rng.uniform(size=y.shape) < prob, -y, y)


def make_datasets(*, n: int, dim: int, seed: int) -> tuple[Dataset, ...]:
    """The four datasets of the module docstring, each with n points in R^dim."""
    rng = np.random.default_rng([seed, 0])
    w = _unit(rng.normal(size=dim))
    directions = _unit(rng.normal(size=(n, dim)))
    ball = directions * rng.uniform(size=(n, 1)) ** (1.0 / dim)
    y_clean = _sign(ball @ w)

    n_out = max(1, n // 10)
    z_out, y_out = ball.copy(), y_clean.copy()
    z_out[n - n_out :] = _unit(-w + 0.3 * rng.normal(size=(n_out, dim)) / np.sqrt(dim))
    y_out[n - n_out :] = 1.0

    spread = directions * 10.0 ** rng.uniform(-3.0, 0.0, size=(n, 1))
    raw = {
        "separable": (ball, y_clean),
        "noisy": (ball, _flip(rng, y_clean, 0.2)),
        "outliers": (z_out, y_out),
        "spread": (spread, _flip(rng, _sign(spread @ w), 0.1)),
    }
    out = []
    for name in DATASET_KINDS:
        z, y = raw[name]
        # A row normalised to norm 1 can land an ulp above it: pull it back to ~1.
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1.0)
        out.append(Dataset(name=name, z=z, y=y))
    return tuple(out)
