"""The binary datasets Theorem 1 is checked on, every ||z_i|| <= 1: synthetic ones, or yours.

Four kinds, all drawn from one explicit `numpy.random.Generator` seeded with
`seed` (numpy rather than `jax.random`: threefry compiles once per shape, about
0.25 s each on a 2-core CPU, which the `bound-check` time budget cannot spare):

- `separable`: z uniform in the unit ball, y = sign(<w, z>) for a hidden unit w.
- `noisy`: as `separable`, with each label flipped with probability 0.2.
- `outliers`: as `separable`, with the last 10% of the points replaced by
  norm-1 points near -w labelled +1 (grossly misclassified by w).
- `spread`: directions uniform, norms log-uniform in [1e-3, 1], labels from w
  flipped with probability 0.1, so per-example gradient norms span 3 decades.

Your own data (`from_arrays`, `from_file`): labels {0, 1} or {-1, +1}, mapped to
{-1, +1} (0 -> -1); each example flattened to a float64 vector x_i; every vector
divided by the largest row norm, z_i = x_i / max_j ||x_j||, so max ||z_i|| = 1 as
Theorem 1 requires. One common factor keeps the geometry: angles, the ratios of the
norms and the classes' separation are those of x, and by the scale invariance
(`analysis.invariance`) the results at inverse temperature T on z are those at
T / max_j ||x_j|| on x. No centring, no per-feature scaling, no bias feature.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.base import ToolkitError
from toolkit.data import load_arrays

DATASET_KINDS: tuple[str, ...] = ("separable", "noisy", "outliers", "spread")

# How `from_arrays` makes ||z_i|| <= 1, as the record states it.
SCALING = (
    "z_i = x_i / max_j ||x_j|| (x_i the flattened example): max ||z_i|| = 1, angles and "
    "ratios of norms unchanged"
)
# The binary label encodings accepted, and the {-1, +1} label each value becomes.
LABEL_ENCODINGS: tuple[dict[int, int], ...] = ({0: -1, 1: 1}, {-1: -1, 1: 1})


@dataclasses.dataclass(frozen=True)
class Preparation:
    """How a user's arrays became a `Dataset` (`from_arrays`).

    Attributes:
      source: the file read, or "arrays" for arrays passed in.
      example_shape: one example's shape before flattening.
      scale: max_i ||x_i||, the one factor every flattened example was divided by.
      label_map: (label found, label used in {-1, +1}) pairs.
      ignored: arrays of the file not used (a held-out split: Theorem 1 is about the
        training objective).
    """

    source: str
    example_shape: tuple[int, ...]
    scale: float
    label_map: tuple[tuple[int, int], ...]
    ignored: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Features `z` (n, d) float64 with ||z_i|| <= 1 and labels `y` (n,) in {-1, +1}.

    `prepared` records how a user's data became `z` and `y`; None for the synthetic sets.
    """

    name: str
    z: np.ndarray
    y: np.ndarray
    prepared: Preparation | None = None

    @property
    def max_norm(self) -> float:
        return float(np.max(np.linalg.norm(self.z, axis=1)))

    def describe(self) -> dict[str, Any]:
        """What the JSON record says about this dataset: source, n, d, scaling, labels."""
        out: dict[str, Any] = {
            "name": self.name,
            "n": int(self.z.shape[0]),
            "d": int(self.z.shape[1]),
            "max_norm": self.max_norm,
            "class_counts": {"-1": int(np.sum(self.y < 0)), "+1": int(np.sum(self.y > 0))},
        }
        p = self.prepared
        if p is None:
            return {**out, "source": "synthetic (analysis.datasets.make_datasets)"}
        return {
            **out,
            "source": p.source,
            "example_shape": list(p.example_shape),
            "scaling": SCALING,
            "scale": p.scale,
            "label_map": {str(k): v for k, v in p.label_map},
            "ignored": list(p.ignored),
        }


def from_arrays(x: Any, y: Any, *, name: str) -> Dataset:
    """Your binary data set as a `Dataset` Theorem 1 applies to (module docstring).

    Args:
      x: (n, ...) features, one example per row, any numeric dtype; each row is flattened.
      y: (n,) labels, all in {0, 1} or all in {-1, +1}, both classes present.
      name: what the tables and the record call it.

    Returns:
      A `Dataset` with z = flattened x / max_i ||x_i|| (float64), y in {-1.0, +1.0}, and
      `prepared` saying so.

    Raises:
      ToolkitError (a ValueError): one line naming the dataset, the value found and what
      is allowed (other labels, more than two classes, one class, NaN, all-zero x, ...).
    """
    return _prepare(x, y, name=name, origin=f"dataset {name!r}", source="arrays")


def from_file(path: str | Path, *, name: str | None = None) -> Dataset:
    """`from_arrays` on a file `toolkit.data.load_arrays` reads (.npz with x, y; .csv).

    The file's x and y are used; a held-out x_test / y_test is ignored (and recorded as
    such). Every error names `--data`, the option of `toolkit bound-check` that calls this.
    """
    try:
        arrays = load_arrays(path)
    except ToolkitError as e:
        message = str(e)
        raise ToolkitError(
            message if message.startswith("--data") else f"--data: {message}"
        ) from None
    return _prepare(
        arrays.x,
        arrays.y,
        name=name or Path(path).stem,
        origin=f"--data={path}",
        source=str(path),
        ignored=("x_test", "y_test") if arrays.test is not None else (),
    )


def _label_text(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:8])
    return "{" + shown + (f", ... ({len(values)} values)" if len(values) > 8 else "") + "}"


def _prepare(
    x: Any, y: Any, *, name: str, origin: str, source: str, ignored: tuple[str, ...] = ()
) -> Dataset:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ToolkitError(
            f"{origin}: x {x.shape} and y {y.shape}: expected x of shape (n, ...) with one "
            "example per row and y of shape (n,)."
        )
    for what, a in (("x", x), ("y", y)):
        if not any(np.issubdtype(a.dtype, k) for k in (np.integer, np.floating, np.bool_)):
            raise ToolkitError(f"{origin}: {what} has dtype {a.dtype}; expected real numbers.")
    example_shape = tuple(int(s) for s in x.shape[1:])
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.astype(np.float64)
    if len(x) < 2 or x.shape[1] < 1:
        raise ToolkitError(
            f"{origin}: x has {len(x)} example(s) of {x.shape[1]} feature(s); expected at "
            "least 2 examples with at least 1 feature."
        )
    if not np.all(np.isfinite(x)):
        raise ToolkitError(f"{origin}: x holds NaN or inf; expected finite features.")
    values = np.unique(y)
    encoding = next((e for e in LABEL_ENCODINGS if set(values.tolist()) == set(e)), None)
    if encoding is None:
        found = (
            f"labels {_label_text(values)} ({len(values)} classes)"
            if np.all(np.isfinite(values))
            else "non-finite labels"
        )
        raise ToolkitError(
            f"{origin}: y holds {found}; expected a binary data set with both classes, "
            "labelled {0, 1} or {-1, +1}."
        )
    norms = np.linalg.norm(x, axis=1)
    scale = float(norms.max())
    if not (np.isfinite(scale) and scale > 0):
        raise ToolkitError(
            f"{origin}: the largest example norm is {scale:g}; expected a finite, positive "
            "norm (all-zero features cannot be scaled to ||z_i|| <= 1 with one at 1)."
        )
    z = x / scale
    # A row divided by its own norm can land an ulp above 1: pull it back.
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1.0)
    label_map = tuple(sorted(encoding.items()))
    prepared = Preparation(
        source=source,
        example_shape=example_shape,
        scale=scale,
        label_map=label_map,
        ignored=ignored,
    )
    return Dataset(name=name, z=z, y=np.where(y > 0, 1.0, -1.0), prepared=prepared)


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
