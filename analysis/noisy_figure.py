"""The optimal-C study of `analysis.noisy` and its figure; run as `python -m analysis.noisy_figure`.

    python -m analysis.noisy_figure --out docs/figures/noisy_clipping_bias

runs DP-GD (q = 1) and DP-SGD (q = 0.1) on the `noisy` synthetic dataset
(n = 256, d = 5, seed 0, R = 1, K = 100 steps) for T in {1, 2, 4, 8},
sigma in {2, 8, 32} and 19 clipping norms C = T r, r in [1/256, 2] (half-octave steps),
64 Monte Carlo runs each, and writes OUT.json (every number), OUT.png and
OUT.pdf. The figure is drawn from the JSON record only. `--quick` shrinks
everything (for tests).
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

from analysis import noisy
from analysis.datasets import make_datasets
from analysis.precision import float64
from analysis.result import json_safe
from toolkit.base import atomic_write_bytes


@dataclasses.dataclass(frozen=True)
class Study:
    n: int = 256
    dim: int = 5
    seed: int = 0
    radius: float = 1.0
    steps: int = 100
    repetitions: int = 64
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    sigmas: tuple[float, ...] = (2.0, 8.0, 32.0)
    rates: tuple[float, ...] = (1.0, 0.1)
    # C / T, half-octave steps; C = T ratio (C >= T max||z|| never clips).
    clip_ratios: tuple[float, ...] = tuple(np.geomspace(1 / 256, 2, 19).tolist())


QUICK = Study(
    n=64,
    steps=30,
    repetitions=16,
    temperatures=(1.0, 4.0),
    sigmas=(8.0,),
    clip_ratios=(0.125, 0.5, 2.0),
)


@float64
def run_study(study: Study) -> dict:
    """Every curve of the study as a JSON-ready record."""
    data = {d.name: d for d in make_datasets(n=study.n, dim=study.dim, seed=study.seed)}["noisy"]
    curves = []
    for t in study.temperatures:
        cs = t * np.array(study.clip_ratios)
        ref = noisy.reference(data, inverse_temp=t, radius=study.radius, clip_norms=cs)
        for sigma in study.sigmas:
            for q in study.rates:
                setting = noisy.NoisySetting(
                    inverse_temp=t,
                    noise_multiplier=sigma,
                    sampling_prob=q,
                    steps=study.steps,
                    radius=study.radius,
                    repetitions=study.repetitions,
                    seed=study.seed,
                )
                cv = noisy.excess_curve(data, setting, cs, ref)
                lo, hi = cv.optimal_c_interval()
                curves.append(
                    {
                        "T": t,
                        "sigma": sigma,
                        "q": q,
                        "eps_rdp": cv.epsilon,
                        "C_opt": float(cs[cv.best_index]),
                        "C_opt_95": [lo, hi],
                        "C_opt_last": float(cs[int(np.argmin(cv.last_mean))]),
                        "clip_norms": cs,
                        **{
                            k: getattr(cv, k)
                            for k in (
                                "excess_mean",
                                "excess_half",
                                "last_mean",
                                "last_half",
                                "bias",
                                "optimisation",
                                "noise_mean",
                                "noise_half",
                                "bound",
                                "bst",
                                "certificate",
                            )
                        },
                    }
                )
    return json_safe(
        {
            "study": dataclasses.asdict(study),
            "dataset": "noisy",
            "max_norm": data.max_norm,
            "delta": noisy.DELTA,
            "curves": curves,
        }
    )


def draw(record: dict, *, detail_t: float, detail_sigma: float) -> Figure:
    """Two decomposition panels (q = 1 and the smallest q) and C*/T against T."""
    curves = record["curves"]
    rates = sorted({c["q"] for c in curves}, reverse=True)
    fig = Figure(figsize=(16, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, q in zip(axes[:2], (rates[0], rates[-1])):
        cv = next(
            c for c in curves if c["T"] == detail_t and c["sigma"] == detail_sigma and c["q"] == q
        )
        cs = np.array(cv["clip_norms"])
        m, h = np.array(cv["excess_mean"]), np.array(cv["excess_half"])
        ax.fill_between(cs, m - h, m + h, color="C0", alpha=0.25, lw=0)
        ax.plot(cs, m, "o-", color="C0", ms=3, label="E excess (avg. iterate), 95% CI")
        ax.plot(cs, cv["bias"], "s-", color="C3", ms=3, label="clipping bias (certified)")
        ax.plot(cs, cv["noise_mean"], "^-", color="C2", ms=3, label="noise term")
        ax.plot(cs, cv["optimisation"], "v-", color="C7", ms=3, label="optimisation term")
        bst = np.array(cv["bias"]) + np.array(cv["bst"])
        ax.plot(cs, bst, ":", color="k", label="bias + BST'14 scale (const. 1)")
        ax.axvline(cv["C_opt"], color="C0", ls="--", lw=0.8)
        ax.axvline(detail_t * record["max_norm"], color="C3", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        top = 1.3 * max(np.max(m + h), np.max(cv["bias"]))
        ax.set_ylim(min(0.0, 1.1 * np.min(cv["optimisation"])), top)
        kind = "DP-GD (full batch)" if q == 1 else f"DP-SGD (Poisson q={q:g})"
        ax.set_title(
            f"{kind}: T={detail_t:g}, sigma={detail_sigma:g}, eps={cv['eps_rdp']:.2g}\n"
            f"C*={cv['C_opt']:.3g} (blue dashes); T max||z|| (red dashes)",
            fontsize=9,
        )
        ax.set_xlabel("clipping norm C")
        ax.set_ylabel("excess empirical risk")
        ax.text(
            0.02,
            0.97,
            f"explicit bound >= {min(cv['bound']):.2g} (off scale)",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
        )
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower left", ncol=5, fontsize=8)

    ax = axes[2]
    temps = sorted({c["T"] for c in curves})
    sigmas = sorted({c["sigma"] for c in curves})
    for i, sigma in enumerate(sigmas):
        for q, style in zip((rates[0], rates[-1]), ("-", "--")):
            pts = sorted(
                (c for c in curves if c["sigma"] == sigma and c["q"] == q), key=lambda c: c["T"]
            )
            t = np.array([c["T"] for c in pts])
            best = np.array([c["C_opt"] for c in pts]) / t
            lo = best - np.array([c["C_opt_95"][0] for c in pts]) / t
            hi = np.array([c["C_opt_95"][1] for c in pts]) / t - best
            shift = 1.0 + 0.04 * (2 * i + (q != rates[0]) - len(sigmas))
            ax.errorbar(
                t * shift,
                best,
                yerr=[lo, hi],
                fmt="o" + style,
                color=f"C{i}",
                ms=4,
                capsize=2,
                label=f"sigma={sigma:g}, q={q:g} (eps={pts[0]['eps_rdp']:.2g})",
            )
    ratios = [c["clip_norms"][0] / c["T"] for c in curves]
    ax.axhline(min(ratios), color="gray", ls=":", lw=1)
    ax.axhline(record["max_norm"], color="C3", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set_xlabel("inverse temperature T")
    ax.set_ylabel("optimal C / T (bootstrap 95% range)")
    ax.set_title(
        "Optimal C / T of the averaged iterate\n(gray dots: smallest C/T on the grid; "
        "red dashes: max||z||, no clipping above)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8)
    fig.suptitle(
        f"Clipping bias with noise: tempered logistic regression, n={record['study']['n']}, "
        f"d={record['study']['dim']}, R={record['study']['radius']:g}, "
        f"K={record['study']['steps']} steps, eta=1/L, {record['study']['repetitions']} runs "
        f"per point; eps at delta={record['delta']:g} (rdp)",
        fontsize=10,
    )
    return fig


def write(record: dict, out: Path, *, detail_t: float, detail_sigma: float) -> list[Path]:
    """OUT.json, OUT.png, OUT.pdf (each written atomically)."""
    paths = [out.with_suffix(s) for s in (".json", ".png", ".pdf")]
    atomic_write_bytes(paths[0], (json.dumps(record, indent=1) + "\n").encode())
    fig = draw(record, detail_t=detail_t, detail_sigma=detail_sigma)
    for p, fmt in zip(paths[1:], ("png", "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150)
        atomic_write_bytes(p, buf.getvalue())
    return paths


def summary(record: dict) -> str:
    """One line per (T, sigma, q): eps, C*, its bootstrap range, and the decomposition at C*."""
    lines = [
        "T     sigma  q     eps     C*      C*/T    95% C*          excess   bias     noise    "
        "C*(last)"
    ]
    for c in record["curves"]:
        i = c["clip_norms"].index(c["C_opt"])
        lines.append(
            f"{c['T']:<5g} {c['sigma']:<6g} {c['q']:<5g} {c['eps_rdp']:<7.3g} {c['C_opt']:<7.3g} "
            f"{c['C_opt'] / c['T']:<7.3g} {c['C_opt_95'][0]:<6.3g}-{c['C_opt_95'][1]:<8.3g} "
            f"{c['excess_mean'][i]:<8.3g} {c['bias'][i]:<8.2g} {c['noise_mean'][i]:<8.2g} "
            f"{c['C_opt_last']:.3g}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.noisy_figure", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="OUT -> OUT.{json,png,pdf}")
    parser.add_argument("--quick", action="store_true", help="tiny study (seconds)")
    args = parser.parse_args(argv)
    out = args.out.with_suffix("") if args.out.suffix in (".png", ".pdf", ".json") else args.out
    if not out.resolve().parent.is_dir():
        print(f"error: --out={args.out}: directory {out.parent} does not exist.", file=sys.stderr)
        return 2
    study = QUICK if args.quick else Study()
    record = run_study(study)
    detail_t = 4.0 if 4.0 in study.temperatures else study.temperatures[-1]
    detail_sigma = 8.0 if 8.0 in study.sigmas else study.sigmas[-1]
    for p in write(record, out, detail_t=detail_t, detail_sigma=detail_sigma):
        print(f"wrote {p}")
    print(summary(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
