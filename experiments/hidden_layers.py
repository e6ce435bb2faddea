"""Hidden-layer gradient bounds (`analysis.hidden`) against per-layer norms measured on real
training examples, at initialisation and at the end of training, tanh vs ReLU.

    python -m experiments.hidden_layers runs/bias/dp-tanh runs/bias/dp-relu \
        --sample 256 --out docs/figures/hidden-layers

For each run: a fixed sample of its training examples (seed 0), the initial model (from
the run's seed) and the final checkpoint. Writes OUT.json and OUT.png/.pdf. The measured
numbers are diagnostics on private data (not covered by eps); the JSON (`diagnostic`), the
figure's title and the printed output say so. The a-priori bounds are functions of the
weights and of ||x|| of each sampled example, so their max over the sample is a
diagnostic too.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx
from matplotlib import pyplot as plt

from analysis import hidden
from toolkit.base import ToolkitError, atomic_write_json
from toolkit.base.plotting import PAPER_RC, save_figure
from toolkit.studies import DIAGNOSTIC_LABEL, check_run
from toolkit.training import init_model, load_data, load_run, model_inputs


@dataclasses.dataclass(frozen=True)
class Stage:
    """One model (a run at one epoch) measured on the sample; per layer, max/mean over it."""

    run: str
    activation: str
    private: bool
    epoch: int
    grad_max: dict[str, float]
    grad_mean: dict[str, float]
    bound_max: dict[str, float]  # a priori (inf for ReLU's upper layers), max over examples
    data_bound_max: dict[str, float]  # measured forward factors, a priori backward chain
    worst_ratio: dict[str, float]  # max_i measured_i / bound_i (a priori)
    act_mean: dict[str, float]  # mean ||activation|| per layer ("a1", "a2", "a3")
    act_max_entry: dict[str, float]  # largest |activation entry| seen


def measure_stage(model, x, y, *, run: str, cfg, epoch: int) -> Stage:
    m = hidden.measure(model, x, y)
    params = nnx.state(model, nnx.Param)
    slope = hidden.slope_of(cfg.activation)
    bounds = [hidden.layer_bounds(params, slope, float(n)) for n in m["act_x"]]
    data = [
        hidden.data_dependent_bounds(params, slope, {k: m[f"fwd_{k}"][i] for k in hidden.LAYERS})
        for i in range(len(y))
    ]
    acts = hidden.intermediates(model, x)
    return Stage(
        run=run, activation=cfg.activation.label, private=cfg.private, epoch=epoch,
        grad_max={k: float(m[k].max()) for k in hidden.LAYERS},
        grad_mean={k: float(m[k].mean()) for k in hidden.LAYERS},
        bound_max={k: max(b[k] for b in bounds) for k in hidden.LAYERS},
        data_bound_max={k: max(b[k] for b in data) for k in hidden.LAYERS},
        worst_ratio={k: float(max(m[k][i] / bounds[i][k] for i in range(len(y))))
                     for k in hidden.LAYERS},
        act_mean={k: float(m[f"act_{k}"].mean()) for k in ("a1", "a2", "a3")},
        act_max_entry={k: float(np.abs(np.asarray(acts[k])).max()) for k in ("a1", "a2", "a3")},
    )  # fmt: skip


def compare(
    runs: list[Path], *, sample: int, seed: int = 0, epoch: int | None = None
) -> list[Stage]:
    """Each run at initialisation and at `epoch` (default: its last kept checkpoint)."""
    stages = []
    for run in runs:
        cfg, kept, _ = check_run(run, clip_norm=1.0)  # C unused here
        if not cfg.paper_model:
            raise ToolkitError(
                f"{run} trains model={cfg.model}; the hidden-layer bounds (analysis.hidden) "
                "are those of the paper CNN's layers."
            )
        data = load_data(cfg)
        idx = np.sort(np.random.default_rng(seed).choice(len(data.train_labels), sample, False))
        x, y = model_inputs(data, data.train_images[idx]), data.train_labels[idx]
        last = max(kept) if epoch is None else epoch
        stages.append(measure_stage(init_model(cfg, data), x, y, run=str(run), cfg=cfg,
                                    epoch=0))  # fmt: skip
        model = load_run(run, epoch=last).model
        stages.append(measure_stage(model, x, y, run=str(run), cfg=cfg, epoch=last))
    return stages


def figure(stages: list[Stage], out: Path) -> list[Path]:
    with plt.rc_context(PAPER_RC):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 2.8))
        xs = np.arange(len(hidden.LAYERS))
        for s in stages:
            kind = "DP" if s.private else "SGD"
            label = f"{s.activation} {kind} epoch {s.epoch}"
            (line,) = ax1.plot(xs, [s.grad_max[k] for k in hidden.LAYERS], marker="o",
                               markersize=3, label=f"{label}: measured max")  # fmt: skip
            finite = [s.bound_max[k] if np.isfinite(s.bound_max[k]) else np.nan
                      for k in hidden.LAYERS]  # fmt: skip
            ax1.plot(
                xs,
                finite,
                "--",
                marker="^",
                markersize=3,
                color=line.get_color(),
                label=f"{label}: a-priori bound" if s.activation != "relu" else None,
            )
            if s.activation == "relu":
                ax1.plot(xs, [s.data_bound_max[k] for k in hidden.LAYERS], ":", marker="v",
                         markersize=3, color=line.get_color(),
                         label=f"{label}: bound with measured activations")  # fmt: skip
            ax2.plot(["a1 (conv1)", "a2 (conv2)", "a3 (fc1)"],
                     [s.act_mean[k] for k in ("a1", "a2", "a3")], marker="o", markersize=3,
                     color=line.get_color(), label=label)  # fmt: skip
        ax1.set_xticks(xs, hidden.LAYERS)
        ax1.set_yscale("log")
        ax1.set_ylabel("per-example gradient norm of the layer")
        ax1.set_title("measured (max over sample) vs bound (A, D, spectral norms, ||x||)")
        ax1.legend(fontsize=4.5, loc="lower left")
        ax1.grid(alpha=0.3)
        ax2.set_yscale("log")
        ax2.set_ylabel("mean L2 norm of the activation")
        ax2.set_title("activation norms (tanh: <= sqrt(size) = 56, 28, 5.7)")
        ax2.legend(fontsize=5)
        ax2.grid(alpha=0.3)
        fig.suptitle(f"Fashion-MNIST CNN, hidden layers ({DIAGNOSTIC_LABEL})", fontsize=7)
        fig.tight_layout()
        written = save_figure(fig, out)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--sample", type=int, default=256)
    p.add_argument("--epoch", type=int, default=None, help="kept checkpoint (default: last)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    stages = compare(args.runs, sample=args.sample, epoch=args.epoch)
    atomic_write_json(args.out.with_suffix(".json"), {
        "diagnostic": DIAGNOSTIC_LABEL, "stages": [dataclasses.asdict(s) for s in stages]
    })  # fmt: skip
    print(f"measured on training examples: {DIAGNOSTIC_LABEL}")
    for s in stages:
        print(s.activation, "DP" if s.private else "SGD", "epoch", s.epoch)
        for k in hidden.LAYERS:
            print(f"  {k}: measured max {s.grad_max[k]:.4g} mean {s.grad_mean[k]:.4g} "
                  f"bound {s.bound_max[k]:.4g} data-bound {s.data_bound_max[k]:.4g} "
                  f"worst ratio {s.worst_ratio[k]:.3g}")  # fmt: skip
        print("  act mean", {k: round(v, 3) for k, v in s.act_mean.items()},
              "max entry", {k: round(v, 3) for k, v in s.act_max_entry.items()})  # fmt: skip
    print(figure(stages, args.out))


if __name__ == "__main__":
    main()
