"""Saving figures: PNG and PDF side by side, each written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on the machines this runs on

from matplotlib.figure import Figure

from toolkit.io import atomic_write_bytes

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


def save_figure(fig: Figure, path: str | Path) -> list[Path]:
    """Write `fig` to PATH.png and PATH.pdf (any suffix on `path` is replaced)."""
    stem = Path(path)
    if stem.suffix.lower() in (".png", ".pdf"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight")
        target = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(target, buf.getvalue())
        written.append(target)
    return written
