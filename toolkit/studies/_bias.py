"""Clipping bias in real training: the mean clipped gradient against the mean gradient.

On the n examples of a run's training split (all of them by default, after `validation`
and `limit_train`; or a sample drawn once from a seed) and parameters theta (the
initialisation and each checkpoint kept by `toolkit train --keep-checkpoints K`):

    g_i      = grad_theta loss(theta; x_i, y_i)          per-example gradient
    gbar     = (1/n) sum_i g_i                            mean (unclipped) gradient
    gclip    = (1/n) sum_i clip_C(g_i)                    mean clipped gradient, the rule
                                                          of the run (flat: min(1, C/||g_i||))
    d        = gbar - gclip                               the clipped-away gradient

and reports cos(gclip, gbar) (1 = clipping changes only the step length, Chen, Wu, Hong
2020; < 1 = it turns the step), ||gclip|| / ||gbar||, the projection of gclip on the
direction of gbar in units of C, the fraction of examples clipped, the mean pre-clip norm,
the noise of one DP-SGD step of the run beside that signal (snr), each layer's share of
d and of gbar, and 95% Poisson-bootstrap intervals over the examples: definitions in
`toolkit.studies._bias_stats`. This is the quantity Theorem 1 is about (clipped GD
follows gclip, not gbar) measured on the paper's CNNs instead of a convex GLM, at the
parameters training reached (with noise, for a DP run).

**Streaming.** The examples pass in chunks of `chunk` (memory only): per chunk, one jitted
function computes the per-example gradients G (chunk x d) by `jax.vmap(jax.grad)`,
their norms and clip factors, and multiplies [v; v * f] @ G in float32 on the device,
v being the chunk's weights (1, and the R bootstrap weights). The host adds the
(2R + 2) x d result into float64 sums and keeps the n norms; no more than one chunk's
per-example gradients exist at a time. Cost per point: n (one per-example gradient +
2(R + 1) d multiply-adds). For Fashion-MNIST's 60,000 examples, the paper CNN and R = 100:
about 40 s on one CPU core (Xeon, AVX-512), of which about 25 s are the model's own
forward and backward passes (half of that the backward of its stride-1 max pools), 8 s
the per-example gradients beyond that and 8 s the bootstrap products; the host's float64
sums about 1 s.

A non-private run has C = inf and no noise; measure it at the C of the DP run it is
compared with (`clip_norm=`): its snr is inf. These are diagnostics computed on private
training data without noise: not covered by eps, not for release (docs/privacy.md, "What
is not covered"), like the gradient-norm statistics in epochs.jsonl.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit import grads as cg
from toolkit.base import ToolkitError, atomic_write_json, outputs
from toolkit.grads import clipping as clip_lib
from toolkit.privacy import gradient_noise
from toolkit.runs import RunConfig, config_from_record, rundir
from toolkit.studies._bias_stats import (
    DIAGNOSTIC_LABEL,
    MAX_REPLICATES,
    BiasPoint,
    RunBias,
    StepNoise,
    Sums,
    bias_point,
    bootstrap_weights,
    from_record,
)
from toolkit.training import (
    Objects,
    check_model_kind,
    init_model,
    is_factory,
    load_data,
    load_run,
    loss_of,
    model_inputs,
)


@functools.cache
def _chunk_fn(graphdef: nnx.GraphDef, *, clipping: str, gamma: float, layer_split: str,
              loss_fn=None):  # fmt: skip
    """Jitted `(params, state, x, y, v, C) -> ([v; v * f] @ G, ||g_i||, clipped_i)`.

    v (K, chunk) are the chunk's weights, G (chunk, d) its flat per-example gradients and
    f their clip factors under the run's rule at clip norm C (per-layer: each layer's
    coordinates by its own factor; a traced C, so a quantile run's C_t compiles once):
    row k of the result is sum_i v_ki g_i, row K + k is sum_i v_ki clip(g_i).
    `clipped_i`: the rule scaled example i down (per-layer: in any layer). An example
    whose gradient is not finite contributes zeros (as to training's clipped sum);
    padding rows have weight 0.
    """
    grads_fn = cg.per_example_grads_fn(graphdef, loss_fn)

    @jax.jit
    def sums(params, state, x, y, v, clip_norm):
        _, g = grads_fn(params, x, y, state)
        norms = clip_lib.per_example_norms(g)
        if clipping == "per-layer":
            c_l = clip_lib.layer_clip_norms(params, clip_norm=clip_norm, split=layer_split)
            by_layer = clip_lib.layer_weights(clip_lib.per_layer_norms(g), c_l)
            factors = clip_lib.leaf_weights(g, by_layer)
            clipped = jnp.any(jnp.stack([f < 1 for f in by_layer.values()]), axis=0)
        else:
            f = clip_lib.clip_factors(norms, clipping=clipping, clip_norm=clip_norm, gamma=gamma)
            factors = [f] * len(jax.tree.leaves(g))
            clipped = norms > clip_norm
        finite = jnp.isfinite(norms)[:, None]
        out = []
        for t, f in zip(jax.tree.leaves(g), factors, strict=True):
            t = jnp.where(finite, t.reshape(t.shape[0], -1), 0.0)
            weights = jnp.concatenate([v, v * f[None]], axis=0)
            # HIGHEST: full float32 (a GPU would otherwise multiply in TF32).
            out.append(jnp.matmul(weights, t, precision=jax.lax.Precision.HIGHEST))
        return jnp.concatenate(out, axis=1), norms, clipped & jnp.isfinite(norms)

    return sums


def stream_sums(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    clip_norm: float,
    clipping: str = "flat",
    gamma: float = 0.01,
    layer_split: str = "equal",
    chunk: int = 512,
    loss_fn: cg.LossFn | None = None,
    weights: np.ndarray | None = None,
) -> tuple[Sums, list[str]]:
    """The weighted sums of `toolkit.studies._bias_stats.Sums` over (images, labels), and
    the layer of each of the d coordinates.

    `weights` (R, n): the bootstrap weights of the n examples (None: no replicates). Every
    chunk has `chunk` rows (the last is padded with weight 0), so the function compiles
    once per model and shape.
    """
    if not clip_norm > 0:
        raise ToolkitError(f"clip_norm={clip_norm} must be > 0.")
    if not chunk >= 1:
        raise ToolkitError(f"chunk={chunk} must be >= 1.")
    n = len(labels)
    w = np.zeros((0, n), np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.ndim != 2 or w.shape[1] != n:
        raise ToolkitError(f"weights of shape {w.shape}; expected (replicates, {n}).")
    graphdef, params, state = cg.split_model(model)
    fn = _chunk_fn(graphdef, clipping=clipping, gamma=gamma, layer_split=layer_split,
                   loss_fn=loss_fn)  # fmt: skip
    size, k = min(chunk, n), 1 + len(w)
    total = np.zeros((2 * k, sum(t.size for t in jax.tree.leaves(params))), np.float64)
    norms = np.empty(n, np.float64)
    clipped = np.empty(n, bool)

    def add(start, result):  # on the host, while the device computes the next chunk
        out, nrm, clp = result
        np.add(total, np.asarray(out), out=total)  # float32 chunk into float64 sums
        norms[start : start + size] = np.asarray(nrm)[: min(size, n - start)]
        clipped[start : start + size] = np.asarray(clp)[: min(size, n - start)]

    pending = None
    for start in range(0, n, size):
        rows = np.arange(start, start + size)
        real = rows < n
        rows = np.minimum(rows, n - 1)  # padding: copies of the last example, weight 0
        v = np.concatenate([real[None].astype(np.float32), w[:, rows] * real])
        result = fn(params, state, jnp.asarray(images[rows]), jnp.asarray(labels[rows]),
                    jnp.asarray(v), jnp.float32(clip_norm))  # fmt: skip
        if pending is not None:
            add(*pending)
        pending = (start, result)
    add(*pending)
    weights64 = np.concatenate([np.ones((1, n)), w.astype(np.float64)])  # (K, n)
    finite = np.isfinite(norms)
    sums = Sums(
        grad=total[:k], clipped=total[k:], count=weights64.sum(axis=1),
        clipped_count=weights64 @ clipped,
        norm_sum=weights64 @ np.where(finite, norms, 0.0), finite_count=weights64 @ finite,
    )  # fmt: skip
    sizes = [t.size for t in jax.tree.leaves(params)]
    return sums, list(np.repeat(clip_lib.layer_names(params), sizes))


def measure(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    clip_norm: float,
    clipping: str = "flat",
    gamma: float = 0.01,
    layer_split: str = "equal",
    chunk: int = 512,
    epoch: int = 0,
    loss_fn: cg.LossFn | None = None,
    weights: np.ndarray | None = None,
    noise: StepNoise | None = None,
) -> BiasPoint:
    """The clipping bias of `model` on (images, labels) under `loss_fn` (default softmax
    cross-entropy), streamed in chunks of `chunk` examples (`stream_sums`).

    `weights` (R, n): bootstrap weights, giving intervals and replicates (None: none).
    `noise`: the run's step noise, for noise_direction, snr and noise_norm_ratio (None: NaN).
    """
    sums, names = stream_sums(
        model, images, labels, clip_norm=clip_norm, clipping=clipping, gamma=gamma,
        layer_split=layer_split, chunk=chunk, loss_fn=loss_fn, weights=weights,
    )  # fmt: skip
    sensitivity = clip_lib.sensitivity(clipping=clipping, clip_norm=clip_norm)
    point = bias_point(sums, epoch=epoch, names=names, sensitivity=sensitivity, noise=noise)
    return dataclasses.replace(point, clip_norm=float(clip_norm))


def check_run(
    run: str | Path,
    *,
    clip_norm: float | None = None,
    objects: Objects = Objects(),
    epochs: Sequence[int] | None = None,
) -> tuple[RunConfig, dict, float]:
    """`(config, {epoch: kept checkpoint}, C)` of a run; a one-line ToolkitError if unusable.

    A run whose model or data was given in Python (`python:` in its config) needs them
    again in `objects` (from Python; the command line cannot). `epochs`, when given, must
    be kept checkpoints, or 0 (the initialisation) for a model that can be rebuilt.
    """
    run = Path(run)
    if not run.is_dir():
        raise ToolkitError(f"RUN_DIR={run} does not exist or is not a directory.")
    if not (run / rundir.CONFIG).is_file():
        raise ToolkitError(f"RUN_DIR={run} is not a run directory ({rundir.CONFIG} missing).")
    cfg = config_from_record(rundir.read_config(run), where=str(run / rundir.CONFIG))
    needed = Objects(model=objects.model, train_data=objects.train_data)
    needed.check(dataclasses.replace(cfg, loss="softmax_cross_entropy", optimizer="sgd"),
                 where=f"RUN_DIR={run}", api="toolkit.studies.run_bias")  # fmt: skip
    kept = rundir.kept_checkpoints(run)
    if not kept:
        raise ToolkitError(
            f"RUN_DIR={run} has no kept checkpoints ({rundir.KEPT_PREFIX}E.npz); train it with "
            "--keep-checkpoints K (toolkit.fit: keep_checkpoints=K)."
        )
    rebuilt = objects.model is None or is_factory(objects.model)
    for e in epochs or ():
        if e == 0 and not rebuilt:
            raise ToolkitError(
                f"--epochs=0: the initialisation of RUN_DIR={run} is not known (its model was "
                "given as an instance); give its factory, or measure kept checkpoints only."
            )
        if e != 0 and e not in kept:
            raise ToolkitError(
                f"--epochs={e} is not a kept checkpoint of RUN_DIR={run}; expected 0 (the "
                f"initialisation) or one of {', '.join(map(str, kept))}."
            )
    if clip_norm is not None and cfg.private and cfg.clipping == "quantile":
        raise ToolkitError(
            f"--clip-norm={clip_norm}: RUN_DIR={run} clips with the quantile rule, and each "
            "checkpoint is measured at the clip norm the run had then; drop --clip-norm."
        )
    if clip_norm is None:
        if not cfg.private:
            raise ToolkitError(
                f"RUN_DIR={run} is non-private (C = inf); give --clip-norm, e.g. the C of the "
                "DP run it is compared with."
            )
        clip_norm = cfg.clip_norm
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ToolkitError(f"--clip-norm={clip_norm} must be finite and > 0.")
    return cfg, kept, float(clip_norm)


def step_noise(run: str | Path, cfg: RunConfig) -> StepNoise:
    """The noise of one step of the run: its resolved sigma (config.json, else summary.json;
    0 for a non-private run; the quantile rule: the gradient's sigma_g) and its expected
    batch B."""
    sigma = cfg.noise_multiplier if cfg.private else 0.0
    if sigma is None:  # a record written before sigma was resolved into config.json
        summary = rundir.read_summary(Path(run))
        sigma = None if summary is None else summary.noise_multiplier
    if sigma is None:
        raise ToolkitError(
            f"RUN_DIR={run} records no noise multiplier (config.json has none and there is "
            "no summary.json); the noise of its steps is unknown."
        )
    if cfg.private and cfg.clipping == "quantile" and sigma > 0:
        # the gradient's share of the step's sigma (the rest goes to the count)
        count = cfg.count_noise if cfg.count_noise is not None else cfg.batch_size / 20
        sigma = gradient_noise(float(sigma), count)
    return StepNoise(noise_multiplier=float(sigma), batch_size=float(cfg.batch_size))


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the measured examples: two measurements pair only on equal digests."""
    h = hashlib.sha256()
    for a in (images, labels):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run_bias(
    run: str | Path,
    *,
    sample_size: int | None = None,
    seed: int = 0,
    bootstrap: int = 100,
    epochs: Sequence[int] | None = None,
    clip_norm: float | None = None,
    chunk: int = 512,
    model: nnx.Module | Callable[..., nnx.Module] | None = None,
    train_data: tuple[Any, Any] | None = None,
) -> RunBias:
    """The clipping bias at the initialisation and at every checkpoint kept in `run`.

    Args:
        run: A run directory written with `keep_checkpoints` K (`toolkit train` or `fit`).
        sample_size: Number of training examples, drawn without replacement from `seed`;
            None: the whole training split.
        seed: Seed of the sample and of the bootstrap weights (the same seed, run and
            sample give the same examples and the same replicates).
        bootstrap: R, the number of Poisson-bootstrap replicates (0: no intervals).
        epochs: Measure only these (0: the initialisation; others: kept checkpoints);
            None: the initialisation (when it can be rebuilt) and every kept checkpoint.
        clip_norm: C to clip at; default the run's C. Required for a non-private run.
        chunk: Examples per device call (memory only).
        model, train_data: The run's model and training arrays, when they were given in
            Python. The model is an instance of the trained structure, a function of no
            arguments returning one, or its factory `f(rngs=...)`: only a factory (or a
            model the run names) gives the epoch-0 point, the initialisation at the run's
            seed.
    """
    objects = Objects(model=model, train_data=train_data)
    cfg, kept, clip_norm = check_run(run, clip_norm=clip_norm, objects=objects, epochs=epochs)
    if not 0 <= bootstrap <= MAX_REPLICATES:
        raise ToolkitError(f"--bootstrap={bootstrap} must be in [0, {MAX_REPLICATES}].")
    if not chunk >= 1:
        raise ToolkitError(f"chunk={chunk} must be >= 1.")
    noise = step_noise(run, cfg)
    clipping = cfg.clipping if cfg.private else "flat"
    data = load_data(cfg, objects)
    n = len(data.train_labels)
    if sample_size is None:
        idx = np.arange(n)
    elif not 1 <= sample_size <= n:
        raise ToolkitError(f"--sample={sample_size} must be in [1, {n}] (the run's training set).")
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
    images, labels = data.train_images[idx], data.train_labels[idx]
    x = np.asarray(model_inputs(data, images))
    weights = bootstrap_weights(n, replicates=bootstrap, seed=seed)[:, idx]
    kw = dict(clipping=clipping, gamma=cfg.gamma, layer_split=cfg.layer_split, chunk=chunk,
              loss_fn=loss_of(cfg, objects), weights=weights, noise=noise)  # fmt: skip
    # The quantile rule's C moves: each checkpoint is clipped at the C_t its run had then.
    moving = cfg.private and cfg.clipping == "quantile"
    clip_at = {r.epoch: r.clip_norm for r in rundir.read_epochs(Path(run))} if moving else {}
    # The initialisation is rebuilt from the run's seed when the model is built from its
    # record or from the factory given; an instance's starting values were not recorded.
    rebuilt = model is None or is_factory(model)
    if rebuilt:  # the kind of model the run was made from: its noise key tells
        with np.load(next(iter(kept.values()))) as z:
            check_model_kind(cfg, objects, saved_key=z["key"], where=f"RUN_DIR={run}")
    wanted = [0, *kept] if epochs is None else sorted(set(epochs))
    points, num_params = [], 0
    for epoch in wanted:
        if epoch == 0 and not rebuilt:
            continue
        measured = (
            init_model(cfg, data, objects) if epoch == 0
            else load_run(run, epoch=epoch, model=model).model
        )  # fmt: skip
        c = clip_at.get(epoch, clip_norm) if moving else clip_norm
        points.append(measure(measured, x, labels, epoch=epoch, clip_norm=c, **kw))
        num_params = sum(t.size for t in jax.tree.leaves(nnx.state(measured, nnx.Param)))
    return RunBias(
        run=str(run), activation=cfg.label, private=cfg.private, run_seed=cfg.seed,
        clip_norm=clip_norm, clipping=clipping,
        sensitivity=clip_lib.sensitivity(clipping=clipping, clip_norm=clip_norm),
        noise_multiplier=noise.noise_multiplier, batch_size=cfg.batch_size,
        num_params=num_params, num_train=n,
        sample_size=len(idx), sample_seed=seed, bootstrap=bootstrap,
        examples=_digest(images, labels), points=points,
    )  # fmt: skip


def write_json(results: list[RunBias], path: str | Path) -> Path:
    """Write `results` atomically to PATH (.json), replicates included."""
    path = outputs.file_set(path, (".json",))[0]  # dots in the name are kept
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path, {"diagnostic": DIAGNOSTIC_LABEL, "runs": [dataclasses.asdict(r) for r in results]}
    )
    return path


def read_json(path: str | Path) -> list[RunBias]:
    """The `RunBias` results `write_json` wrote (e.g. to compare runs measured apart)."""
    path = Path(path)
    try:
        return [from_record(r) for r in json.loads(path.read_text())["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ToolkitError(
            f"{path} is not a toolkit bias record ({type(e).__name__}: {e})."
        ) from None
