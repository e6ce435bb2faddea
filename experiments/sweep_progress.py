"""Sweep-level progress: runs done of all, ETA, and the last run's accuracy and eps.

`SweepProgress.done(name, status)` is `run_sweep`'s `on_done`. It reads what the run
wrote (its summary.json: the records are the source of truth) and reports, on a
terminal as a rich bar, otherwise as one plain line per run (cluster logs, pipes). The
ETA is the mean wall time of the runs trained or resumed so far (skipped, finished runs
take no time) times the runs left.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from toolkit.base import ToolkitError
from toolkit.runs import rundir


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def run_result(out: Path) -> str:
    """'acc 0.8512, eps 2.70 (rdp-classic)' from a finished run's summary, or '' if none."""
    try:
        summary = rundir.read_summary(out)
    except ToolkitError:
        return "summary unreadable"
    if summary is None:
        return ""
    parts = []
    for key in ("test_accuracy", "val_accuracy"):
        value = summary.metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{key.split('_')[0]} acc {value:.4f}")
    if not summary.private:
        parts.append("non-private")
    else:
        eps = summary.epsilon.get(summary.accountant)
        parts.append(
            "eps inf (no DP guarantee)" if eps is None else f"eps {eps:.2f} ({summary.accountant})"
        )
    return ", ".join(parts)


class SweepProgress:
    """Progress of `total` runs under `root`; use as a context manager."""

    def __init__(self, total: int, root: str | Path, *, stream: TextIO | None = None,
                 rich: bool | None = None):  # fmt: skip
        self.total, self.root = total, Path(root)
        self.stream = stream or sys.stderr
        self.rich = self.stream.isatty() if rich is None else rich
        self.done_count, self.worked, self.work_time = 0, 0, 0.0
        self._last = time.perf_counter()
        self._bar = self._task = None

    def __enter__(self) -> SweepProgress:
        if self.rich:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream, soft_wrap=True),  # a long path never wraps
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("sweep", total=self.total, info="")
        else:
            print(f"sweep: {self.total} runs under {self.root}", file=self.stream, flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def eta(self) -> str:
        left = self.total - self.done_count
        if left == 0:
            return "0:00"
        if self.worked == 0:
            return "unknown"
        return _clock(self.work_time / self.worked * left)

    def done(self, name: str, status: str) -> str:
        """Record one finished run; returns (and shows) its progress line."""
        now = time.perf_counter()
        if status != "skipped":
            self.worked += 1
            self.work_time += now - self._last
        self._last = now
        self.done_count += 1
        result = run_result(self.root / name)
        line = (
            f"[{self.done_count}/{self.total}] {status} {self.root / name}"
            f"{': ' + result if result else ''}; ETA {self.eta()}"
        )
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
            self._bar.update(self._task, advance=1, info=f"ETA {self.eta()}")
        else:
            print(line, file=self.stream, flush=True)
        return line
