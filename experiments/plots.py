"""The paper's figures from run records only (no plot re-runs training).

- `pareto_figure`: Figure 3, test accuracy against eps (eps grows with the
  epoch), mean and min-max band over seeds, plus the Pareto frontier of all runs.
  Each point is one epoch of a run whose noise was set for its final eps. A run with
  no finite eps (non-private, or sigma = 0) is a horizontal line at its final accuracy.
- `trace_figure`: Figures 4 and 5, a per-epoch metric (pre-clip gradient norm,
  first-conv activation norm) for each setting, mean and min-max band over seeds,
  with a reference line at the clipping norm C for gradient norms.
- `grid_figure`: Figure 2, final accuracy over tempered-sigmoid triplets (s, T, o),
  with the mean of the best 10% triplets; a warning when s, T or o has one value only.

Legends name what differs between settings (`experiments.settings`) and count distinct
seeds; they sit under the axes, no wider than the axes (`legend_below`), and the figure
grows taller with them. A note over each figure says what the line and band are. A run
that lacks what a figure needs is skipped with a warning naming it (`experiments.records`).

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
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator

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
from toolkit.base.plotting import (
    PAPER_RC,
    chars_that_fit,
    legend_below,
    log_axis,
    save_figure,
    space_below,
)
from toolkit.runs import TRAINING_DIAGNOSTICS


def _band(values: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(v) for v in values)
    arr = np.array([[np.nan if x is None else x for x in v[:n]] for v in values], dtype=float)
    return np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0)


def _title(runs: Sequence[Run], accountant: str | None, *, chars: int | None = None) -> str:
    """The data sets, and with `accountant` what the eps shown are; on two lines where
    one would be longer than `chars`, each line wrapped there."""
    datasets = sorted({r.dataset_label for r in runs})
    samplings = sorted({r.config.sampling for r in runs if r.config.private})
    parts = [", ".join(datasets)]
    if accountant:
        deltas = "/".join(sorted({f"{r.config.delta:g}" for r in runs if r.config.private}))
        parts.append(f"eps: {accountant}, {'/'.join(samplings) or 'poisson'} sampling, "
                     f"delta={deltas}")  # fmt: skip
    text = "; ".join(parts)
    if chars is None or len(text) <= chars:
        return text
    return "\n".join(line for part in parts for line in textwrap.wrap(part, chars))


def _labels(groups: Sequence[Sequence[Run]]) -> list[str]:
    """One legend label per setting, naming what differs; n = distinct seeds."""
    labels = settings.distinct_labels([g[0].setting for g in groups], [g[0].label for g in groups])
    return [f"{lab} (n={len(seeds(g))})" for lab, g in zip(labels, groups)]


def _eps_text(eps: float | None) -> str:
    if eps is None:
        return "non-private"
    return "eps=inf, no DP guarantee" if math.isinf(eps) else f"eps={eps:.2f}"


def _figsize(entries: int) -> tuple[float, float]:
    """One paper column wide; taller with each legend entry past four, so that the axes
    keep their share of the canvas as the legend under them grows."""
    return 3.4, 2.6 + 0.12 * min(12, max(0, entries - 4))


def _note(fig, text: str) -> None:
    """A caption over everything, just above the axes' titles: what the line, band and
    points are. Call it once the layout is final."""
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
    x, y = fig.transFigure.inverted().transform(
        (min(b.x0 for b in boxes), max(b.y1 for b in boxes) + 0.05 * fig.dpi)
    )
    fig.text(x, y, "\n".join(textwrap.wrap(text, 70)), ha="left", va="bottom", fontsize=6,
             transform=fig.transFigure)  # fmt: skip


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
BASELINE_NOTE = "Horizontal lines: final test accuracy of runs without a finite eps."


@dataclasses.dataclass(frozen=True)
class Curve:
    """One setting of a pareto figure: mean and min-max band of accuracy (%) per epoch."""

    label: str
    eps: np.ndarray  # eps spent after each epoch; inf for sigma = 0, nan for non-private
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    private: bool = True

    @property
    def no_guarantee(self) -> bool:
        return self.private and not bool(np.all(np.isfinite(self.eps)))

    @property
    def baseline(self) -> bool:
        """Drawn as a horizontal line at its final accuracy: no finite eps to place it at."""
        return self.no_guarantee or not self.private


def pareto_curves(
    runs: Sequence[Run], *, accountant: str
) -> tuple[list[Curve], list[tuple[float, float]]]:
    """The curves of Figure 3 and the Pareto frontier over every finite (eps, accuracy %).

    Non-private runs are curves too (`private` False, eps nan): the figure draws them as
    baselines at their final accuracy; they are not on the frontier.
    """
    needs = "pareto needs at least one private run (eps is undefined otherwise)."
    if not any(r.config.private for r in runs):
        raise ToolkitError(needs)
    runs = with_epsilon(with_metric(runs, "test_accuracy", per_epoch=True), accountant,
                        per_epoch=True)  # fmt: skip
    if not any(r.config.private for r in runs):
        raise ToolkitError(needs)
    groups = group_by_setting(runs)
    curves, points = [], []
    for group, label in zip(groups, _labels(groups)):
        mean, lo, hi = _band([[a * 100 for a in r.series("test_accuracy")] for r in group])
        first = group[0]
        if not first.config.private:
            eps = np.full(len(mean), np.nan)
            curves.append(Curve(f"{label}: final acc., non-private", eps, mean, lo, hi, False))
            continue
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
    """Figure 3. Runs without a finite eps are drawn as horizontal lines at their final
    accuracy: a non-private run (dotted, 'non-private') and a private run with sigma = 0
    (dash-dotted, 'eps=inf, no DP guarantee')."""
    curves, front = pareto_curves(runs, accountant=accountant)
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=_figsize(len(curves) + bool(front)))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, c in enumerate(sorted(curves, key=lambda c: c.baseline)):  # baselines last
            colour = colours[i % len(colours)]
            if c.baseline:
                ax.axhline(c.mean[-1], color=colour, linestyle="-." if c.private else ":",
                           linewidth=1.0, label=c.label)  # fmt: skip
                continue
            ax.plot(c.eps, c.mean, marker="o", markersize=2.5, color=colour, label=c.label)
            ax.fill_between(c.eps, c.lo, c.hi, color=colour, alpha=0.2, linewidth=0)
        if front:
            ax.step(*zip(*front), where="post", color="black", linestyle="--", linewidth=0.8,
                    label="Pareto frontier (all runs)")  # fmt: skip
        ax.set_xlabel(f"epsilon spent after each epoch ({accountant})")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_title(runs, accountant, chars=chars_that_fit(fig.get_figwidth(), 8)))
        ax.grid(alpha=0.3)
        legend_below(fig, ax)
        baselines = any(c.baseline for c in curves)
        _note(fig, f"{PARETO_NOTE} {BASELINE_NOTE}" if baselines else PARETO_NOTE)
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


# Figures 4 and 5 (`toolkit figures --kind`): the per-epoch field and its axis label.
TRACES = {
    "grad-norms": ("grad_norm.mean", "mean pre-clip per-example grad norm"),
    "act-norms": ("first_conv_activation_norm", "L2 norm of conv1 activations"),
}


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
    With `log`, the y axis is logarithmic and its label says so.
    """
    runs = with_epsilon(with_metric(runs, field, per_epoch=True), accountant)
    groups = sorted(group_by_setting(runs), key=lambda g: g[0].label)
    clips = []
    if field.startswith("grad_norm."):
        clips = sorted({r.config.clip_norm for r in runs if r.config.private})
        clips = [c for c in clips if math.isfinite(c)]
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=_figsize(len(groups) + len(clips)))
        for group, label in zip(groups, _labels(groups)):
            mean, lo, hi = _band([r.series(field) for r in group])
            epochs = np.arange(1, len(mean) + 1)
            first = group[0]
            if first.config.private:
                label += ", " + _eps_text(epsilon_value(first, first.summary.epsilon, accountant))
            style = "-" if first.config.private else ":"
            (line,) = ax.plot(epochs, mean, style, marker="o", markersize=2.5, label=label)
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        for c in clips:
            ax.axhline(c, color="black", linestyle="--", linewidth=0.8,
                       label=f"clipping norm C={c:g}")  # fmt: skip
        if log:
            log_axis(ax, "y")
            ylabel += " (log scale)"
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        height = ax.get_position().height * fig.get_figheight()
        ax.set_ylabel("\n".join(textwrap.wrap(ylabel, chars_that_fit(height, 8))))
        ax.set_title(
            _title(runs, accountant, chars=chars_that_fit(fig.get_figwidth(), 7)), fontsize=7
        )
        ax.grid(alpha=0.3, which="both")
        legend_below(fig, ax)
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


_GRID_AXES = ("scale s", "inverse temperature T", "offset o")


def grid_figure(runs: Sequence[Run], *, accountant: str, out: str | Path) -> list[Path]:
    """Figure 2: final accuracy against each of s, T and o, one point per run, coloured by
    accuracy (one colour scale for the three panels, and a colour bar when the accuracies
    differ), with the mean of the best 10% triplets in red. Warns when s, T or o takes
    fewer than two values: the panel is then no grid."""
    runs = with_epsilon(with_metric(runs, "test_accuracy"), accountant)
    table, best = best_triplets(runs)
    single = [f"{name} ({table[0, i]:g})" for i, name in enumerate(_GRID_AXES)
              if len(np.unique(table[:, i])) < 2]  # fmt: skip
    if single:
        warnings.warn(
            f"the grid figure has one value of {', '.join(single)} among its {len(table)} "
            f"tempered-sigmoid run(s): no grid along {'it' if len(single) == 1 else 'them'}; "
            "give runs with at least two values of each.",
            stacklevel=2,
        )
    eps = epsilon_value(runs[0], runs[0].summary.epsilon, accountant)
    accuracy = 100 * table[:, 3]
    norm = Normalize(accuracy.min(), accuracy.max())  # the same colour for a run everywhere
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(1, 3, figsize=(6.8, 2.3), sharey=True)
        for i, (ax, name) in enumerate(zip(axes, _GRID_AXES)):
            sc = ax.scatter(table[:, i], accuracy, c=accuracy, cmap="viridis", norm=norm, s=14)
            ax.axvline(best[i], color="red", linestyle="--", linewidth=0.8)
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        if len(np.unique(accuracy)) > 1:
            fig.colorbar(sc, ax=axes, label="test accuracy (%)", fraction=0.05)
        eps_text = _eps_text(eps) + (f" ({accountant})" if eps is not None else "")
        triplets = f"{len(table)} triplet{'s' if len(table) != 1 else ''}"
        fig.suptitle(
            f"{_title(runs, None)}: {triplets} at {eps_text}; red: mean of best 10% "
            f"(s={best[0]:.2f}, T={best[1]:.2f}, o={best[2]:.2f})"
        )
        x, y = space_below(fig, axes)
        fig.text(x, y, GRID_NOTE, ha="center", va="top", fontsize=6)
        written = save_figure(fig, out)
        plt.close(fig)
    return written
