"""Sweep-level progress: runs done of all, ETA, the last run's accuracy and eps, and how
many points failed.

`SweepProgress.done(name, status, message)` is `run_sweep`'s `on_done`. For a finished
run it reads what the run wrote (its summary.json: the records are the source of truth);
for a point that did not finish it shows the message, counts it and keeps it
(`problems`, for the closing report). It reports on a terminal as a rich bar, otherwise
as one plain line per run (cluster logs, pipes). The ETA is the mean wall time of the
runs that ran so far (skipped points, finished or failed earlier, take no time) times
the runs left.
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
        self.problems: dict[str, tuple[str, str]] = {}  # name -> (status, message)
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

    def tally(self) -> str:
        """'2 failed, 1 busy', or '' while every point finished."""
        failed = sum(s != "busy" for s, _ in self.problems.values())
        busy = len(self.problems) - failed
        return ", ".join(f"{n} {what}" for n, what in ((failed, "failed"), (busy, "busy")) if n)

    def done(self, name: str, status: str, message: str = "") -> str:
        """Record one point that ended (a status of `run_sweep`, and its error if it did
        not finish); returns (and shows) its progress line."""
        now = time.perf_counter()
        if status in ("trained", "resumed", "diverged", "failed"):  # it ran
            self.worked += 1
            self.work_time += now - self._last
        self._last = now
        self.done_count += 1
        if status in ("trained", "resumed", "skipped"):
            result = run_result(self.root / name)
        else:
            result = message.rstrip(".")
            self.problems[name] = (status, message)
        tally = self.tally()
        line = (
            f"[{self.done_count}/{self.total}] {status} {self.root / name}"
            f"{': ' + result if result else ''}; ETA {self.eta()}{'; ' + tally if tally else ''}"
        )
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
            info = f"ETA {self.eta()}{', ' + tally if tally else ''}"
            self._bar.update(self._task, advance=1, info=info)
        else:
            print(line, file=self.stream, flush=True)
        return line
