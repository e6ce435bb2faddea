"""The paper's figures from run records only (no plot re-runs training).

- `pareto_figure`: Figure 3, test accuracy against eps (eps grows with the
  epoch), mean and min-max band over seeds, plus the Pareto frontier of all runs.
- `trace_figure`: Figures 4 and 5, a per-epoch metric (pre-clip gradient norm,
  first-conv activation norm) for each setting, mean and band over seeds.
- `grid_figure`: Figure 2, final accuracy over tempered-sigmoid triplets (s, T, o),
  with the mean of the best 10% triplets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.ticker import ScalarFormatter

from experiments.records import Run, group_by_setting
from toolkit.errors import ToolkitError
from toolkit.plotting import PAPER_RC, save_figure


def _band(values: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(v) for v in values)
    arr = np.array([[np.nan if x is None else x for x in v[:n]] for v in values], dtype=float)
    return np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0)


def _title(runs: Sequence[Run], accountant: str | None) -> str:
    datasets = sorted({r.config.dataset for r in runs})
    samplings = sorted({r.config.sampling for r in runs if r.config.private})
    text = ", ".join(datasets)
    if accountant:
        text += f"; eps: {accountant}, {'/'.join(samplings) or 'poisson'} sampling, delta="
        text += "/".join(sorted({f"{r.config.delta:g}" for r in runs if r.config.private}))
    return text


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by one with smaller-or-equal eps and higher accuracy."""
    frontier, best = [], -math.inf
    for eps, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            frontier.append((eps, acc))
            best = acc
    return frontier


def pareto_figure(runs: Sequence[Run], *, accountant: str, out: str | Path) -> list[Path]:
    private = [r for r in runs if r.config.private]
    if not private:
        raise ToolkitError("pareto needs at least one private run (eps is undefined otherwise).")
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(3.4, 2.6))
        points = []
        for group in group_by_setting(private):
            eps = np.array(group[0].series(f"epsilon.{accountant}"), dtype=float)
            mean, lo, hi = _band([[a * 100 for a in r.series("test_accuracy")] for r in group])
            n = len(mean)
            label = f"{group[0].label} (n={len(group)})"
            (line,) = ax.plot(eps[:n], mean, marker="o", markersize=2, label=label)
            ax.fill_between(eps[:n], lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            for r in group:
                points += list(zip(r.series(f"epsilon.{accountant}"), r.series("test_accuracy")))
        front = pareto_frontier([(e, a * 100) for e, a in points if e is not None])
        ax.step(*zip(*front), where="post", color="black", linestyle="--", linewidth=0.8,
                label="Pareto frontier (all runs)")  # fmt: skip
        ax.set_xlabel(f"epsilon ({accountant}, delta fixed)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_title(private, accountant))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        written = save_figure(fig, out)
        plt.close(fig)
    return written


def trace_figure(
    runs: Sequence[Run],
    *,
    field: str,
    ylabel: str,
    out: str | Path,
    accountant: str = "rdp-classic",
    log: bool = True,
) -> list[Path]:
    """A per-epoch metric for each setting (e.g. 'grad_norm.median'), mean and band over seeds."""
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(3.4, 2.6))
        for group in sorted(group_by_setting(runs), key=lambda g: g[0].label):
            mean, lo, hi = _band([r.series(field) for r in group])
            epochs = np.arange(1, len(mean) + 1)
            first = group[0]
            label = f"{first.label} (n={len(group)})"
            if first.config.private:
                label += f", eps={first.summary.epsilon[accountant]:.2f}"
            style = "-" if first.config.private else ":"
            (line,) = ax.plot(epochs, mean, style, label=label)
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(_title(runs, accountant), fontsize=7)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        written = save_figure(fig, out)
        plt.close(fig)
    return written


def best_triplets(runs: Sequence[Run], fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(triplets sorted by accuracy, mean of the best `fraction`): rows (s, T, o, accuracy)."""
    rows = []
    for r in runs:
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
    table, best = best_triplets(runs)
    eps = runs[0].summary.epsilon.get(accountant) if runs[0].config.private else None
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
        eps_text = f"eps={eps:.2f} ({accountant})" if eps is not None else "non-private"
        fig.suptitle(
            f"{_title(runs, None)}: {len(table)} triplets at {eps_text}; red: mean of best 10% "
            f"(s={best[0]:.2f}, T={best[1]:.2f}, o={best[2]:.2f})"
        )
        written = save_figure(fig, out)
        plt.close(fig)
    return written
