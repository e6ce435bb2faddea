"""`toolkit.studies` bias against independent computations (a per-example loop, a hand
computation on a linear model, a resampled data set); streaming and the bootstrap;
`toolkit bias` end to end; the bias of `toolkit.fit` runs: a factory and a data file named
in the record, or objects given in Python again; a non-private run."""

from __future__ import annotations

import json
import math
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from typer.testing import CliRunner

import toolkit
from tests import zoo
from toolkit import grads as cg
from toolkit.base import ToolkitError
from toolkit.cli import app
from toolkit.data import to_float
from toolkit.grads import clipping as clip_lib
from toolkit.runs import RunConfig, rundir
from toolkit.studies import BOOTSTRAPPED, StepNoise, bootstrap_weights, paired_difference
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


def _vectors(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32) * 3, rng.integers(0, 3, n).astype(np.int32)


def _per_example(model, x, y):
    """Flat per-example gradients (n, d) in float64 and their norms, by the vmap reference."""
    graphdef, params, state = cg.split_model(model)
    _, g = cg.per_example_grads_fn(graphdef)(params, jnp.asarray(x), jnp.asarray(y), state)
    flat = np.concatenate([np.asarray(t, np.float64).reshape(len(y), -1)
                           for t in jax.tree.leaves(g)], axis=1)  # fmt: skip
    return flat, np.asarray(clip_lib.per_example_norms(g), np.float64)


def _between(norms, k):
    """A C halfway between the k-th and (k+1)-th smallest norms: no float ties at C."""
    s = np.sort(norms)
    return float((s[k - 1] + s[k]) / 2)


def test_streaming_in_chunks_equals_one_pass_and_the_weighted_sums():
    model = _Tiny(nnx.Rngs(0))
    x, y = _vectors(23)
    g, norms = _per_example(model, x, y)
    clip_norm = _between(norms, 11)
    w = bootstrap_weights(23, replicates=7, seed=0)
    kw = dict(clip_norm=clip_norm, weights=w)
    streamed, names = bias.stream_sums(model, x, y, chunk=5, **kw)  # 5 chunks, 2 padding rows
    whole, whole_names = bias.stream_sums(model, x, y, chunk=23, **kw)  # one pass
    assert names == whole_names and len(names) == g.shape[1]
    # By hand in float64: V = [1; W] over the examples, f the flat clip factors.
    v = np.concatenate([np.ones((1, 23)), w.astype(np.float64)])
    f = np.minimum(1.0, clip_norm / norms)
    # float32 gradients, clip factors and products within a chunk, float64 across chunks:
    # each entry is off by a few float32 roundings of the sum of its terms' sizes.
    scale = 16 * np.finfo(np.float32).eps * (v @ np.abs(g))
    for got in (streamed, whole):
        assert np.all(np.abs(got.grad - v @ g) <= scale)
        assert np.all(np.abs(got.clipped - (v * f) @ g) <= scale)
        np.testing.assert_array_equal(got.count, v.sum(axis=1))
        np.testing.assert_array_equal(got.clipped_count, v @ (norms > clip_norm))
        np.testing.assert_allclose(got.norm_sum, v @ norms, rtol=1e-6)
    assert np.all(np.abs(streamed.grad - whole.grad) <= scale)
    assert np.all(np.abs(streamed.clipped - whole.clipped) <= scale)
    assert 0 < whole.clipped_count[0] < 23  # the case is not trivial


def _resampled(x, y, counts):
    return np.repeat(x, counts, axis=0), np.repeat(y, counts)


def test_each_replicate_is_the_statistic_of_its_resampled_data_set():
    model = _Tiny(nnx.Rngs(0))
    x, y = _vectors(17)
    clip_norm = _between(_per_example(model, x, y)[1], 8)
    w = bootstrap_weights(17, replicates=4, seed=3)
    noise = StepNoise(noise_multiplier=1.3, batch_size=8.0)
    got = bias.measure(model, x, y, clip_norm=clip_norm, weights=w, noise=noise, chunk=6)
    assert set(got.replicates) == set(got.ci) == set(BOOTSTRAPPED)
    for r in range(4):  # replicate r = the data set with example i repeated W_ri times
        ref = bias.measure(model, *_resampled(x, y, w[r].astype(int)), clip_norm=clip_norm,
                           noise=noise)  # fmt: skip
        for field in BOOTSTRAPPED:  # float32 sums in another order: 1e-5 relative
            assert got.replicates[field][r] == pytest.approx(getattr(ref, field), rel=1e-5), field
    assert len({round(v, 9) for v in got.replicates["cosine"]}) == 4  # the weights differ


def test_bootstrap_interval_holds_the_point_and_narrows_as_n_grows():
    model = _Tiny(nnx.Rngs(0))
    x, y = _vectors(800, seed=5)
    clip_norm = float(np.median(_per_example(model, x, y)[1]))
    noise = StepNoise(noise_multiplier=1.0, batch_size=64.0)
    width = {}
    for n in (50, 800):  # 16 times the examples: intervals about 4 times narrower
        got = bias.measure(model, x[:n], y[:n], clip_norm=clip_norm, noise=noise,
                           weights=bootstrap_weights(n, replicates=200, seed=0))  # fmt: skip
        for field in ("cosine", "projection", "norm_ratio", "fraction_clipped", "snr"):
            lo, hi = got.ci[field]
            assert lo <= getattr(got, field) <= hi, (n, field)
            width[n, field] = hi - lo
    for field in ("cosine", "projection", "norm_ratio", "fraction_clipped", "snr"):
        assert 0 < width[800, field] < 0.5 * width[50, field], field


class _Line(nnx.Module):
    """z = <w, x> + b, one output per example."""

    def __init__(self):
        self.fc = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        self.fc.kernel[...] = jnp.array([[0.5], [-1.0]], jnp.float32)
        self.fc.bias[...] = jnp.array([0.2], jnp.float32)

    def __call__(self, x):
        return self.fc(x)


def _squared(outputs, labels):
    return 0.5 * (outputs[:, 0] - labels) ** 2


@pytest.mark.parametrize("clipping", ["flat", "automatic"])
def test_projection_snr_and_noise_ratio_match_a_hand_computation(clipping):
    x = np.array([[1, 2], [3, -1], [-2, 0.5], [0.5, 0.5]], np.float32)
    y = np.array([1, -2, 0.5, 3], np.float32)
    clip_norm, gamma, sigma, batch = 1.5, 0.01, 1.3, 4.0
    # Squared loss: g_i = r_i (x_i, 1), r_i = <w, x_i> + b - y_i (kernel, then bias).
    x64 = x.astype(np.float64)
    r = x64 @ np.array([0.5, -1.0]) + 0.2 - y
    g = r[:, None] * np.concatenate([x64, np.ones((4, 1))], axis=1)
    norms = np.linalg.norm(g, axis=1)  # 3.4, 4.95, 6.28, 2.79: all above C = 1.5
    if clipping == "flat":
        clipped, s = g * np.minimum(1.0, clip_norm / norms)[:, None], clip_norm
    else:
        clipped, s = g / (norms + gamma)[:, None], 1.0
    gbar, gclip = g.mean(axis=0), clipped.mean(axis=0)
    projection = gclip @ gbar / np.linalg.norm(gbar) / s
    direction = sigma * s / batch
    got = bias.measure(_Line(), x, y, clip_norm=clip_norm, clipping=clipping, gamma=gamma,
                       loss_fn=_squared, noise=StepNoise(sigma, batch))  # fmt: skip
    tol = dict(rel=1e-5)  # float32 gradients
    assert got.projection == pytest.approx(projection, **tol)
    assert got.noise_direction == pytest.approx(direction, rel=1e-12)
    assert got.snr == pytest.approx(projection * s / direction, **tol)
    assert got.noise_norm_ratio == pytest.approx(
        direction * math.sqrt(3) / np.linalg.norm(gclip), **tol
    )
    assert got.cosine == pytest.approx(
        projection * s / np.linalg.norm(gclip), **tol
    )  # projection = ||gclip|| cos / S
    assert got.fraction_clipped == 1.0 and got.projection != 0
    # Without the run's noise: NaN, not a made-up number; with sigma = 0: inf and 0.
    unknown = bias.measure(_Line(), x, y, clip_norm=clip_norm, clipping=clipping, gamma=gamma,
                           loss_fn=_squared)  # fmt: skip
    assert math.isnan(unknown.snr) and math.isnan(unknown.noise_direction)
    silent = bias.measure(_Line(), x, y, clip_norm=clip_norm, clipping=clipping, gamma=gamma,
                          loss_fn=_squared, noise=StepNoise(0.0, batch))  # fmt: skip
    assert silent.snr == math.copysign(math.inf, projection) and silent.noise_norm_ratio == 0


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
    result = runner.invoke(app, ["bias", str(kept_run), "--bootstrap", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "not covered by eps" in result.output
    assert {p.name for p in out.parent.iterdir()} == {
        "bias.json", "bias.md", "bias.png", "bias.pdf", "bias-relation.png", "bias-relation.pdf"
    }  # fmt: skip
    # One line per point, with its intervals.
    lines = [ln for ln in result.output.splitlines() if ln.strip().startswith("e")]
    assert [ln.split(":")[0].strip() for ln in lines] == ["e0", "e1"]
    assert re.search(r"clipped \S+ \[\S+, \S+\]", lines[1]) and "snr " in lines[1]
    record = json.loads(out.with_suffix(".json").read_text())
    assert "not covered by eps" in record["diagnostic"]
    (run,) = record["runs"]
    # The whole training split (600 examples) by default, with the run's sigma and B.
    assert run["clip_norm"] == 0.1 and run["private"] and run["sample_size"] == 600
    assert (run["num_train"], run["bootstrap"], run["noise_multiplier"]) == (600, 30, 0.8)
    assert [p["epoch"] for p in run["points"]] == [0, 1]
    point = run["points"][1]
    assert set(point["layers"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert point["noise_direction"] == pytest.approx(0.8 * 0.1 / 60, rel=1e-12)
    assert all(len(v) == 30 for v in point["replicates"].values())
    # The record reads back as it was measured; the same seed gives the same numbers.
    again = bias.run_bias(kept_run, seed=0, bootstrap=30)
    assert bias.read_json(out.with_suffix(".json")) == [again]
    # Another seed: the same examples (all), other bootstrap weights.
    other = bias.run_bias(kept_run, seed=1, bootstrap=30, epochs=[1])
    assert other.points[0].cosine == again.points[1].cosine
    assert other.points[0].replicates["cosine"] != again.points[1].replicates["cosine"]
    # A measurement read back from its OUT.json is shown, not measured again.
    out2 = tmp_path / "again"
    result = runner.invoke(app, ["bias", str(out.with_suffix(".json")), "--out", str(out2)])
    assert result.exit_code == 0, result.output
    assert out2.with_suffix(".md").read_text() == out.with_suffix(".md").read_text()
    assert bias.read_json(out2.with_suffix(".json")) == bias.read_json(out.with_suffix(".json"))


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
    assert "--sample=0 must be in [1, 1000000]" in _error(
        [str(kept_run), "--sample", "0", "--out", str(out)]
    )
    line = _error([str(kept_run), "--bootstrap", "-1", "--out", str(out)])
    assert "--bootstrap=-1 must be in [0, 1000]" in line
    line = _error([str(kept_run), "--epochs", "0,3", "--out", str(out)])
    assert "--epochs=3 is not a kept checkpoint" in line and "one of 1" in line
    line = _error([str(kept_run), "--epochs", "1,x", "--out", str(out)])
    assert "--epochs='1,x' must be comma-separated epochs >= 0" in line
    assert "--clip-norm=-1.0" in _error([str(kept_run), "--clip-norm", "-1", "--out", str(out)])
    nonprivate = tmp_path / "np"
    shutil.copytree(kept_run, nonprivate)
    record = json.loads((nonprivate / rundir.CONFIG).read_text())
    record["config"]["private"] = False
    (nonprivate / rundir.CONFIG).write_text(json.dumps(record))
    assert "give --clip-norm" in _error([str(nonprivate), "--out", str(out)])
    assert not [*tmp_path.glob("b.*"), *tmp_path.glob("b-*")]  # nothing written


# --- runs of toolkit.fit --------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["per-layer", "quantile"])
def test_a_run_of_each_new_rule_is_measured_by_its_own_rule_and_clip_norm(rule, tmp_path):
    """The study clips as training did: per-layer, gclip * n is the clipped sum of the
    run's own `ClippedGradFn` on the same examples, and an example counts as clipped when
    any layer is; quantile, each checkpoint is clipped at the C_t its run recorded then
    (C_0 at the initialisation). Tolerance: float32 sums of 48 gradients, 1e-5 relative."""
    x, y = zoo.vectors(48)
    extra = {"quantile_lr": 1.0} if rule == "quantile" else {}
    toolkit.fit(_factory, (x, y), optimizer=toolkit.optimizer("sgd", lr=0.1), batch_size=16,
                epochs=2, clip_norm=0.05, clipping=rule, noise_multiplier=1.0, delta=1e-3,
                keep_checkpoints=1, out=tmp_path / "run", **extra)  # fmt: skip
    result = bias.run_bias(tmp_path / "run", bootstrap=0, train_data=(x, y))
    assert [p.epoch for p in result.points] == [0, 1, 2]
    if rule == "quantile":
        recorded = [r.clip_norm for r in rundir.read_epochs(tmp_path / "run")]
        assert [p.clip_norm for p in result.points] == pytest.approx([0.05, *recorded])
        assert recorded[0] != 0.05
        return
    model = toolkit.load_run(tmp_path / "run", epoch=2).model
    graphdef, params, state = toolkit.split_model(model)
    fn = toolkit.clipped_grad(graphdef, clipping="per-layer", clip_norm=0.05,
                              implementation="vmap")  # fmt: skip
    out = fn(params, state, jnp.asarray(x), jnp.asarray(y))
    sums, _ = bias.stream_sums(model, x, y, clip_norm=0.05, clipping="per-layer", chunk=20)
    expected = np.concatenate([np.asarray(v, np.float64).ravel()
                               for v in jax.tree.leaves(out.clipped_sum)])  # fmt: skip
    np.testing.assert_allclose(sums.clipped[0], expected, rtol=1e-5, atol=1e-8)
    _, g = cg.per_example_grads_fn(graphdef)(params, jnp.asarray(x), jnp.asarray(y), state)
    layer_norms = [
        np.sqrt(sum(np.sum(np.square(np.asarray(v).reshape(48, -1)), axis=1)
                    for v in jax.tree.leaves(g[name])))
        for name in ("fc1", "fc2")
    ]  # fmt: skip
    total = np.sqrt(layer_norms[0] ** 2 + layer_norms[1] ** 2)
    c = float(np.median(total))  # a C that clips some examples and not others
    any_clipped = np.mean((layer_norms[0] > c / math.sqrt(2)) | (layer_norms[1] > c / math.sqrt(2)))
    assert 0 < any_clipped < 1 and any_clipped != np.mean(total > c)  # the rule matters here
    sums, _ = bias.stream_sums(model, x, y, clip_norm=c, clipping="per-layer", chunk=20)
    assert sums.clipped_count[0] / 48 == any_clipped


def _factory(*, rngs: nnx.Rngs) -> nnx.Module:
    return zoo.Mlp(rngs)


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
    got = bias.run_bias(run, sample_size=50, seed=4, bootstrap=10)
    assert [p.epoch for p in got.points] == [0, 1, 2]
    assert (got.activation, got.clip_norm, got.clipping, got.private) == (
        "tiny_mlp", 0.1, "flat", True
    )  # fmt: skip
    assert (got.noise_multiplier, got.batch_size, got.num_params) == (0.8, 40, 784 * 8 + 8 + 90)
    # By hand: 50 of the file's 120 training examples drawn with seed 4, scaled to [0, 1],
    # their columns of the bootstrap weights of seed 4, at each kept checkpoint and at the
    # run's initialisation (the same float32 program on the same arrays: equal, not close).
    idx = np.sort(np.random.default_rng(4).choice(120, size=50, replace=False))
    xs, ys = to_float(x[idx]), y[idx]
    w = bootstrap_weights(120, replicates=10, seed=4)[:, idx]
    cfg = toolkit.load_run(run).config
    starts = toolkit.training.init_model(cfg, toolkit.training.load_data(cfg))
    for point in got.points:
        model = starts if point.epoch == 0 else toolkit.load_run(run, epoch=point.epoch).model
        assert point == bias.measure(model, xs, ys, clip_norm=0.1, epoch=point.epoch, weights=w,
                                     noise=StepNoise(0.8, 40.0))  # fmt: skip
    # Only some epochs: those points, the same numbers.
    assert bias.run_bias(run, sample_size=50, seed=4, bootstrap=10, epochs=[2]).points == [
        got.points[2]
    ]  # fmt: skip
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
    with pytest.raises(ToolkitError, match=r"--epochs=0: the initialisation .* not known"):
        bias.run_bias(run, model=zoo.Mlp(nnx.Rngs(9)), train_data=data, clip_norm=1.0,
                      epochs=[0])  # fmt: skip


def test_the_whole_training_split_is_the_default(python_run):
    run, data = python_run
    got = bias.run_bias(run, model=_factory, train_data=data, clip_norm=1.0, bootstrap=5,
                        epochs=[1])  # fmt: skip
    assert got.sample_size == got.num_train == 60 and got.examples == bias._digest(*data)
    # Every example, in order, with its weights of seed 0 and the run's noise (sigma 0.8,
    # B 20): the same float32 program on the same arrays, so equal.
    model = toolkit.load_run(run, epoch=1, model=_factory).model
    expected = bias.measure(model, *data, clip_norm=1.0, epoch=1, noise=StepNoise(0.8, 20.0),
                            weights=bootstrap_weights(60, replicates=5, seed=0))  # fmt: skip
    assert got.points == [expected]
    fewer = bias.measure(model, data[0][:59], data[1][:59], clip_norm=1.0, epoch=1)
    assert fewer.cosine != expected.cosine  # one example fewer is seen


def test_paired_difference_of_a_run_with_itself_is_exactly_zero(python_run):
    run, data = python_run
    kw = dict(model=_factory, train_data=data, bootstrap=40, epochs=[1])
    a = bias.run_bias(run, clip_norm=1.0, **kw)
    for statistic in BOOTSTRAPPED:
        d = paired_difference(a, a, epoch=1, statistic=statistic)
        assert d.estimate == 0.0 and d.ci == (0.0, 0.0), statistic
    # The same examples clipped at C = 0.5 and at C = 1: every example clipped at 1 is
    # clipped at 0.5, so every PAIRED replicate difference of the fraction clipped is <= 0.
    b = bias.run_bias(run, clip_norm=0.5, **kw)
    d = paired_difference(a, b, epoch=1, statistic="fraction_clipped")
    assert d.estimate == a.points[0].fraction_clipped - b.points[0].fraction_clipped < 0
    assert d.ci[0] <= d.estimate <= d.ci[1] <= 0
    # Measurements that are not paired are refused, naming what differs.
    for other, what in (
        (bias.run_bias(run, clip_norm=1.0, seed=1, **kw), "sample_seed"),
        (bias.run_bias(run, clip_norm=1.0, **{**kw, "bootstrap": 10}), "bootstrap"),
        (bias.run_bias(run, clip_norm=1.0, sample_size=59, **kw), "examples"),
    ):
        with pytest.raises(ToolkitError, match=f"different {what}") as e:
            paired_difference(a, other, epoch=1, statistic="cosine")
        assert "\n" not in str(e.value)
    with pytest.raises(ToolkitError, match=r"epoch=3 was not measured .* \(measured: 1\)"):
        paired_difference(a, a, epoch=3, statistic="cosine")
    with pytest.raises(ToolkitError, match="statistic='layers' has no replicates"):
        paired_difference(a, a, epoch=1, statistic="layers")


@pytest.fixture(scope="module")
def nonprivate_run(tmp_path_factory):
    """A non-private run (C = inf, sigma = 0) of a factory named in the record, 1 epoch."""
    d = tmp_path_factory.mktemp("nonprivate")
    x, y = zoo.digits(100)
    np.savez(d / "digits.npz", x=x[:80], y=y[:80], x_test=x[80:], y_test=y[80:])
    cfg = RunConfig(dataset=str(d / "digits.npz"), model="tests.zoo:tiny_mlp", activation=None,
                    private=False, epochs=1, batch_size=40, lr=0.5, keep_checkpoints=1)  # fmt: skip
    train(cfg, out=d / "run")
    return d / "run"


@pytest.mark.slow  # one epoch of a tiny MLP, two figures
def test_a_non_private_run_has_no_noise_and_says_so(nonprivate_run, tmp_path):
    out = tmp_path / "np"
    args = ["bias", str(nonprivate_run), "--clip-norm", "0.1", "--bootstrap", "10"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no noise" in result.output and "snr inf (no noise: sigma = 0)" in result.output
    (run,) = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert not run["private"] and run["noise_multiplier"] == 0 and run["clip_norm"] == 0.1
    for point in run["points"]:
        assert point["noise_direction"] == 0 and point["noise_norm_ratio"] == 0
        assert point["snr"] == math.inf and point["ci"]["snr"] == [math.inf, math.inf]
        assert 0 < point["projection"] <= 1 and math.isfinite(point["ci"]["cosine"][0])
    assert (out.parent / "np-relation.png").is_file() and (out.parent / "np.pdf").is_file()
