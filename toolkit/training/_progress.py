"""Progress display for the training loop, kept apart from the loop itself.

The loop calls `start(total, completed)`, `step(description)` after every step and
`epoch(record)` after every epoch. Until the first `step` the loop is compiling the step
(seconds to tens of seconds), and both displays say so. `RichProgress` draws a bar with
ETA and the last epoch's loss, accuracy and eps; `LineProgress` prints one flushed line
per epoch (for logs without a terminal); `progress_display(enabled)` picks one.

Both show the train loss (and the line display the epoch's wall time) after "not covered
by eps:": they are computed from the private training data without noise
(docs/privacy.md section 4).
"""

from __future__ import annotations

import math
import sys
from typing import Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from toolkit.runs import EpochRecord


class Display(Protocol):
    def start(self, total: int, completed: int) -> None: ...
    def step(self, description: str) -> None: ...
    def epoch(self, record: EpochRecord) -> None: ...
    def close(self) -> None: ...


COMPILING = "compiling the training step"


def _summary(record: EpochRecord) -> str:
    """Held-out accuracy and eps, then what eps does not cover (the train loss; the line
    display adds the epoch's wall time after it)."""
    parts = []
    for key, name in (("test_accuracy", "test acc"), ("val_accuracy", "val acc")):
        if record.metrics.get(key) is not None:
            parts.append(f"{name} {record.metrics[key]:.4f}")
    eps = record.epsilon.get(record.accountant)
    if eps is not None and math.isfinite(eps):
        parts.append(f"eps {eps:.3f} ({record.accountant})")
    elif record.privacy.startswith("non-private"):
        parts.append("non-private")
    else:
        parts.append("eps inf (sigma = 0: no DP guarantee)")
    return f"{', '.join(parts)}; not covered by eps: train loss {record.train_loss:.4f}"


class RichProgress:
    """A rich progress bar: steps done of all, elapsed, ETA, last epoch's metrics."""

    def __init__(self, label: str = "training"):
        self.label = label
        self._bar: Progress | None = None
        self._task = None
        self._last = ""

    def start(self, total: int, completed: int) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[last]}"),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(
            f"{self.label}: {COMPILING}", total=total, completed=completed, last=""
        )

    def step(self, description: str) -> None:
        self._bar.update(self._task, advance=1, description=description, last=self._last)

    def epoch(self, record: EpochRecord) -> None:
        self._last = _summary(record)
        self._bar.update(self._task, last=self._last)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class LineProgress:
    """One line per epoch on stderr: for cluster logs and pipes."""

    def __init__(self, label: str = "training", stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self._epochs = 0

    def start(self, total: int, completed: int) -> None:
        del total, completed
        print(f"{self.label}: {COMPILING} ...", file=self.stream, flush=True)

    def step(self, description: str) -> None:
        del description

    def epoch(self, record: EpochRecord) -> None:
        compiled = f" (+ {record.compile_time_s:.1f} s compiling)" if record.compile_time_s else ""
        print(
            f"{self.label} epoch {record.epoch}: {_summary(record)}, "
            f"{record.epoch_time_s:.1f} s{compiled}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        pass


def progress_display(enabled: bool, label: str = "training") -> Display | None:
    """A rich bar on a terminal, one line per epoch otherwise; None when disabled."""
    if not enabled:
        return None
    return RichProgress(label) if sys.stderr.isatty() else LineProgress(label)
