"""`toolkit.studies` bias against an independent computation; `toolkit bias` end to end; the
bias of `toolkit.fit` runs: a factory and a data file named in the record, or objects
given in Python again."""

from __future__ import annotations

import json
import re
import shutil

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from typer.testing import CliRunner

import toolkit
from tests import zoo
from toolkit.base import ToolkitError
from toolkit.cli import app
from toolkit.data import to_float
from toolkit.runs import RunConfig, rundir
from toolkit.studies import _bias as bias
from toolkit.training import train

runner = CliRunner()


class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(5, 4, rngs=rngs)
        self.fc2 = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.numpy.tanh(self.fc1(x)))


def _loop_reference(model, x, y, clip_norm):
    """Per-example gradients one example at a time (nnx.grad), clipped and averaged in numpy."""
    grads = []
    for xi, yi in zip(x, y, strict=True):

        def loss(m, xi=xi, yi=yi):
            return optax.softmax_cross_entropy_with_integer_labels(m(xi[None]), yi[None])[0]

        g = nnx.grad(loss)(model)
        grads.append({
            layer: np.concatenate([np.asarray(g[layer][p][...], np.float64).ravel()
                                   for p in ("kernel", "bias")])
            for layer in ("fc1", "fc2")
        })  # fmt: skip
    norms = np.array([np.sqrt(sum(np.sum(v**2) for v in g.values())) for g in grads])
    scale = np.minimum(1.0, clip_norm / norms)
    mean = {k: np.mean([g[k] for g in grads], axis=0) for k in ("fc1", "fc2")}
    clipped = {k: np.mean([s * g[k] for s, g in zip(scale, grads, strict=True)], axis=0)
               for k in mean}  # fmt: skip
    return norms, mean, clipped


@pytest.mark.slow
def test_measure_matches_an_explicit_per_example_loop():
    model = _Tiny(nnx.Rngs(0))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(13, 5)).astype(np.float32) * 3
    y = rng.integers(0, 3, size=13).astype(np.int32)
    norms, mean, clipped = _loop_reference(model, x, y, 1.0)
    s = np.sort(norms)  # C halfway between two norms: about half clipped, no float ties
    clip_norm = float((s[6] + s[7]) / 2)
    norms, mean, clipped = _loop_reference(model, x, y, clip_norm)
    got = bias.measure(model, x, y, clip_norm=clip_norm, chunk=5)  # 3 chunks, the last short

    gb, gc = (
        np.concatenate([mean["fc1"], mean["fc2"]]),
        np.concatenate([clipped["fc1"], clipped["fc2"]]),
    )
    # float32 gradients summed in float64: agreement to ~1e-6 relative; 1e-5 leaves room.
    tol = dict(rel=1e-5, abs=1e-6)
    assert got.cosine == pytest.approx(gb @ gc / np.linalg.norm(gb) / np.linalg.norm(gc), **tol)
    assert got.norm_ratio == pytest.approx(np.linalg.norm(gc) / np.linalg.norm(gb), **tol)
    assert got.fraction_clipped == pytest.approx(np.mean(norms > clip_norm), abs=1e-12)
    assert 0 < got.fraction_clipped < 1 and got.cosine < 1 - 1e-4  # the case is not trivial
    assert got.mean_grad_norm == pytest.approx(np.mean(norms), **tol)
    d2 = np.sum((gb - gc) ** 2)
    for k in ("fc1", "fc2"):
        layer = got.layers[k]
        assert layer.bias_share == pytest.approx(np.sum((mean[k] - clipped[k]) ** 2) / d2, **tol)
        assert layer.grad_share == pytest.approx(mean[k] @ mean[k] / (gb @ gb), **tol)
        cos = mean[k] @ clipped[k] / np.linalg.norm(mean[k]) / np.linalg.norm(clipped[k])
        assert layer.cosine == pytest.approx(cos, **tol)
    assert sum(v.bias_share for v in got.layers.values()) == pytest.approx(1.0, rel=1e-9)


def test_no_clipping_means_no_bias():
    model = _Tiny(nnx.Rngs(2))
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 3, 6).astype(np.int32)
    got = bias.measure(model, x, y, clip_norm=1e6)
    assert got.fraction_clipped == 0 and got.cosine == pytest.approx(1.0, abs=1e-6)
    # Only float32 summation order differs between the two sums.
    assert got.norm_ratio == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope="module")
def kept_run(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bias") / "run"
    cfg = RunConfig(
        dataset="fashion-mnist", data_dir=str(tiny_data_dir), epochs=1, batch_size=60, lr=0.5,
        clip_norm=0.1, noise_multiplier=0.8, seed=0, max_physical_batch=64, keep_checkpoints=1,
    )  # fmt: skip
    train(cfg, out=out)
    return out


@pytest.mark.slow
def test_cli_bias_writes_json_and_figure_labelled_as_diagnostic(kept_run, tmp_path):
    out = tmp_path / "fig" / "bias"
    result = runner.invoke(app, ["bias", str(kept_run), "--sample", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "not covered by eps" in result.output
    assert {p.name for p in out.parent.iterdir()} == {"bias.json", "bias.png", "bias.pdf"}
    record = json.loads(out.with_suffix(".json").read_text())
    assert "not covered by eps" in record["diagnostic"]
    (run,) = record["runs"]
    assert run["clip_norm"] == 0.1 and run["private"] and run["sample_size"] == 40
    assert [p["epoch"] for p in run["points"]] == [0, 1]
    assert set(run["points"][1]["layers"]) == {"conv1", "conv2", "fc1", "fc2"}
    # Same sample seed, same numbers; another seed, another sample.
    again = bias.run_bias(kept_run, sample_size=40, seed=0)
    assert again.points[1].cosine == run["points"][1]["cosine"]
    assert (
        bias.run_bias(kept_run, sample_size=40, seed=1).points[1].cosine != again.points[1].cosine
    )


def _error(args) -> str:
    result = runner.invoke(app, ["bias", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.mark.slow  # the kept_run fixture trains one epoch
def test_bad_input_is_one_line_exit_2_nothing_written(kept_run, tmp_path):
    out = tmp_path / "b"
    assert "does not exist" in _error([str(tmp_path / "nope"), "--out", str(out)])
    assert "not a run directory" in _error([str(tmp_path), "--out", str(out)])
    bare = tmp_path / "bare"  # a run without kept checkpoints
    bare.mkdir()
    shutil.copy(kept_run / rundir.CONFIG, bare / rundir.CONFIG)
    assert "--keep-checkpoints" in _error([str(bare), "--out", str(out)])
    line = _error([str(kept_run), "--sample", "601", "--out", str(out)])
    assert "--sample=601" in line and "[1, 600]" in line
    assert "--clip-norm=-1.0" in _error([str(kept_run), "--clip-norm", "-1", "--out", str(out)])
    nonprivate = tmp_path / "np"
    shutil.copytree(kept_run, nonprivate)
    record = json.loads((nonprivate / rundir.CONFIG).read_text())
    record["config"]["private"] = False
    (nonprivate / rundir.CONFIG).write_text(json.dumps(record))
    assert "give --clip-norm" in _error([str(nonprivate), "--out", str(out)])
    assert not out.with_suffix(".json").exists() and not out.with_suffix(".png").exists()


# --- runs of toolkit.fit --------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """A factory with an import path trained on a .npz file of uint8 images: the record
    names both, so nothing is given again. 2 epochs, both checkpoints kept."""
    d = tmp_path_factory.mktemp("file_run")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (160, 28, 28, 1)).astype(np.uint8)
    y = rng.integers(0, 10, 160).astype(np.int32)
    np.savez(d / "digits.npz", x=x[:120], y=y[:120], x_test=x[120:], y_test=y[120:])
    toolkit.fit(zoo.tiny_mlp, str(d / "digits.npz"), optimizer=toolkit.optimizer("sgd", lr=0.5),
                batch_size=40, epochs=2, clip_norm=0.1, noise_multiplier=0.8, delta=1e-3,
                keep_checkpoints=1, out=d / "run")  # fmt: skip
    return d / "run", x[:120], y[:120]


@pytest.mark.slow
def test_run_bias_of_a_fit_run_rebuilds_its_factory_and_data_file(file_run):
    run, x, y = file_run
    got = bias.run_bias(run, sample_size=50, seed=4)
    assert [p.epoch for p in got.points] == [0, 1, 2]
    assert (got.activation, got.clip_norm, got.clipping, got.private) == (
        "tiny_mlp", 0.1, "flat", True
    )  # fmt: skip
    # By hand: 50 of the file's 120 training examples drawn with seed 4, scaled to [0, 1],
    # at each kept checkpoint and at the run's initialisation (the same float32 program on
    # the same arrays: equal, not close).
    idx = np.sort(np.random.default_rng(4).choice(120, size=50, replace=False))
    xs, ys = to_float(x[idx]), y[idx]
    cfg = toolkit.load_run(run).config
    starts = toolkit.training.init_model(cfg, toolkit.training.load_data(cfg))
    for point in got.points:
        model = starts if point.epoch == 0 else toolkit.load_run(run, epoch=point.epoch).model
        assert point == bias.measure(model, xs, ys, clip_norm=0.1, epoch=point.epoch)
    assert got.points[0].cosine != got.points[2].cosine  # training moved the parameters
    assert got.points[2].fraction_clipped > 0  # C = 0.1 clips: the bias is not trivially 0


def _factory(*, rngs: nnx.Rngs) -> nnx.Module:
    return zoo.Mlp(rngs)


@pytest.fixture(scope="module")
def python_run(tmp_path_factory):
    """A factory without an import path (a lambda: `python:<lambda>`) and arrays given in
    Python, C = 1e-30: every update is below the float32 resolution of the parameters
    (|update| <= lr C), so the kept checkpoint holds the initialisation to 1e-30."""
    out = tmp_path_factory.mktemp("python_run") / "run"
    data = zoo.vectors(60)
    toolkit.fit(lambda *, rngs: zoo.Mlp(rngs), data, optimizer=toolkit.optimizer("sgd", lr=0.5),
                batch_size=20, epochs=1, clip_norm=1e-30, noise_multiplier=0.8, delta=1e-3,
                keep_checkpoints=1, out=out)  # fmt: skip
    return out, data


def test_run_bias_of_python_objects_needs_them_again(python_run, tmp_path):
    run, data = python_run
    with pytest.raises(ToolkitError) as e:
        bias.run_bias(run, sample_size=20)
    message = str(e.value)
    assert "\n" not in message
    assert re.search(r"\(python:\S*<lambda>, python:arrays\) without an import path", message)
    assert "pass model= and train_data= again (toolkit.studies.run_bias)" in message
    line = _error([str(run), "--out", str(tmp_path / "b")])  # the command line cannot
    assert "its model and train_data were given in Python" in line
    got = bias.run_bias(run, sample_size=20, model=_factory, train_data=data, clip_norm=1.0)
    assert [p.epoch for p in got.points] == [0, 1]
    # Epoch 0 is rebuilt from the factory and the run's seed; epoch 1 is the checkpoint,
    # which holds the run's initialisation (fixture): the two points agree. float32
    # gradients at parameters equal to ~1e-30: 1e-6 relative.
    start, kept = got.points
    assert start.cosine == pytest.approx(kept.cosine, rel=1e-6)
    assert start.mean_grad_norm == pytest.approx(kept.mean_grad_norm, rel=1e-6)
    assert start.fraction_clipped == kept.fraction_clipped
    assert start.cosine < 1 - 1e-4  # C = 1 clips some examples: the points are not trivial
    # An instance gives the structure only: its own values are not the run's start.
    alone = bias.run_bias(run, sample_size=20, model=zoo.Mlp(nnx.Rngs(9)), train_data=data,
                          clip_norm=1.0)  # fmt: skip
    assert alone.points == [kept]
