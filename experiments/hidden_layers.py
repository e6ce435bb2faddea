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
from matplotlib.lines import Line2D

from analysis import hidden
from experiments.records import data_label
from toolkit.base import ToolkitError, atomic_write_json
from toolkit.base.plotting import PAPER_RC, legend_below, log_axis, save_figure
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
    dataset: str = ""  # the data and the part of it trained on (`records.data_label`)


def measure_stage(model, x, y, *, run: str, cfg, epoch: int, dataset: str = "") -> Stage:
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
        dataset=dataset,
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
        dataset = data_label(cfg, len(data.train_labels))
        stages.append(measure_stage(init_model(cfg, data), x, y, run=str(run), cfg=cfg,
                                    epoch=0, dataset=dataset))  # fmt: skip
        model = load_run(run, epoch=last).model
        stages.append(measure_stage(model, x, y, run=str(run), cfg=cfg, epoch=last,
                                    dataset=dataset))  # fmt: skip
    return stages


# (quantity, line style, marker) of the gradient panel: one colour per stage, one style
# per quantity, so that the legend has an entry for each rather than for each pair.
_MEASURED = ("measured max over the sample", "-", "o")
_BOUND = ("a-priori bound", "--", "^")
_DATA_BOUND = ("bound with measured activations (relu)", ":", "v")
_ACTIVATIONS = ("a1", "a2", "a3")


def figure(stages: list[Stage], out: Path) -> list[Path]:
    """Per-layer gradient norms against their bounds, and activation norms, for every
    stage (a run at an epoch): one colour per stage in both panels, one shared legend
    under them."""
    with plt.rc_context(PAPER_RC):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 2.8))
        xs = np.arange(len(hidden.LAYERS))
        stage_handles = []
        drawn = {_MEASURED}
        labels = [f"{s.activation} {'DP' if s.private else 'SGD'}, epoch {s.epoch}" for s in stages]
        if len(set(labels)) < len(labels):  # several runs of one kind: name each run
            labels = [f"{lab} ({Path(s.run).name})" for lab, s in zip(labels, stages)]
        for s, label in zip(stages, labels, strict=True):
            (line,) = ax1.plot(xs, [s.grad_max[k] for k in hidden.LAYERS], _MEASURED[1],
                               marker=_MEASURED[2], markersize=3)  # fmt: skip
            colour = line.get_color()
            finite = [s.bound_max[k] if np.isfinite(s.bound_max[k]) else np.nan
                      for k in hidden.LAYERS]  # fmt: skip
            if np.isfinite(finite).any():
                ax1.plot(xs, finite, _BOUND[1], marker=_BOUND[2], markersize=3, color=colour)
                drawn.add(_BOUND)
            if s.activation == "relu":  # only conv1's a-priori bound is finite
                ax1.plot(xs, [s.data_bound_max[k] for k in hidden.LAYERS], _DATA_BOUND[1],
                         marker=_DATA_BOUND[2], markersize=3, color=colour)  # fmt: skip
                drawn.add(_DATA_BOUND)
            ax2.plot(np.arange(len(_ACTIVATIONS)), [s.act_mean[k] for k in _ACTIVATIONS],
                     marker="o", markersize=3, color=colour)  # fmt: skip
            stage_handles.append(
                Line2D([], [], color=colour, marker="o", markersize=3, label=label)
            )
        ax1.set_xticks(xs, hidden.LAYERS)
        log_axis(ax1, "y")
        ax1.set_ylabel("per-example gradient norm\nof the layer (log scale)")
        ax1.set_title("measured vs bound (A, D, spectral norms, ||x||)")
        ax1.grid(alpha=0.3)
        ax2.set_xticks(np.arange(len(_ACTIVATIONS)), ["a1\n(conv1)", "a2\n(conv2)", "a3\n(fc1)"])
        log_axis(ax2, "y")
        ax2.set_ylabel("mean L2 norm of the\nactivation (log scale)")
        ax2.set_title("activation norms (tanh: <= sqrt(size) = 56, 28, 5.7)")
        ax2.grid(alpha=0.3)
        data = ", ".join(sorted({s.dataset for s in stages if s.dataset})) or "paper"
        fig.suptitle(f"{data} CNN, hidden layers ({DIAGNOSTIC_LABEL})", fontsize=7)
        fig.tight_layout()
        styles = [Line2D([], [], color="0.3", linestyle=style, marker=marker, markersize=3,
                         label=f"gradient panel: {name}")
                  for name, style, marker in (_MEASURED, _BOUND, _DATA_BOUND)
                  if (name, style, marker) in drawn]  # fmt: skip
        legend_below(fig, [ax1, ax2], handles=[*stage_handles, *styles])
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
