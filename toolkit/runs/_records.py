"""Typed records of a run: one epoch, the run summary, an audit.

Every reader (tables, plots, the CLI, `toolkit.load_run`) gets these frozen dataclasses
from `toolkit.runs.rundir`, which alone turns them into JSON and back. The JSON layout is
flat, as it was before the records were typed, so older run directories still load:
the named fields are read by name, and every other key of an epoch or summary object
is a metric (`metrics`), such as the ones `toolkit.training.metrics` computes.

A missing or mistyped named field raises `RecordError`, which names the file.

**What eps covers.** Each record carries `not_covered_by_dp`, a sentence naming its fields
that are computed from the private training data without noise (or, in an audit, from
the canaries' secret inclusion bits): those are not covered by the run's eps and are not
for release (docs/privacy.md section 4). It has a default, so records written before it
existed load with the same label; it is never a metric.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from toolkit.base import ToolkitError


class RecordError(ToolkitError):
    """A run file that is corrupt, partial or of an unknown format."""


# The EpochRecord fields computed from the private training data without noise.
TRAINING_DIAGNOSTICS = (
    "train_loss", "nonfinite_loss_fraction", "grad_norm", "per_example_grads",
    "batch_size_mean", "epoch_time_s", "compile_time_s",
)  # fmt: skip

EPOCH_NOT_COVERED = (
    "train_loss, nonfinite_loss_fraction, grad_norm (pre-clip per-example norms), "
    "batch_size_mean (realised Poisson batch sizes), per_example_grads (chosen by the "
    "pre-training check on training examples), epoch_time_s and compile_time_s (wall "
    "times, which follow the realised batch sizes) are computed from the private training "
    "data without noise: not covered by eps, not for release. eps covers the parameters; "
    "the metrics of held-out data (test_*, val_*, ema_*, per_class_accuracy*, "
    "first_conv_activation_norm) are functions of the parameters and of that data (which "
    "eps does not protect); a toolkit.fit metric hook that reads private data is not "
    "covered (docs/privacy.md section 4)."
)
SUMMARY_NOT_COVERED = (
    "per_example_grads (chosen by the pre-training check on training examples), "
    "train_time_s and compile_time_s (wall times, which follow the realised batch sizes) "
    "depend on the private training data: not covered by eps, not for release. eps covers "
    "the parameters; the metrics here are of held-out data (toolkit.fit: whatever its "
    "metric hooks returned, covered only if they read nothing private) (docs/privacy.md "
    "section 4)."
)
AUDIT_NOT_COVERED = (
    "An audit tests the mechanism; it is not a DP release. num_included, audit (the correct "
    "guesses) and epsilon_lower_bound are computed from the canaries' secret inclusion bits "
    "(canaries.npz 'included', which config.seed regenerates) and so reveal which canaries "
    "were trained on; train_time_s is wall time. Not covered by eps. The canaries' losses "
    "and test_accuracy are computed from the final model (docs/privacy.md section 6)."
)


@dataclasses.dataclass(frozen=True)
class GradNormStats:
    """Pre-clip per-example gradient norms of one epoch, over the finite norms."""

    mean: float
    median: float
    max: float
    fraction_clipped: float  # fraction of finite norms above C
    nonfinite_fraction: float  # fraction of examples whose gradient was dropped (NaN/inf)


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: training statistics, eps so far, and the metric hooks' output.

    The training statistics (`TRAINING_DIAGNOSTICS`) are computed from the private training
    data without noise: not covered by eps (`not_covered_by_dp` says so in the record).
    """

    epoch: int  # 1-based
    step: int  # steps run by the end of this epoch
    train_loss: float  # mean over the finite losses of the sampled examples
    nonfinite_loss_fraction: float
    epsilon: Mapping[str, float | None]  # accountant -> eps after `step` steps (None: inf)
    accountant: str  # the headline accountant
    sampling: str
    privacy: str  # how eps was obtained, e.g. "rdp-classic, Poisson sampling"
    grad_norm: GradNormStats
    per_example_grads: str  # "bookkeeping" or "vmap"
    batch_size_mean: float  # realised mean batch size (Poisson: about B)
    epoch_time_s: float  # without `compile_time_s`
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # XLA compilation of the training step in the first epoch a process runs (None in the
    # others, and in records written before it was measured; `toolkit.training._loop.compile_time`).
    # The first evaluation's compilation stays in that epoch's epoch_time_s.
    compile_time_s: float | None = None
    # The quantile rule's clip norm C_t after this epoch: a function of the noisy counts,
    # covered by eps (toolkit.privacy._quantile). None under the other rules.
    clip_norm: float | None = None
    not_covered_by_dp: str = EPOCH_NOT_COVERED  # the label written with the record

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test_accuracy")


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """The final record of a run (summary.json)."""

    dataset: str | None  # RunConfig.dataset ("python:arrays" for arrays; None: written before)
    activation: str | None  # RunConfig.label: the activation, or your model's name
    epochs: int
    num_train: int
    private: bool
    noise_multiplier: float
    epsilon: Mapping[str, float | None]  # None: inf (sigma = 0) or non-private
    delta: float | None
    accountant: str
    sampling: str
    privacy: str
    train_time_s: float
    per_example_grads: str | None
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the last epoch's
    compile_time_s: float | None = None  # included in train_time_s; None: not measured
    not_covered_by_dp: str = SUMMARY_NOT_COVERED  # the label written with the record

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test_accuracy")


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """What `toolkit audit` measured (audit.json)."""

    config: Mapping[str, Any]
    requested: Mapping[str, Any]
    canaries: int
    canary_kind: str
    score: str
    num_base: int
    num_included: int
    num_examples: int
    sampling_prob: float
    steps: int
    private: bool
    noise_multiplier: float
    delta: float
    accountant: str
    epsilon: Mapping[str, float | None]
    epsilon_headline: float | None
    privacy: str
    audit: Mapping[str, Any]
    epsilon_lower_bound: float
    confidence: float
    consistent: bool
    test_accuracy: float
    train_time_s: float
    provenance: Mapping[str, Any]
    not_covered_by_dp: str = AUDIT_NOT_COVERED  # the label written with the record


def jsonable(x: Any) -> Any:
    """Floats that JSON can hold: inf and NaN become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x
