"""Differentially private deep learning with tempered sigmoids, in Flax NNX and JAX.

The public API (see README, "Python API"):

- `fit(model, (x, y), optimizer=..., batch_size=..., epochs=..., clip_norm=...,
  target_epsilon=...)`: DP-SGD on any NNX model and per-example loss; returns a
  `FitResult` with `.model`, `.epsilon` (every accountant), `.history`, `.config`.
- `load_run(path, model=...)`: a run directory back as a `FitResult`.
- The lower layer, each piece usable alone: `clipped_grad` (per-example clipped sum,
  norms, losses, `sensitivity`), `gaussian_privatizer` (an optax transformation: noise on
  the sum, then / B), `PrivacyParams` (q, steps, sigma, delta, accountant -> event, eps),
  `split_model`, `metrics` hooks, `randomness` (each example's own PRNG key: dropout and
  augmult keyed by the example, never by its row), `TemperedSigmoid`-style activations
  (`tempered_sigmoid`).
"""

from toolkit.grads import (
    ClippedGrad,
    ClippedGradFn,
    clipped_grad,
    softmax_cross_entropy,
    split_model,
)
from toolkit.nn import tempered_sigmoid
from toolkit.privacy import PrivacyParams, PrivatizerState, gaussian_privatizer, randomness
from toolkit.runs import EpochRecord, GradNormStats, RunSummary
from toolkit.training import (
    EpochContext,
    FitConfig,
    FitResult,
    TrainingDiverged,
    fit,
    load_run,
    metrics,
)

__all__ = [
    "ClippedGrad",
    "ClippedGradFn",
    "EpochContext",
    "EpochRecord",
    "FitConfig",
    "FitResult",
    "GradNormStats",
    "PrivacyParams",
    "PrivatizerState",
    "RunSummary",
    "TrainingDiverged",
    "clipped_grad",
    "fit",
    "gaussian_privatizer",
    "load_run",
    "metrics",
    "randomness",
    "softmax_cross_entropy",
    "split_model",
    "tempered_sigmoid",
]
