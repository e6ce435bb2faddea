"""The clipping-bias figure (`toolkit bias`) from its records only: no training here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt

from toolkit.base.plotting import PAPER_RC, save_figure
from toolkit.studies import RunBias

_PANELS = (
    ("cosine", "cos(mean clipped grad, mean grad)"),
    ("norm_ratio", "||mean clipped|| / ||mean grad||"),
    ("fraction_clipped", "fraction clipped (||g_i|| > C)"),
)


def bias_figure(results: Sequence[RunBias], *, out: str | Path) -> list[Path]:
    """Cosine, norm ratio and fraction clipped over epochs for each run, and each layer's
    share of the clipped-away gradient at the last epoch measured."""
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(1, 4, figsize=(10, 2.5))
        for r in results:
            epochs = [p.epoch for p in r.points]
            style = "-" if r.private else "--"
            for ax, (field, _) in zip(axes, _PANELS, strict=False):
                ax.plot(epochs, [getattr(p, field) for p in r.points], style, marker="o",
                        markersize=2, label=f"{r.label} (C={r.clip_norm:g})")  # fmt: skip
        for ax, (_, ylabel) in zip(axes, _PANELS, strict=False):
            ax.set_xlabel("epoch (0: initialisation)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="lower left")
        ax = axes[3]
        layers = list(results[0].points[-1].layers) if results else []
        width = 0.8 / max(len(results), 1)
        for j, r in enumerate(results):
            last = r.points[-1]
            shares = [last.layers[k].bias_share if k in last.layers else np.nan for k in layers]
            ax.bar(np.arange(len(layers)) + j * width, shares, width,
                   label=f"{r.label}, epoch {last.epoch}")  # fmt: skip
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers)
        ax.set_ylabel("share of ||clipped-away grad||^2")
        ax.legend(fontsize=5)
        n = sorted({r.sample_size for r in results})
        fig.suptitle(
            f"Clipping bias on {'/'.join(map(str, n))} training examples "
            "(diagnostic on private data, not covered by eps)"
        )
        fig.tight_layout()
        written = save_figure(fig, out)
        plt.close(fig)
    return written
