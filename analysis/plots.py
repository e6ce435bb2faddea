"""Figures for `bound-check --plot PATH`: Theorem 1 on the grid, and the tightness search.

Drawn from a `SuiteResult` only (no recomputation beyond evaluating the witness
objective along its line). `matplotlib.figure.Figure` is used directly, so no
pyplot state or backend switch leaks into the process.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from analysis import solvers
from analysis.suite import SuiteResult
from analysis.tightness import describe_witness, witness_dataset
from toolkit.base import atomic_write_bytes
from toolkit.base.outputs import file_set


def figure_paths(path: str | os.PathLike) -> list[Path]:
    """The four files `--plot PATH` writes: PATH.{png,pdf} and PATH-tightness.{png,pdf}.

    A .png or .pdf suffix on PATH is dropped; any other dot is part of the name.
    """
    main = file_set(path, (".png", ".pdf"))
    tight = file_set(main[0].with_name(main[0].name[: -len(".png")] + "-tightness"),
                     (".png", ".pdf"))  # fmt: skip
    return [*main, *tight]


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Label 1-2-5 ticks on a log axis spanning [lo, hi] (the default labels overlap)."""
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
    ]
    axis.set_major_locator(FixedLocator([t for t in ticks if lo / 1.5 <= t <= hi * 1.5]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig: Figure, png: Path, pdf: Path) -> None:
    for target, fmt in ((png, "png"), (pdf, "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        atomic_write_bytes(target, buf.getvalue())


def theorem1_figure(result: SuiteResult) -> Figure:
    """Excess risk and bounds against T - C (log-log), one panel per dataset, one colour per C."""
    cells = result.cells
    names = list(dict.fromkeys(c.dataset for c in cells))
    clips = sorted({c.clip_norm for c in cells})
    colours = {c: f"C{i}" for i, c in enumerate(clips)}
    radius = result.config.radius
    positive = [c for c in cells if c.inverse_temp > c.clip_norm]

    def is_zero(c) -> bool:  # zero to the certificate
        return c.excess <= c.cert_clipped + c.cert_unclipped

    nonzero = [c.excess for c in positive if not is_zero(c)]
    floor = 10 ** math.floor(math.log10(min(nonzero) / 10)) if nonzero else 1e-8
    x_all = [c.inverse_temp - c.clip_norm for c in positive] or [1.0]

    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(5.2 * cols, 4.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    xs = np.geomspace(min(x_all), max(x_all), 50)
    for ax, name in zip(axes, names):
        ax.plot(xs, 4 * radius * xs, color="black", lw=2)
        for clip in clips:
            s = sorted(
                (c for c in positive if c.dataset == name and c.clip_norm == clip),
                key=lambda c: c.inverse_temp,
            )
            if not s:
                continue
            x = np.array([c.inverse_temp - c.clip_norm for c in s])
            ex = np.array([c.excess for c in s])
            g = np.array([c.sharpened for c in s])
            zero = np.array([is_zero(c) for c in s])
            col = colours[clip]
            ax.plot(x, np.where(g > 0, g, np.nan), color=col, ls="--", lw=1)
            ax.plot(x, np.where(zero, np.nan, ex), color=col, marker="o", ms=5)
            ax.plot(x[zero], np.full(zero.sum(), floor), color=col, marker="v", ls="none", ms=7)
        n_zero = sum(1 for c in cells if c.dataset == name and c.inverse_temp <= c.clip_norm)
        ax.set_title(f"{name}\n({n_zero} cells with T <= C: excess 0, not drawn)", fontsize=10)
        if not positive:
            ax.text(0.5, 0.5, "no cell with T > C", transform=ax.transAxes, ha="center")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax.xaxis, min(x_all), max(x_all))
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols :]:
        ax.set_xlabel("T - C")
    for ax in axes[::cols]:
        ax.set_ylabel("L_T(theta_clipped) - min L_T")
    handles = [
        Line2D([], [], color="black", lw=2, label="Theorem 1 bound 2(T-C)·2R"),
        Line2D([], [], color="gray", ls="--", label="sharpened bound G(T,C,R)"),
        Line2D([], [], color="gray", marker="o", label="measured excess risk"),
        Line2D(
            [],
            [],
            color="gray",
            marker="v",
            ls="none",
            label=f"excess 0 to certificate (drawn at {floor:g})",
        ),
    ] + [Line2D([], [], color=colours[c], lw=3, label=f"C = {c:g}") for c in clips]
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    if result.config.data:
        sizes = "; ".join(
            f"{d.name}: n={d.z.shape[0]}, d={d.z.shape[1]}" for d in result.config.data
        )
    else:
        sizes = f"n={result.config.n}, d={result.config.dim}"
    fig.suptitle(
        f"Theorem 1: clipping bias vs bound (R={radius:g}, {sizes}; colour = C, "
        "T grows to the right)"
    )
    return fig


def _witness_panel(ax, best, config) -> None:
    """L_T and the huberised surrogate along the best witness's line, with both minimisers."""
    z, y, e = witness_dataset(best, dim=config.dim, seed=config.seed)
    s = np.linspace(-best.radius, best.radius, 401)
    f = [solvers.objective(v * e, z, y, inverse_temp=best.inverse_temp) for v in s]
    fh = [
        solvers.surrogate_value_and_grad(
            v * e, z, y, inverse_temp=best.inverse_temp, clip_norm=best.clip_norm
        )[0]
        for v in s
    ]
    ax.plot(s, f, color="C0", lw=2, label="L_T (true objective)")
    ax.plot(s, fh, color="C1", ls="--", lw=2, label="huberised surrogate (clipped GD)")
    ax.axvline(best.theta_clipped, color="C1", ls=":", label="theta_clipped")
    ax.axvline(best.theta_star, color="C0", ls=":", label="theta* = argmin L_T")
    f_c = solvers.objective(best.theta_clipped * e, z, y, inverse_temp=best.inverse_temp)
    f_s = solvers.objective(best.theta_star * e, z, y, inverse_temp=best.inverse_temp)
    ax.annotate(
        "",
        xy=(best.theta_clipped, f_s),
        xytext=(best.theta_clipped, f_c),
        arrowprops={"arrowstyle": "<->", "color": "C3"},
    )
    ax.text(
        best.theta_clipped + 0.03 * best.radius,
        (f_c + f_s) / 2,
        f"excess {best.excess:.3g}\n(bound {best.bound:.3g})",
        color="C3",
    )
    ax.set_xlabel("theta along the witness direction")
    ax.set_ylabel("objective")
    ax.set_title(
        f"Witness: T={best.inverse_temp:g}, C={best.clip_norm:g}, ratio {best.ratio:.3f}\n"
        + describe_witness(best),
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def tightness_figure(result: SuiteResult) -> Figure:
    """Left: best ratio found and the sharpened ceiling vs C/T. Right: the best witness."""
    found = result.tightness
    if not found:
        skip = next((s for s in result.skipped if s.name.startswith("5 tightness")), None)
        fig = Figure(figsize=(6, 2), layout="constrained")
        ax = fig.subplots()
        ax.text(
            0.5,
            0.5,
            "No (T, C) pair with T > C: the bound is 0, nothing to search."
            if skip is None
            else "Tightness search skipped on your data:\n" + textwrap.fill(skip.reason, 60),
            ha="center",
            va="center",
        )
        ax.set_axis_off()
        return fig
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    temps = sorted({r.inverse_temp for r in found})
    for i, t in enumerate(temps):
        s = sorted((r for r in found if r.inverse_temp == t), key=lambda r: r.clip_norm)
        x = [r.clip_norm / t for r in s]
        left.plot(x, [r.ratio for r in s], color=f"C{i}", marker="o")
        left.plot(x, [r.ceiling_ratio for r in s], color=f"C{i}", ls="--", marker="^", mfc="none")
    left.axhline(1.0, color="black", lw=2)
    left.axhline(0.25, color="black", ls=":")  # proved: excess <= G < bound / 4
    left.axhline(0.125, color="black", ls="-.")  # the witness family's limit (analysis.sharp)
    left.set_xscale("log")
    left.set_yscale("log")
    xs = [r.clip_norm / r.inverse_temp for r in found]
    _log_ticks(left.xaxis, min(xs), max(xs))
    left.set_xlabel("C / T")
    left.set_ylabel("excess / (2(T-C)·2R)")
    left.set_title(f"Largest excess/bound found, per (T, C)  (R={result.config.radius:g})")
    left.grid(True, which="major", alpha=0.3)
    handles = [
        Line2D([], [], color="gray", marker="o", label="best dataset found"),
        Line2D(
            [],
            [],
            color="gray",
            ls="--",
            marker="^",
            mfc="none",
            label="ceiling G/bound (no dataset can exceed)",
        ),
        Line2D([], [], color="black", lw=2, label="Theorem 1 (ratio 1)"),
        Line2D([], [], color="black", ls=":", label="1/4: proved, no dataset reaches it"),
        Line2D([], [], color="black", ls="-.", label="1/8: witness limit (analysis.sharp)"),
    ] + [Line2D([], [], color=f"C{i}", lw=3, label=f"T = {t:g}") for i, t in enumerate(temps)]
    left.legend(handles=handles, fontsize=7, ncol=2, loc="lower left")

    _witness_panel(right, max(found, key=lambda r: r.ratio), result.config)
    return fig


def write_figures(result: SuiteResult, path: str | os.PathLike) -> list[Path]:
    """Write both figures as PNG and PDF next to PATH (see `figure_paths`); returns the paths."""
    paths = figure_paths(path)
    _save(theorem1_figure(result), paths[0], paths[1])
    _save(tightness_figure(result), paths[2], paths[3])
    return paths
