"""Optional tracking: each epoch's scalars as TensorBoard events (`toolkit train --tensorboard`).

The run directory stays the source of truth; this is a view of the same `EpochRecord`s,
written after each epoch's records are saved. The writer is tensorboardX's
`SummaryWriter` (no TensorFlow needed), an optional extra:
`pip install -e '.[tensorboard]'`.

Scalars, at global step `record.step` (the number of DP-SGD steps so far):
`train/loss`, `train/nonfinite_loss_fraction`, `train/batch_size_mean`,
`train/epoch_time_s`, `grad_norm/{mean,median,max,fraction_clipped,nonfinite_fraction}`
(pre-clip per-example norms), `epsilon/<accountant>` for every accountant with a finite
eps, and `metrics/<name>` for every numeric metric (test_accuracy, ...). A run with
eps = inf (sigma = 0) has no epsilon scalars: TensorBoard cannot draw inf.

The `train/*` and `grad_norm/*` scalars are computed from the private training data
without noise: not covered by eps. Each carries that label as its TensorBoard description
(`DIAGNOSTIC_DESCRIPTION`, shown by the plot's information icon).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from toolkit.base import ToolkitError
from toolkit.runs import EpochRecord

EXTRA = "tensorboard"  # the pyproject optional dependency that installs the writer
DIAGNOSTIC_DESCRIPTION = (
    "Computed from the private training data without noise: not covered by eps, not for "
    "release (docs/privacy.md section 4)."
)
_DIAGNOSTIC_PREFIXES = ("train/", "grad_norm/")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def description(tag: str) -> str:
    """The TensorBoard description of a scalar: the label of a training diagnostic, or ''."""
    return DIAGNOSTIC_DESCRIPTION if tag.startswith(_DIAGNOSTIC_PREFIXES) else ""


def scalars(record: EpochRecord) -> dict[str, float]:
    """The scalars of one epoch, by TensorBoard tag."""
    out = {
        "train/loss": record.train_loss,
        "train/nonfinite_loss_fraction": record.nonfinite_loss_fraction,
        "train/batch_size_mean": record.batch_size_mean,
        "train/epoch_time_s": record.epoch_time_s,
    }
    out.update({f"grad_norm/{k}": v for k, v in dataclasses.asdict(record.grad_norm).items()})
    out.update({f"epsilon/{k}": v for k, v in record.epsilon.items()})
    out.update({f"metrics/{k}": v for k, v in record.metrics.items()})
    return {k: float(v) for k, v in out.items() if _number(v)}


class TensorBoardSink:
    """Writes `scalars(record)` for each epoch to event files in `logdir`."""

    def __init__(self, logdir: str | Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ToolkitError(
                f"--tensorboard needs tensorboardX: pip install -e '.[{EXTRA}]' "
                "(or pip install tensorboardX)."
            ) from None
        logdir = Path(logdir)
        if logdir.exists() and not logdir.is_dir():
            raise ToolkitError(f"--tensorboard={logdir} is a file; give a directory.")
        try:
            logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(logdir=str(logdir))
        except OSError as e:
            raise ToolkitError(
                f"--tensorboard={logdir} cannot be written ({e.strerror or e})."
            ) from None
        self.logdir = logdir

    def write(self, record: EpochRecord) -> None:
        for tag, value in scalars(record).items():
            self._writer.add_scalar(
                tag, value, global_step=record.step, summary_description=description(tag)
            )
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
