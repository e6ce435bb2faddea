"""The clipping-bias tables of `toolkit bias` (OUT.md), from its results only.

- `point_table`: every measured point of every run, each statistic with its 95%
  bootstrap interval.
- `difference_table`: paired differences between runs of different labels (activation,
  clipping rule) trained with the same seed, at the epochs both were measured at, with the
  interval of the R paired replicate differences (`toolkit.studies.paired_difference`):
  the same examples under the same bootstrap weights in both runs. The intervals cover
  the choice of examples at fixed parameters; seed-to-seed variation is what the rows of
  several seeds show.

Definitions: `toolkit.studies._bias_stats`. Diagnostics of private training data without
noise: not covered by eps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from toolkit.base import ToolkitError
from toolkit.studies import DIAGNOSTIC_LABEL, RunBias, paired_difference

# (statistic, column heading) of both tables.
COLUMNS = (
    ("fraction_clipped", "fraction clipped"),
    ("projection", "projection / C"),
    ("cosine", "cos(gclip, gbar)"),
    ("snr", "snr of a step"),
    ("mean_grad_norm", "mean ||g_i||"),
)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _cell(value: float, ci: tuple[float, float] | None) -> str:
    return _fmt(value) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")


def name_of(result: RunBias) -> str:
    """The run as a table names it: its directory's name, its label and training seed."""
    return f"{result.run.rstrip('/').rsplit('/', 1)[-1]} ({result.label}, seed {result.run_seed})"


def point_table(results: Sequence[RunBias]) -> str:
    """Markdown: one row per run and point."""
    head = ["run", "epoch", "C", *(h for _, h in COLUMNS)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for p in r.points:
            c = p.clip_norm if p.clip_norm is not None else r.clip_norm
            cells = [_cell(getattr(p, f), p.ci.get(f)) for f, _ in COLUMNS]
            rows.append(f"| {name_of(r)} | {p.epoch} | {c:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def difference_table(results: Sequence[RunBias]) -> str:
    """Markdown: a - b for every pair of runs of different labels and the same training
    seed, at their common epochs; empty when no such pair was measured on the same
    examples with replicates."""
    head = ["a - b", "epoch", *(h for _, h in COLUMNS)]
    rows = []
    for a, b in itertools.combinations(results, 2):
        if a.label == b.label or a.run_seed != b.run_seed:
            continue
        epochs = sorted({p.epoch for p in a.points} & {p.epoch for p in b.points})
        for epoch in epochs:
            try:
                diffs = [paired_difference(a, b, epoch=epoch, statistic=f) for f, _ in COLUMNS]
            except ToolkitError:  # not paired (other examples, seed or R), or no replicates
                break
            cells = [_cell(d.estimate, d.ci) for d in diffs]
            rows.append(f"| {name_of(a)} - {name_of(b)} | {epoch} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows])


def report(results: Sequence[RunBias]) -> str:
    """OUT.md: both tables under the diagnostic label."""
    parts = [f"Clipping bias ({DIAGNOSTIC_LABEL}); 95% Poisson-bootstrap intervals.", "",
             point_table(results)]  # fmt: skip
    differences = difference_table(results)
    if differences:
        parts += ["", "Paired differences (same examples and bootstrap weights):", "",
                  differences]  # fmt: skip
    return "\n".join(parts) + "\n"
