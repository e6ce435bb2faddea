"""Saving figures: PNG and PDF side by side, each written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on the machines this runs on

from matplotlib.figure import Figure

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
