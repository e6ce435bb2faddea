"""The paper's figures from run records only (no plot re-runs training).

- `pareto_figure`: Figure 3, test accuracy against eps (eps grows with the
  epoch), mean and min-max band over seeds, plus the Pareto frontier of all runs.
  Each point is one epoch of a run whose noise was set for its final eps.
- `trace_figure`: Figures 4 and 5, a per-epoch metric (pre-clip gradient norm,
  first-conv activation norm) for each setting, mean and min-max band over seeds,
  with a reference line at the clipping norm C for gradient norms.

Legends name what differs between settings (`experiments.settings`) and count distinct
seeds; a note under each figure says what the line and band are. A run that lacks what
a figure needs is skipped with a warning naming it (`experiments.records`).
- `grid_figure`: Figure 2, final accuracy over tempered-sigmoid triplets (s, T, o),
  with the mean of the best 10% triplets.

What eps covers: test accuracy and the activation norm are computed from the trained
parameters on test (or validation) images. A trace of a training diagnostic (pre-clip
gradient norms, train loss: computed from the private training data without noise) is
not covered, and its note says so (`DIAGNOSTIC_NOTE`); the grid figure's best-10% choice
compares runs (hyperparameter search), and its note says that too (`GRID_NOTE`).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from experiments import settings
from experiments.records import (
    Run,
    epsilon_value,
    group_by_setting,
    paper_cnn_runs,
    seeds,
    with_epsilon,
    with_metric,
)
from toolkit.base import ToolkitError
from toolkit.base.plotting import PAPER_RC, save_figure
from toolkit.runs import TRAINING_DIAGNOSTICS


def _band(values: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(v) for v in values)
    arr = np.array([[np.nan if x is None else x for x in v[:n]] for v in values], dtype=float)
    return np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0)


def _title(runs: Sequence[Run], accountant: str | None) -> str:
    datasets = sorted({r.dataset_label for r in runs})
    samplings = sorted({r.config.sampling for r in runs if r.config.private})
    text = ", ".join(datasets)
    if accountant:
        text += f"; eps: {accountant}, {'/'.join(samplings) or 'poisson'} sampling, delta="
        text += "/".join(sorted({f"{r.config.delta:g}" for r in runs if r.config.private}))
    return text


def _labels(groups: Sequence[Sequence[Run]]) -> list[str]:
    """One legend label per setting, naming what differs; n = distinct seeds."""
    labels = settings.distinct_labels([g[0].setting for g in groups], [g[0].label for g in groups])
    return [f"{lab} (n={len(seeds(g))})" for lab, g in zip(labels, groups)]


def _eps_text(eps: float | None) -> str:
    if eps is None:
        return "non-private"
    return "eps=inf, no DP guarantee" if math.isinf(eps) else f"eps={eps:.2f}"


def _legend_below(ax, fig) -> None:
    """The legend under the axes, where it cannot cover a curve."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncol=1)


def _note(fig, text: str) -> None:
    """A caption line under everything (what the line, band and points are)."""
    fig.text(0.0, 1.0, "\n".join(textwrap.wrap(text, 70)), ha="left", va="bottom",
             fontsize=6, transform=fig.transFigure)  # fmt: skip


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by one with smaller-or-equal eps and higher accuracy."""
    frontier, best = [], -math.inf
    for eps, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            frontier.append((eps, acc))
            best = acc
    return frontier


PARETO_NOTE = (
    "Each point is one epoch of a run: its test accuracy against the eps spent so far. "
    "Each run's noise was set for its final (rightmost) eps, so a point is not a run "
    "trained for that eps. Line: mean over seeds; band: min-max over seeds."
)


@dataclasses.dataclass(frozen=True)
class Curve:
    """One setting of a pareto figure: mean and min-max band of accuracy (%) per epoch."""

    label: str
    eps: np.ndarray  # eps spent after each epoch; inf for sigma = 0
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def no_guarantee(self) -> bool:
        return not bool(np.all(np.isfinite(self.eps)))


def pareto_curves(
    runs: Sequence[Run], *, accountant: str
) -> tuple[list[Curve], list[tuple[float, float]]]:
    """The curves of Figure 3 and the Pareto frontier over every finite (eps, accuracy %)."""
    private = [r for r in runs if r.config.private]
    if not private:
        raise ToolkitError("pareto needs at least one private run (eps is undefined otherwise).")
    private = with_epsilon(with_metric(private, "test_accuracy", per_epoch=True), accountant,
                           per_epoch=True)  # fmt: skip
    groups = group_by_setting(private)
    curves, points = [], []
    for group, label in zip(groups, _labels(groups)):
        mean, lo, hi = _band([[a * 100 for a in r.series("test_accuracy")] for r in group])
        first = group[0]
        eps = [epsilon_value(first, e.epsilon, accountant) for e in first.epochs[: len(mean)]]
        curve = Curve(label, np.array(eps, dtype=float), mean, lo, hi)
        if curve.no_guarantee:
            curve = dataclasses.replace(curve, label=f"{label}: final acc., {_eps_text(math.inf)}")
        curves.append(curve)
        for r in group:
            e = [epsilon_value(r, rec.epsilon, accountant) for rec in r.epochs]
            points += [(x, 100 * a) for x, a in zip(e, r.series("test_accuracy"))]
    return curves, pareto_frontier([(e, a) for e, a in points if math.isfinite(e)])


def pareto_figure(runs: Sequence[Run], *, accountant: str, out: str | Path) -> list[Path]:
    """Figure 3. A private run with sigma = 0 has eps = inf at every epoch: it is drawn as a
    horizontal line at its final accuracy, labelled 'eps=inf, no DP guarantee'."""
    curves, front = pareto_curves(runs, accountant=accountant)
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(3.4, 2.6))
        for c in curves:
            if c.no_guarantee:
                ax.axhline(c.mean[-1], color="grey", linestyle="-.", linewidth=0.8,
                           label=c.label)  # fmt: skip
                continue
            (line,) = ax.plot(c.eps, c.mean, marker="o", markersize=2.5, label=c.label)
            ax.fill_between(c.eps, c.lo, c.hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if front:
            ax.step(*zip(*front), where="post", color="black", linestyle="--", linewidth=0.8,
                    label="Pareto frontier (all runs)")  # fmt: skip
        ax.set_xlabel(f"epsilon spent after each epoch ({accountant})")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_title([r for r in runs if r.config.private], accountant))
        ax.grid(alpha=0.3)
        _legend_below(ax, fig)
        _note(fig, PARETO_NOTE)
        written = save_figure(fig, out)
        plt.close(fig)
    return written


TRACE_NOTE = (
    "Line: mean over seeds (n = distinct seeds); band: min-max over seeds; "
    "solid: DP-SGD, dotted: non-private SGD."
)
DIAGNOSTIC_NOTE = (
    "Computed from the private training data without noise (epochs.jsonl): a diagnostic, "
    "not covered by eps, not for release."
)
GRID_NEEDS = "the grid figure (Figure 2) compares the paper CNN's tempered sigmoids"
GRID_NOTE = (
    "The best 10% are chosen by test accuracy among all runs shown: the eps is one run's, "
    "and the choice (hyperparameter search) is not covered by it."
)


def trace_figure(
    runs: Sequence[Run],
    *,
    field: str,
    ylabel: str,
    out: str | Path,
    accountant: str = "rdp-classic",
    log: bool = True,
) -> list[Path]:
    """A per-epoch metric for each setting (e.g. 'grad_norm.median'), mean and band over seeds.

    Every epoch is a marker, so a one-epoch run is visible. For a gradient-norm field, a
    reference line at each clipping norm C of the private runs (norms above it are clipped).
    """
    runs = with_epsilon(with_metric(runs, field, per_epoch=True), accountant)
    groups = sorted(group_by_setting(runs), key=lambda g: g[0].label)
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(3.4, 2.6))
        for group, label in zip(groups, _labels(groups)):
            mean, lo, hi = _band([r.series(field) for r in group])
            epochs = np.arange(1, len(mean) + 1)
            first = group[0]
            if first.config.private:
                label += ", " + _eps_text(epsilon_value(first, first.summary.epsilon, accountant))
            style = "-" if first.config.private else ":"
            (line,) = ax.plot(epochs, mean, style, marker="o", markersize=2.5, label=label)
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if field.startswith("grad_norm."):
            clips = sorted({r.config.clip_norm for r in runs if r.config.private})
            for c in clips:
                if math.isfinite(c):
                    ax.axhline(c, color="black", linestyle="--", linewidth=0.8,
                               label=f"clipping norm C={c:g}")  # fmt: skip
        if log:
            ax.set_yscale("log")  # ticks at 1, 2, 5 x 10^k, written plainly ("0.1", "20")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(_title(runs, accountant), fontsize=7)
        ax.grid(alpha=0.3, which="both")
        _legend_below(ax, fig)
        private = field.split(".")[0] in TRAINING_DIAGNOSTICS
        _note(fig, f"{TRACE_NOTE} {DIAGNOSTIC_NOTE}" if private else TRACE_NOTE)
        written = save_figure(fig, out)
        plt.close(fig)
    return written


def best_triplets(runs: Sequence[Run], fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(triplets sorted by accuracy, mean of the best `fraction`): rows (s, T, o, accuracy).

    Paper-CNN runs of another activation have no triplet and are left out; runs of a model
    of your own are left out with a warning naming them (Figure 2 is the paper CNN's)."""
    rows = []
    for r in with_metric(paper_cnn_runs(runs, needs=GRID_NEEDS), "test_accuracy"):
        a = r.config.activation
        if a.name != "tempered":
            continue
        rows.append((a.scale, a.inverse_temp, a.offset, r.summary.test_accuracy))
    if not rows:
        raise ToolkitError("no tempered-sigmoid runs among the given runs.")
    table = np.array(sorted(rows, key=lambda t: -t[3]))
    k = max(1, math.ceil(fraction * len(table)))
    return table, table[:k, :3].mean(axis=0)


def grid_figure(runs: Sequence[Run], *, accountant: str, out: str | Path) -> list[Path]:
    runs = with_epsilon(with_metric(runs, "test_accuracy"), accountant)
    table, best = best_triplets(runs)
    eps = epsilon_value(runs[0], runs[0].summary.epsilon, accountant)
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(1, 3, figsize=(6.8, 2.3), sharey=True)
        for i, (ax, name) in enumerate(zip(axes, ("scale s", "inverse temperature T", "offset o"))):
            sc = ax.scatter(
                table[:, i], 100 * table[:, 3], c=100 * table[:, 3], cmap="viridis", s=14
            )
            ax.axvline(best[i], color="red", linestyle="--", linewidth=0.8)
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        fig.colorbar(sc, ax=axes, label="test accuracy (%)", fraction=0.05)
        eps_text = _eps_text(eps) + (f" ({accountant})" if eps is not None else "")
        fig.suptitle(
            f"{_title(runs, None)}: {len(table)} triplets at {eps_text}; red: mean of best 10% "
            f"(s={best[0]:.2f}, T={best[1]:.2f}, o={best[2]:.2f})"
        )
        fig.text(0.5, -0.02, GRID_NOTE, ha="center", va="top", fontsize=6)
        written = save_figure(fig, out)
        plt.close(fig)
    return written
