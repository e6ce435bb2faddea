"""The clipping-bias figures and printed lines of `toolkit bias`, from its results and the
runs' summaries only: no training here.

- `bias_figure`: the measured quantities over training (epoch 0: the initialisation),
  one colour per label (activation and training), one line style per training seed,
  95% bootstrap intervals as bands: fraction clipped, projection / C, cosine, the
  signal-to-noise ratio of one step, the mean pre-clip norm (log axis, with C).
- `relation_figure`: each run's final test accuracy (`test_accuracy` of its summary.json)
  against the mean over its trained checkpoints (epoch >= 1) of fraction clipped,
  projection / C, cosine, snr and the mean norm; one point per run, coloured by label,
  with the bootstrap interval of that mean (the same weights at every checkpoint of a run).
- `run_line`, `point_line`: a run and one point as the command prints them.

Definitions: `toolkit.studies._bias_stats`. Every number drawn here is a diagnostic of
private training data without noise (not covered by eps), and each figure says so.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from experiments.records import skip
from toolkit.base import ToolkitError
from toolkit.base.plotting import PAPER_RC, figure_files, log_axis, save_figure
from toolkit.runs import rundir
from toolkit.studies import BOOTSTRAPPED, DIAGNOSTIC_LABEL, BiasPoint, RunBias

# (field, axis label, axis scale) of the panels over training.
_TRACE_PANELS = (
    ("fraction_clipped", "fraction clipped (||g_i|| > C)", "linear"),
    ("projection", "projection / C: <gclip, gbar/||gbar||> / C", "linear"),
    ("cosine", "cos(gclip, gbar)", "linear"),
    ("snr", "snr of one step: projection C / (sigma C / B)", "snr"),
    ("mean_grad_norm", "mean ||g_i|| (pre-clip, log scale)", "log"),
)
_RELATION_PANELS = _TRACE_PANELS
_SEED_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
_SHORT = {"fraction_clipped": "clipped", "projection": "proj/C", "cosine": "cos",
          "norm_ratio": "ratio", "snr": "snr"}  # fmt: skip


def relation_path(out: str | Path) -> Path:
    """Where the relation figure goes beside OUT: OUT-relation(.png/.pdf)."""
    stem = figure_files(out)[0]
    return stem.with_name(stem.name.removesuffix(".png") + "-relation")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def run_line(result: RunBias) -> str:
    """The heading of a run's printed points: what it was measured at."""
    return (
        f"{result.run} ({result.label}, "
        f"{'' if result.private else f'C={result.clip_norm:g}, '}{_noise(result)}; "
        f"{result.sample_size} of {result.num_train} examples, R={result.bootstrap}):"
    )


def point_line(result: RunBias, point: BiasPoint) -> str:
    """`e4: clipped 0.464 [0.46, 0.468]  proj/C ...`: a point with its 95% intervals."""
    parts = []
    for field, short in _SHORT.items():
        value = getattr(point, field)
        if field == "snr" and result.noiseless:
            parts.append(f"{short} {_fmt(value)} (no noise: sigma = 0)")
            continue
        ci = point.ci.get(field)
        shown = f"{short} {_fmt(value)}"
        parts.append(shown + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""))
    parts.append(f"|noise|/|gclip| {_fmt(point.noise_norm_ratio)}")
    parts.append(f"mean ||g_i|| {_fmt(point.mean_grad_norm)}")
    return f"e{point.epoch}: " + "  ".join(parts)


def _colours(results: Sequence[RunBias]) -> dict[str, str]:
    labels = sorted({r.label for r in results})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {lab: cycle[i % len(cycle)] for i, lab in enumerate(labels)}


def _styles(results: Sequence[RunBias]) -> dict[int, object]:
    seeds = sorted({r.run_seed for r in results})
    return {s: _SEED_STYLES[i % len(_SEED_STYLES)] for i, s in enumerate(seeds)}


def _drawn(result: RunBias, field: str) -> bool:
    """snr is drawn only for runs with noise (without, it is inf)."""
    return not (field == "snr" and result.noiseless)


def _scale(ax, which: str, kind: str, values: list[float]) -> None:
    """The `which` ("x", "y") axis: log for `kind` "log"; for "snr", log when every value
    drawn is positive, else symmetric log (linear within +-1). Ticks written plainly, at
    most about five of them (the panels are narrow)."""
    finite = [v for v in values if math.isfinite(v)]
    axis = getattr(ax, f"{which}axis")
    if kind == "log" or (kind == "snr" and finite and min(finite) > 0):
        log_axis(ax, which)
    elif kind == "snr" and finite:
        getattr(ax, f"set_{which}scale")("symlog", linthresh=1.0)
        axis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    else:
        axis.set_major_locator(MaxNLocator(nbins=5))


def _note(results: Sequence[RunBias]) -> str:
    n = "/".join(sorted({str(r.sample_size) for r in results}))
    total = "/".join(sorted({str(r.num_train) for r in results}))
    reps = "/".join(sorted({str(r.bootstrap) for r in results}))
    bands = (
        f"bands and bars: 95% Poisson-bootstrap intervals over the examples (R={reps}), at "
        "fixed parameters"
        if any(r.bootstrap for r in results)
        else "no bootstrap intervals (R=0)"
    )
    noiseless = [r.run for r in results if r.noiseless]
    skipped = " snr not drawn for runs without noise (sigma = 0: inf)." if noiseless else ""
    return (
        f"Measured on {n} of {total} training examples; {bands}.{skipped} "
        f"{DIAGNOSTIC_LABEL[0].upper()}{DIAGNOSTIC_LABEL[1:]}."
    )


def _noise(r: RunBias) -> str:
    return "no noise" if r.noiseless else f"sigma={r.noise_multiplier:.3g}, B={r.batch_size}"


def _legend(ax, results: Sequence[RunBias]) -> None:
    """Colours (labels) and line styles (seeds) explained in their own panel."""
    ax.axis("off")
    colours, styles = _colours(results), _styles(results)
    first = {}
    for r in results:
        first.setdefault(r.label, r)
    handles = [
        Line2D([], [], color=colours[lab], label=f"{lab} ({_noise(r)})" if r.private
               else f"{lab} (C={r.clip_norm:g}, {_noise(r)})")
        for lab, r in sorted(first.items())
    ]  # fmt: skip
    handles += [Line2D([], [], color="0.3", linestyle=st, label=f"seed {s}")
                for s, st in styles.items()]  # fmt: skip
    ax.legend(handles=handles, loc="upper left", frameon=False, fontsize=6)


def _wrap(fig, text: str) -> None:
    fig.text(0.0, 0.0, "\n".join(textwrap.wrap(text, 140)), ha="left", va="top", fontsize=6,
             transform=fig.transFigure)  # fmt: skip


def bias_figure(results: Sequence[RunBias], *, out: str | Path) -> list[Path]:
    """The quantities over training for every run (module docstring); OUT.png and OUT.pdf."""
    if not results:
        raise ToolkitError("no bias results to draw.")
    colours, styles = _colours(results), _styles(results)
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(2, 3, figsize=(9, 5))
        for ax, (field, ylabel, kind) in zip(axes.flat, _TRACE_PANELS, strict=False):
            drawn = []
            for r in results:
                if not _drawn(r, field):
                    continue
                epochs = [p.epoch for p in r.points]
                values = [getattr(p, field) for p in r.points]
                ax.plot(epochs, values, linestyle=styles[r.run_seed], color=colours[r.label],
                        marker="o", markersize=2)  # fmt: skip
                drawn += values
                if field in BOOTSTRAPPED and all(field in p.ci for p in r.points):
                    lo, hi = zip(*(p.ci[field] for p in r.points), strict=True)
                    ax.fill_between(epochs, lo, hi, color=colours[r.label], alpha=0.15,
                                    linewidth=0)  # fmt: skip
                    drawn += [*lo, *hi]
            if field == "mean_grad_norm":
                for c in sorted({r.clip_norm for r in results}):
                    ax.axhline(c, color="black", linestyle="--", linewidth=0.7)
                    ax.annotate(f"C={c:g}", (0, c), xycoords=("axes fraction", "data"),
                                fontsize=6, va="bottom")  # fmt: skip
            if field in ("projection", "snr"):  # no progress along gbar; signal = noise
                ax.axhline(0 if field == "projection" else 1, color="0.5", linewidth=0.5)
            _scale(ax, "y", kind, drawn)
            ax.set_xlabel("epoch (0: initialisation)")
            ax.set_ylabel(ylabel, fontsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3, which="both")
        _legend(axes.flat[5], results)
        fig.suptitle("Clipping bias and step noise over training (diagnostic on private data, "
                     "not covered by eps)")  # fmt: skip
        fig.tight_layout()
        _wrap(fig, _note(results))
        written = save_figure(fig, out)
        plt.close(fig)
    return written


def _test_accuracy(result: RunBias) -> float | None:
    """The run's final test accuracy from its summary.json; None (and a warning) if none."""
    try:
        summary = rundir.read_summary(Path(result.run))
    except (OSError, ValueError, TypeError) as e:
        skip(result.run, f"its summary cannot be read ({e})")
        return None
    accuracy = None if summary is None else summary.test_accuracy
    if not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
        skip(result.run, "no test_accuracy in its summary.json (unfinished, or a --validation run)")
        return None
    return float(accuracy)


def training_mean(result: RunBias, field: str) -> tuple[float, tuple[float, float] | None]:
    """The mean of `field` over the trained checkpoints (epoch >= 1) and its 95% interval
    (the mean of each replicate over the checkpoints: the same weights at every one)."""
    points = [p for p in result.points if p.epoch >= 1] or result.points
    mean = float(np.mean([getattr(p, field) for p in points]))
    if not all(field in p.replicates for p in points) or not result.bootstrap:
        return mean, None
    reps = np.mean([p.replicates[field] for p in points], axis=0)
    lo, hi = np.quantile(reps, [0.025, 0.975], method="inverted_cdf")
    return mean, (float(lo), float(hi))


def relation_figure(results: Sequence[RunBias], *, out: str | Path) -> list[Path]:
    """Final test accuracy against the training means of the measured quantities
    (module docstring), one point per run; OUT.png and OUT.pdf. Runs without a test
    accuracy are left out with a warning naming them."""
    colours = _colours(results)
    with_accuracy = [(r, a) for r in results if (a := _test_accuracy(r)) is not None]
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(1, len(_RELATION_PANELS), figsize=(12, 2.8), sharey=True)
        for ax, (field, xlabel, kind) in zip(axes, _RELATION_PANELS, strict=True):
            drawn = []
            for r, accuracy in with_accuracy:
                if not _drawn(r, field):
                    continue
                mean, ci = training_mean(r, field)
                colour = colours[r.label]
                xerr = None if ci is None else [[max(0.0, mean - ci[0])], [max(0.0, ci[1] - mean)]]
                ax.errorbar([mean], [accuracy], xerr=xerr, fmt="o", markersize=3, color=colour,
                            elinewidth=0.8, capsize=1.5)  # fmt: skip
                if ci is not None and not ci[0] <= mean <= ci[1]:
                    # A percentile interval of a ratio (few replicates, a skewed statistic)
                    # need not hold the estimate: the part beyond the bar is drawn too.
                    ax.plot(ci, [accuracy, accuracy], color=colour, linewidth=0.8)
                drawn += [mean, *(ci or ())]
            _scale(ax, "x", kind, drawn)
            ax.set_xlabel(f"mean over training of\n{xlabel}", fontsize=6)
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel("final test accuracy")
        if not with_accuracy:
            axes[0].text(0.5, 0.5, "no run with a test accuracy", transform=axes[0].transAxes,
                         ha="center", fontsize=7)  # fmt: skip
        handles = [Line2D([], [], color=c, marker="o", linestyle="", label=lab)
                   for lab, c in colours.items()]  # fmt: skip
        axes[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5),
                        frameon=False)  # fmt: skip
        fig.suptitle("Final test accuracy against the clipping bias and step noise of the run")
        fig.tight_layout()
        _wrap(fig, "Means over the kept checkpoints (epoch >= 1). " + _note(results))
        written = save_figure(fig, out)
        plt.close(fig)
    return written
