"""Figure of `analysis.multiclass`; run as `python -m analysis.multiclass_figure --out OUT`.

    python -m analysis.multiclass_figure --out docs/figures/multiclass_clipping_bias

Solves the bound-check grid (four datasets, n = 64, d = 5, k = 3, T in {0.5, 1, 2, 4, 8},
C in {0.1, 0.5, 1, 2}, R = 1) in multiclass and, on the same features with binary
labels (`analysis.datasets`), the Theorem 1 grid, plus the threshold witness for
C / (sqrt2 T max||z||) from 0.5 to 1. Writes OUT.json (every number), OUT.png, OUT.pdf;
the figure is drawn from the JSON record only. About 20 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analysis import multiclass as mc
from analysis import theorem1
from analysis.datasets import make_datasets
from analysis.precision import EPS
from analysis.result import json_safe
from toolkit.base import atomic_write_bytes

TEMPERATURES = (0.5, 1.0, 2.0, 4.0, 8.0)
CLIP_NORMS = (0.1, 0.5, 1.0, 2.0)
WITNESS_FRACTIONS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
TOL = 1e-10


def run(*, n: int = 64, dim: int = 5, seed: int = 0) -> dict:
    """The multiclass grid, the binary grid on the same features, the witness sweep."""
    multi = mc.run_grid(
        mc.make_multiclass_datasets(n=n, dim=dim, classes=3, seed=seed),
        temperatures=TEMPERATURES,
        clip_norms=CLIP_NORMS,
        radius=1.0,
        tol=TOL,
    )
    binary = theorem1.run_grid(
        make_datasets(n=n, dim=dim, seed=seed),
        temperatures=TEMPERATURES,
        clip_norms=CLIP_NORMS,
        radius=1.0,
        tol=TOL,
    )
    w = mc.threshold_witness(n_major=mc.WITNESS_N_MAJOR, scale=mc.WITNESS_SCALE)
    thr = mc.SQRT2 * mc.WITNESS_T * w.max_norm
    sweep = mc.solve_cells(
        [(w.name, w.z, w.y, mc.WITNESS_T, f * thr) for f in WITNESS_FRACTIONS],
        classes=3,
        radius=mc.WITNESS_R,
        tol=1e-12,
    )
    return json_safe(
        {
            "multiclass": [dataclasses.asdict(c) for c in multi],
            "binary": [
                {
                    "dataset": c.dataset,
                    "inverse_temp": c.inverse_temp,
                    "clip_norm": c.clip_norm,
                    "excess": c.excess,
                    "certificate": c.cert_clipped + c.cert_unclipped,
                }
                for c in binary
            ],
            "witness": {
                "T": mc.WITNESS_T,
                "R": mc.WITNESS_R,
                "fractions": WITNESS_FRACTIONS,
                "excess": [c.excess for c in sweep],
                "certified": all(c.certified for c in sweep),
            },
        }
    )


def draw(record: dict) -> Figure:
    fig = Figure(figsize=(16, 3.9), layout="constrained")
    axes = fig.subplots(1, 5)
    multi, binary = record["multiclass"], record["binary"]
    names = list(dict.fromkeys(c["dataset"] for c in multi))
    for ax, name in zip(axes[:4], names):
        for j, c in enumerate(CLIP_NORMS):
            pts = sorted(
                (x for x in multi if x["dataset"] == name and x["clip_norm"] == c),
                key=lambda x: x["inverse_temp"],
            )
            t = np.array([x["inverse_temp"] for x in pts])
            e = np.array([x["excess"] for x in pts])
            # Certified positive only: e above the rounding of the two risks.
            pos = e > mc.ROUNDING_ULPS * EPS * np.array([x["risk"] for x in pts])
            ax.plot(t[pos], e[pos], "o-", color=f"C{j}", ms=4, label=f"softmax, C={c:g}")
            b = sorted(
                (x for x in binary if x["dataset"] == name and x["clip_norm"] == c),
                key=lambda x: x["inverse_temp"],
            )
            eb = np.array([x["excess"] for x in b])
            pos = eb > np.array([x["certificate"] for x in b])
            ax.plot(t[pos], eb[pos], "x:", color=f"C{j}", ms=4, label=f"binary, C={c:g}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(TEMPERATURES, [f"{t:g}" for t in TEMPERATURES])
        ax.set_xlabel("inverse temperature T")
        ax.set_title(f"{name}: excess (only certified > 0 drawn)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("L(theta_c) - L*")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=8, fontsize=8)

    ax = axes[4]
    w = record["witness"]
    f, e = np.array(w["fractions"]), np.array(w["excess"])
    ax.plot(f[e > 0], e[e > 0], "o-", color="k", ms=4)
    for fz in f[e == 0]:
        ax.axvline(fz, color="C3", ls="--", lw=1)
    ax.axvline(1 / np.sqrt(2), color="gray", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("C / (sqrt2 T max||z||)")
    ax.set_title(
        f"witness, k=3, T={w['T']:g}, R={w['R']:g}\nred: excess exactly 0; gray: C = T max||z||",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        "Multiclass (softmax, k=3) clipped-GD excess risk vs the binary problem on the same "
        "features (n=64, d=5, R=1); certified to the fixed-point residual 1e-10",
        fontsize=10,
    )
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.multiclass_figure", description=__doc__
    )
    parser.add_argument("--out", type=Path, required=True, help="OUT -> OUT.{json,png,pdf}")
    args = parser.parse_args(argv)
    out = args.out.with_suffix("") if args.out.suffix in (".png", ".pdf", ".json") else args.out
    if not out.resolve().parent.is_dir():
        print(f"error: --out={args.out}: directory {out.parent} does not exist.", file=sys.stderr)
        return 2
    record = run()
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    fig = draw(record)
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150)
        atomic_write_bytes(out.with_suffix(f".{fmt}"), buf.getvalue())
    for s in (".json", ".png", ".pdf"):
        print(f"wrote {out.with_suffix(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
