"""Differentially private deep learning with tempered sigmoids, in Flax NNX and JAX.

The public API (see README, "Python API"):

- `fit(model, data, optimizer=optimizer("sgd", lr=...), batch_size=..., epochs=...,
  clip_norm=..., target_epsilon=...)`: DP-SGD on any NNX model and per-example loss;
  returns a `FitResult` with `.model`, `.epsilon` (every accountant), `.history`,
  `.config` (a `RunConfig`, the one config type of every run).
- `train(RunConfig(...), out=...)`: a run from its config (what `toolkit train` runs);
  `resume(path)` continues one; `load_run(path)` reads one back.
- The lower layer, each piece usable alone: `clipped_grad` (per-example clipped sum,
  norms, losses, `sensitivity`), `gaussian_privatizer` (an optax transformation: noise on
  the sum, then / B), `PrivacyParams` (q, steps, sigma, delta, accountant -> event, eps),
  `split_model`, `metrics` hooks, `randomness` (each example's own PRNG key: dropout and
  augmult keyed by the example, never by its row), `tempered_sigmoid`.

The sub-packages, bottom to top: `base`, `privacy`, `grads` / `nn` / `data`, `runs`,
`training`, `studies` (audit, clipping bias), `cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit import _lazy

# Each public name and the sub-package that defines it, imported on first use: the
# console script's `from toolkit.cli import main` then loads no JAX before `main`
# re-executes the interpreter with the allocator settings (`toolkit.cli._launch`).
_PUBLIC = {
    "toolkit.base": ("ToolkitError",),
    "toolkit.grads": (
        "ClippedGrad", "ClippedGradFn", "clipped_grad", "sigmoid_binary_cross_entropy",
        "softmax_cross_entropy", "split_model",
    ),
    "toolkit.nn": ("tempered_sigmoid",),
    "toolkit.privacy": ("PrivacyParams", "PrivatizerState", "gaussian_privatizer", "randomness"),
    "toolkit.runs": ("EpochRecord", "GradNormStats", "RunConfig", "RunSummary"),
    "toolkit.training": (
        "EpochContext", "FitResult", "OptimizerSpec", "TrainingDiverged", "fit", "load_run",
        "metrics", "optimizer", "resume", "train",
    ),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

if TYPE_CHECKING:
    from toolkit.base import ToolkitError
    from toolkit.grads import (
        ClippedGrad,
        ClippedGradFn,
        clipped_grad,
        sigmoid_binary_cross_entropy,
        softmax_cross_entropy,
        split_model,
    )
    from toolkit.nn import tempered_sigmoid
    from toolkit.privacy import PrivacyParams, PrivatizerState, gaussian_privatizer, randomness
    from toolkit.runs import EpochRecord, GradNormStats, RunConfig, RunSummary
    from toolkit.training import (
        EpochContext,
        FitResult,
        OptimizerSpec,
        TrainingDiverged,
        fit,
        load_run,
        metrics,
        optimizer,
        resume,
        train,
    )

__all__ = [
    "ClippedGrad",
    "ClippedGradFn",
    "EpochContext",
    "EpochRecord",
    "FitResult",
    "GradNormStats",
    "OptimizerSpec",
    "PrivacyParams",
    "PrivatizerState",
    "RunConfig",
    "RunSummary",
    "ToolkitError",
    "TrainingDiverged",
    "clipped_grad",
    "fit",
    "gaussian_privatizer",
    "load_run",
    "metrics",
    "optimizer",
    "randomness",
    "resume",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "split_model",
    "tempered_sigmoid",
    "train",
]


__getattr__, __dir__ = _lazy.attributes(__name__, _MODULE_OF, __all__)
