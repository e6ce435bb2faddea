"""Saving figures (PNG and PDF side by side, each written atomically), and the layout
helpers every figure shares: a legend under its axes that is never wider than they are,
and log axes whose ticks are written plainly."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on the machines this runs on

from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend import Legend
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from toolkit.base._io import atomic_write_bytes
from toolkit.base.outputs import file_set, writing

FIGURE_SUFFIXES = (".png", ".pdf")

# Paper-figure size: one column of a two-column paper is about 3.3 in wide.
PAPER_RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "figure.dpi": 200,
}
# Width of an average character, in font sizes (for wrapping labels to a width).
_CHAR_WIDTH = 0.55
_MAX_COLUMNS = 4


def figure_files(path: str | Path) -> list[Path]:
    """PATH.png and PATH.pdf; a .png or .pdf suffix on `path` is dropped, other dots kept."""
    return file_set(path, FIGURE_SUFFIXES)


def save_figure(fig: Figure, path: str | Path) -> list[Path]:
    """Write `fig` to `figure_files(path)`, each atomically; returns the paths."""
    written = figure_files(path)
    with writing("--out", Path(path)):
        written[0].parent.mkdir(parents=True, exist_ok=True)
        for target in written:
            buf = io.BytesIO()
            fig.savefig(buf, format=target.suffix[1:], bbox_inches="tight")
            atomic_write_bytes(target, buf.getvalue())
    return written


def chars_that_fit(width: float, fontsize: float) -> int:
    """About how many characters of `fontsize` points fit in `width` inches."""
    return int(width * 72 / (_CHAR_WIDTH * fontsize))


def log_axis(ax: Axes, which: str = "y") -> None:
    """Make `which` ("x" or "y") of `ax` logarithmic, ticks written plainly ("0.1", "20").

    Call it once the data are drawn: over a decade or more the ticks are 1, 2 and 5 x 10^k;
    over less (where those would leave one tick or none) they are evenly spaced numbers.
    """
    getattr(ax, f"set_{which}scale")("log")
    axis: Axis = getattr(ax, f"{which}axis")
    lo, hi = sorted(getattr(ax, f"get_{which}lim")())
    if hi >= 10 * lo:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def space_below(fig: Figure, axes: Axes | Sequence[Axes], pad: float = 0.05) -> tuple[float, float]:
    """(x, y) in figure fractions: the middle of `axes` (one, or several side by side) and
    `pad` inches below the lowest of their tick labels and axis labels, where a legend or
    a note covers nothing. Call it once the layout is final."""
    axes = [axes] if isinstance(axes, Axes) else list(axes)
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in axes]
    middle = (min(b.x0 for b in boxes) + max(b.x1 for b in boxes)) / 2
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in axes)
    x, y = fig.transFigure.inverted().transform((middle, bottom - pad * fig.dpi))
    return float(x), float(y)


def legend_below(
    fig: Figure,
    axes: Axes | Sequence[Axes],
    *,
    handles: Sequence | None = None,
    labels: Sequence[str] | None = None,
    pad: float = 0.05,
) -> Legend | None:
    """A legend under `axes` (one, or several side by side), below their tick labels.

    It covers no data and runs into no other label. Labels longer than the axes are wide
    are wrapped, and the entries fill as many columns as fit that width. `handles` and
    `labels` default to those of `axes`, each label once. Call it once the layout is
    final (after `tight_layout`); `pad` is the gap in inches. None when nothing is labelled.
    """
    axes = [axes] if isinstance(axes, Axes) else list(axes)
    if handles is None:
        seen: dict[str, object] = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
        handles, labels = list(seen.values()), list(seen)
    if not handles:
        return None
    if labels is None:
        labels = [h.get_label() for h in handles]
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in axes]
    width = max(b.x1 for b in boxes) - min(b.x0 for b in boxes)
    x, y = space_below(fig, axes, pad)
    size = FontProperties(size=matplotlib.rcParams["legend.fontsize"]).get_size_in_points()
    chars = max(20, chars_that_fit(width / fig.dpi, size))
    wrapped = ["\n".join(textwrap.wrap(str(lab), chars)) for lab in labels]

    def legend(ncol: int) -> Legend:
        return fig.legend(
            handles, wrapped, loc="upper center", bbox_to_anchor=(x, y),
            bbox_transform=fig.transFigure, ncol=ncol, frameon=False, borderaxespad=0,
        )  # fmt: skip

    for ncol in range(min(_MAX_COLUMNS, len(handles)), 1, -1):
        drawn = legend(ncol)
        if drawn.get_window_extent(renderer).width <= width:
            return drawn
        drawn.remove()
    return legend(1)
