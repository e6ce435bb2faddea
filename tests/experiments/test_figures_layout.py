"""Every figure reads at the size it is saved, with one, two and many runs: no two labels
overlap, no legend or note covers an axes (its data) or a label, tick labels stay apart,
and the axes fill a fair share of the canvas.

Boxes are the drawn extents (`get_window_extent` with the figure's renderer) at the
figure's own dpi, as `save_figure` writes it; two boxes overlap when they share more
than a pixel each way.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.transforms import Bbox

from analysis import hidden
from experiments import bias_plots, hidden_layers, plots, records
from tests.experiments.test_bias_plots import _result
from tests.run_fakes import fake_run, replace_config

SIZES = ("one", "two", "many")
EPOCHS = 8


def _overlap(a: Bbox, b: Bbox) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1


def _tick_labels(ax):
    """The tick labels drawn: visible, not empty, at a tick inside the view."""
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        lo, hi = sorted(lim)
        for locs, ticks in (
            (axis.get_majorticklocs(), axis.get_major_ticks),
            (axis.get_minorticklocs(), axis.get_minor_ticks),
        ):
            for loc, tick in zip(locs, ticks(len(locs)), strict=True):
                inside = lo - 1e-9 * abs(hi - lo) <= loc <= hi + 1e-9 * abs(hi - lo)
                if inside and tick.label1.get_visible() and tick.label1.get_text():
                    yield tick.label1


def _renderer(fig):
    """The renderer `save_figure` drew with (a closed figure gets its Agg canvas back)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def layout_problems(fig) -> list[str]:
    """What does not read in `fig`: each overlap, named."""
    renderer = _renderer(fig)
    data_axes = [ax for ax in fig.axes if ax.axison]
    # (owner, name, box): owner is an axes, a legend, or the figure.
    boxes = []
    for ax in fig.axes:
        labels = [ax.xaxis.label, ax.yaxis.label, ax.title, *_tick_labels(ax)]
        boxes += [(ax, f"{t.get_text()!r}", t.get_window_extent(renderer))
                  for t in labels if t.get_visible() and t.get_text()]  # fmt: skip
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    boxes += [(leg, "legend", leg.get_window_extent(renderer)) for leg in legends]
    texts = fig.texts  # the suptitle among them
    boxes += [(fig, f"{t.get_text()[:30]!r}", t.get_window_extent(renderer))
              for t in texts if t.get_text()]  # fmt: skip
    problems = []
    for i, (owner_a, a, box_a) in enumerate(boxes):
        for _, b, box_b in boxes[i + 1 :]:
            if _overlap(box_a, box_b):
                problems.append(f"{a} overlaps {b}")
        for ax in data_axes:
            if owner_a is not ax and _overlap(box_a, ax.get_window_extent(renderer)):
                problems.append(f"{a} covers the axes {ax.get_ylabel() or ax.get_xlabel()!r}")
    return problems


def canvas_share(fig) -> float:
    """The data axes' area over the saved canvas's (the tight box of the figure)."""
    renderer = _renderer(fig)
    canvas = fig.get_tightbbox(renderer)  # inches
    axes = sum(ax.get_window_extent(renderer).width * ax.get_window_extent(renderer).height
               for ax in fig.axes if ax.axison)  # fmt: skip
    return axes / fig.dpi**2 / (canvas.width * canvas.height)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the functions would save: {path: figure}."""
    figures = {}

    def keep(fig, out):
        figures[str(out)] = fig
        return []

    for module in (plots, bias_plots, hidden_layers):
        monkeypatch.setattr(module, "save_figure", keep)
    return figures


def _accs(base: float) -> tuple[float, ...]:
    return tuple(base + 0.3 * (1 - math.exp(-i / 3)) for i in range(EPOCHS))


def _eps() -> tuple[float, ...]:
    return tuple(2.7 * ((i + 1) / EPOCHS) ** 0.6 for i in range(EPOCHS))


def _norms(scale: float) -> tuple[float, ...]:
    return tuple(scale * (1 + 0.3 * i) for i in range(EPOCHS))


@pytest.fixture(scope="module")
def run_sets(tmp_path_factory) -> dict[str, list[records.Run]]:
    """One private run; a private and a non-private one; twelve settings of two seeds
    each (lr, activation, C), two non-private runs and a sigma = 0 run."""
    root = tmp_path_factory.mktemp("layout")
    common = dict(eps=_eps(), limit_train=500)
    sgd = dict(private=False, noise_multiplier=None, limit_train=500)
    fake_run(root / "one" / "a", accs=_accs(0.5), norms=_norms(1.0), **common)
    fake_run(root / "two" / "dp", accs=_accs(0.5), norms=_norms(1.0), **common)
    fake_run(root / "two" / "sgd", accs=_accs(0.6), norms=_norms(5.0), **sgd)
    k = 0
    for activation in ("tanh", "relu"):
        for lr in (0.5, 2.0, 4.0):
            for clip in (0.1, 1.0):
                for seed in (0, 1):
                    fake_run(root / "many" / f"{activation}-{lr}-{clip}-{seed}",
                             activation=activation, lr=lr, clip_norm=clip, seed=seed,
                             accs=_accs(0.3 + 0.03 * k + 0.01 * seed), norms=_norms(1 + k),
                             **common)  # fmt: skip
                k += 1
    for activation in ("tanh", "relu"):
        fake_run(root / "many" / f"sgd-{activation}", activation=activation, accs=_accs(0.6),
                 norms=_norms(20.0), **sgd)  # fmt: skip
    fake_run(root / "many" / "sigma0", noise_multiplier=0.0, eps=None, accs=_accs(0.55),
             norms=_norms(3.0), limit_train=500)  # fmt: skip
    return {size: records.find_runs([root / size]) for size in SIZES}


@pytest.fixture(scope="module")
def grid_sets(tmp_path_factory) -> dict[str, list[records.Run]]:
    """Tempered-sigmoid runs: one triplet, two, and a 3 x 3 x 2 grid."""
    root = tmp_path_factory.mktemp("grid")
    triplets = {
        "one": [(1.97, 2.27, 1.15)],
        "two": [(1.5, 2.0, 0.5), (2.5, 3.0, 1.0)],
        "many": [(s, t, o) for s in (1.5, 2.0, 2.5) for t in (1.0, 2.0, 3.0) for o in (0.5, 1.0)],
    }
    for size, points in triplets.items():
        for i, (s, t, o) in enumerate(points):
            out = root / size / f"r{i}"
            fake_run(out, activation="tempered", accs=(0.5, 0.6, 0.7 + 0.01 * (i % 7)))
            replace_config(out, activation={"name": "tempered", "scale": s, "inverse_temp": t,
                                            "offset": o})  # fmt: skip
    return {size: records.find_runs([root / size]) for size in SIZES}


@pytest.fixture
def bias_sets(tmp_path):
    many = [
        _result(tmp_path, "t0", "tanh", 0, accuracy=0.80),
        _result(tmp_path, "t1", "tanh", 1, shift=0.03, accuracy=0.81),
        _result(tmp_path, "r0", "relu", 0, shift=-0.1, accuracy=0.75),
        _result(tmp_path, "r1", "relu", 1, shift=-0.12, accuracy=0.74),
        _result(
            tmp_path, "tp0", "tempered(s=2.27,T=2.61,o=1.28)", 0, shift=0.05, accuracy=0.83
        ),  # fmt: skip
        _result(tmp_path, "sgd", "relu", 0, shift=-0.2, private=False, accuracy=0.9),
    ]
    return {"one": many[:1], "two": [many[0], many[2]], "many": many}


def _stage(activation: str, private: bool, epoch: int, k: int) -> hidden_layers.Stage:
    grads = {layer: 10.0 ** (1 - 0.3 * i) * (1 + k) for i, layer in enumerate(hidden.LAYERS)}
    bounds = {layer: 30 * g if activation != "relu" or i == 0 else math.inf
              for i, (layer, g) in enumerate(grads.items())}  # fmt: skip
    return hidden_layers.Stage(
        run=f"r{k}", activation=activation, private=private, epoch=epoch, grad_max=grads,
        grad_mean=grads, bound_max=bounds, data_bound_max={k: 5 * g for k, g in grads.items()},
        worst_ratio=dict.fromkeys(grads, 0.5), act_max_entry=dict.fromkeys(("a1", "a2", "a3"), 1.0),
        act_mean={"a1": 5.0 * (1 + k), "a2": 3.0 * (1 + k), "a3": 1.0 + k},
        dataset="fashion-mnist (first 1,024)",
    )  # fmt: skip


STAGES = {
    "one": [("tanh", True, 0), ("tanh", True, 6)],
    "two": [("tanh", True, 0), ("tanh", True, 6), ("relu", True, 0), ("relu", True, 6)],
    "many": [(a, p, e) for a in ("tanh", "relu") for p in (True, False) for e in (0, 6)],
}


def _draw(kind: str, size: str, run_sets, grid_sets, bias_sets, drawn):
    if kind == "pareto":
        plots.pareto_figure(run_sets[size], accountant="rdp-classic", out="f")
    elif kind in plots.TRACES:
        field, ylabel = plots.TRACES[kind]  # as `toolkit figures --kind` draws them
        plots.trace_figure(run_sets[size], field=field, ylabel=ylabel, out="f")
    elif kind == "grid":
        with pytest.warns(UserWarning) if size == "one" else _nothing():
            plots.grid_figure(grid_sets[size], accountant="rdp-classic", out="f")
    elif kind == "bias":
        bias_plots.bias_figure(bias_sets[size], out="f")
    elif kind == "relation":
        bias_plots.relation_figure(bias_sets[size], out="f")
    elif kind == "hidden":
        stages = [_stage(a, p, e, k) for k, (a, p, e) in enumerate(STAGES[size])]
        hidden_layers.figure(stages, Path("f"))
    return drawn["f"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


KINDS = ("pareto", "grad-norms", "act-norms", "grid", "bias", "relation", "hidden")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_no_label_legend_or_note_overlaps_another_or_an_axes(
    kind, size, run_sets, grid_sets, bias_sets, drawn
):
    fig = _draw(kind, size, run_sets, grid_sets, bias_sets, drawn)
    assert layout_problems(fig) == []


# The axes' least share of the canvas. With many settings the legend under the axes has
# a line for each (16 here), and the axes grow taller with it.
SHARE = {"one": 0.44, "two": 0.44, "many": 0.3}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ("pareto", "grad-norms"))
def test_axes_fill_their_share_of_the_canvas_and_legends_keep_its_width(
    kind, size, run_sets, drawn
):
    fig = _draw(kind, size, run_sets, None, None, drawn)
    assert canvas_share(fig) > SHARE[size]
    # A long legend label is wrapped: the canvas is as wide as the figure, with at most
    # its left edge's labels beyond it.
    canvas = fig.get_tightbbox(_renderer(fig))
    assert canvas.width <= fig.get_figwidth() + 0.1
