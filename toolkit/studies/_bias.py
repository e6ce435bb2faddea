"""Clipping bias in real training: the mean clipped gradient against the mean gradient.

On a fixed sample S of n training examples (drawn once from a seed) and parameters theta
(the initialisation and each checkpoint kept by `toolkit train --keep-checkpoints K`):

    g_i      = grad_theta loss(theta; x_i, y_i)          per-example gradient, i in S
    gbar     = (1/n) sum_i g_i                            mean (unclipped) gradient
    gclip    = (1/n) sum_i clip_C(g_i)                    mean clipped gradient, the rule
                                                          of the run (flat: min(1, C/||g_i||))
    d        = gbar - gclip                               the clipped-away gradient

and reports

    cosine            cos(gclip, gbar): 1 = clipping changes only the step length
                      (Chen, Wu, Hong 2020: no bias in direction); < 1 = it turns the step.
    norm_ratio        ||gclip|| / ||gbar||.
    fraction_clipped  share of the n examples with ||g_i|| > C.
    per layer l (a layer's kernel and bias together; theta = (theta_1, ..., theta_L)):
      bias_share      ||d_l||^2 / ||d||^2: where the clipped-away gradient lives
                      (sums to 1 over layers);
      grad_share      ||gbar_l||^2 / ||gbar||^2: where the mean gradient lives (sums to 1);
      cosine          cos(gclip_l, gbar_l), the layer's own direction change.

This is the quantity Theorem 1 is about (clipped GD follows gclip, not gbar) measured on
the paper's CNNs instead of a convex GLM. No noise is involved: it is the bias of
clipping alone, at the parameters training reached (with noise, for a DP run).

A non-private run has C = inf; measure it at the C of the DP run it is compared with
(`clip_norm=`). The sample is drawn from the run's own training split (after
`validation` and `limit_train`), so these are diagnostics computed on private data
without noise: not covered by eps, not for release (docs/privacy.md, "What is not
covered"), like the gradient-norm statistics in epochs.jsonl.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit import grads as cg
from toolkit.base import ToolkitError, atomic_write_json, outputs
from toolkit.grads import clipping as clip_lib
from toolkit.runs import RunConfig, config_from_record, rundir
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

DIAGNOSTIC_LABEL = (
    "diagnostic computed on private training data without noise: not covered by eps, "
    "not for release"
)


@dataclasses.dataclass(frozen=True)
class LayerBias:
    """One layer's part of the clipping bias (definitions in the module docstring)."""

    bias_share: float
    grad_share: float
    cosine: float


@dataclasses.dataclass(frozen=True)
class BiasPoint:
    """The clipping bias at one set of parameters (epoch 0: the initialisation)."""

    epoch: int
    cosine: float
    norm_ratio: float
    fraction_clipped: float
    mean_grad_norm: float  # (1/n) sum_i ||g_i||, pre-clip
    layers: dict[str, LayerBias]


@dataclasses.dataclass(frozen=True)
class RunBias:
    """The clipping bias over one run's kept checkpoints, with what it was measured at."""

    run: str
    activation: str
    private: bool
    clip_norm: float  # the C used here (a non-private run: the C given)
    clipping: str
    sample_size: int
    sample_seed: int
    points: list[BiasPoint]
    diagnostic: str = DIAGNOSTIC_LABEL

    @property
    def label(self) -> str:
        return f"{self.activation}, {'DP-SGD' if self.private else 'non-private'}"


def _layer_names(params: Any) -> list[str]:
    """The layer of each leaf: its path without the parameter name ("conv1/kernel" -> conv1)."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if keys and keys[-1] == "value":  # nnx.Param's own field
            keys = keys[:-1]
        names.append("/".join(keys[:-1]) or keys[-1])
    return names


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan


@functools.cache
def _sums_fn(graphdef: nnx.GraphDef, *, clip_norm: float, clipping: str, gamma: float,
             loss_fn=None):  # fmt: skip
    """Jitted `(params, state, x, y) -> (sum g_i, sum clip(g_i), ||g_i||)`, one per model."""
    grads_fn = cg.per_example_grads_fn(graphdef, loss_fn)

    @jax.jit
    def sums(params, state, x, y):
        _, g = grads_fn(params, x, y, state)
        norms = clip_lib.per_example_norms(g)
        w = clip_lib.clip_factors(norms, clipping=clipping, clip_norm=clip_norm, gamma=gamma)
        flat = jax.tree.leaves(jax.tree.map(lambda t: jnp.sum(t, axis=0), g))
        return flat, jax.tree.leaves(clip_lib.clipped_sum(g, w)), norms

    return sums


def measure(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    clip_norm: float,
    clipping: str = "flat",
    gamma: float = 0.01,
    chunk: int = 256,
    epoch: int = 0,
    loss_fn: cg.LossFn | None = None,
) -> BiasPoint:
    """The clipping bias of `model` on (images, labels) under `loss_fn` (default softmax
    cross-entropy).

    Per-example gradients by `jax.vmap(jax.grad)` (`toolkit.grads._per_example`), in chunks of
    `chunk` examples (memory only); sums accumulated in float64.
    """
    if not clip_norm > 0:
        raise ToolkitError(f"clip_norm={clip_norm} must be > 0.")
    graphdef, params, state = cg.split_model(model)
    sums = _sums_fn(graphdef, clip_norm=clip_norm, clipping=clipping, gamma=gamma,
                    loss_fn=loss_fn)  # fmt: skip
    n = len(labels)
    total = clipped_total = None
    norms = []
    for start in range(0, n, chunk):
        x, y = (
            jnp.asarray(images[start : start + chunk]),
            jnp.asarray(labels[start : start + chunk]),
        )
        flat, clipped, nrm = sums(params, state, x, y)
        flat = [np.asarray(t, np.float64) for t in flat]
        clipped = [np.asarray(t, np.float64) for t in clipped]
        total = flat if total is None else [a + b for a, b in zip(total, flat, strict=True)]
        clipped_total = (
            clipped
            if clipped_total is None
            else [a + b for a, b in zip(clipped_total, clipped, strict=True)]
        )
        norms.append(np.asarray(nrm, np.float64))
    norms = np.concatenate(norms)
    names = _layer_names(params)
    gbar = {k: [] for k in dict.fromkeys(names)}
    gclip = {k: [] for k in gbar}
    for name, a, b in zip(names, total, clipped_total, strict=True):
        gbar[name].append(a.ravel() / n)
        gclip[name].append(b.ravel() / n)
    gbar = {k: np.concatenate(v) for k, v in gbar.items()}
    gclip = {k: np.concatenate(v) for k, v in gclip.items()}
    gb, gc = np.concatenate(list(gbar.values())), np.concatenate(list(gclip.values()))
    d2, g2 = float(np.sum((gb - gc) ** 2)), float(gb @ gb)
    layers = {
        k: LayerBias(
            bias_share=float(np.sum((gbar[k] - gclip[k]) ** 2)) / d2 if d2 > 0 else 0.0,
            grad_share=float(gbar[k] @ gbar[k]) / g2 if g2 > 0 else math.nan,
            cosine=_cos(gclip[k], gbar[k]),
        )
        for k in gbar
    }
    return BiasPoint(
        epoch=epoch,
        cosine=_cos(gc, gb),
        norm_ratio=float(np.linalg.norm(gc) / np.linalg.norm(gb)) if g2 > 0 else math.nan,
        fraction_clipped=float(np.mean(norms > clip_norm)),
        mean_grad_norm=float(np.mean(norms)),
        layers=layers,
    )


def check_run(
    run: str | Path, *, clip_norm: float | None = None, objects: Objects = Objects()
) -> tuple[RunConfig, dict, float]:
    """`(config, {epoch: kept checkpoint}, C)` of a run; a one-line ToolkitError if unusable.

    A run whose model or data was given in Python (`python:` in its config) needs them
    again in `objects` (from Python; the command line cannot).
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


def run_bias(
    run: str | Path,
    *,
    sample_size: int = 1000,
    seed: int = 0,
    clip_norm: float | None = None,
    model: nnx.Module | Callable[..., nnx.Module] | None = None,
    train_data: tuple[Any, Any] | None = None,
) -> RunBias:
    """The clipping bias at the initialisation and at every checkpoint kept in `run`.

    Args:
        run: A run directory written with `keep_checkpoints` K (`toolkit train` or `fit`).
        sample_size: Number of training examples, drawn without replacement from `seed`.
        seed: Seed of the sample (the same seed and run give the same sample).
        clip_norm: C to clip at; default the run's C. Required for a non-private run.
        model, train_data: The run's model and training arrays, when they were given in
            Python. The model is an instance of the trained structure, a function of no
            arguments returning one, or its factory `f(rngs=...)`: only a factory (or a
            model the run names) gives the epoch-0 point, the initialisation at the run's
            seed.
    """
    objects = Objects(model=model, train_data=train_data)
    cfg, kept, clip_norm = check_run(run, clip_norm=clip_norm, objects=objects)
    clipping = cfg.clipping if cfg.private else "flat"
    data = load_data(cfg, objects)
    n = len(data.train_labels)
    if not 1 <= sample_size <= n:
        raise ToolkitError(f"--sample={sample_size} must be in [1, {n}] (the run's training set).")
    idx = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
    x = jnp.asarray(model_inputs(data, data.train_images[idx]))
    y = jnp.asarray(data.train_labels[idx])
    kw = dict(
        clip_norm=clip_norm, clipping=clipping, gamma=cfg.gamma, loss_fn=loss_of(cfg, objects)
    )
    # The initialisation is rebuilt from the run's seed when the model is built from its
    # record or from the factory given; an instance's starting values were not recorded.
    rebuilt = model is None or is_factory(model)
    if rebuilt:  # the kind of model the run was made from: its noise key tells
        with np.load(next(iter(kept.values()))) as z:
            check_model_kind(cfg, objects, saved_key=z["key"], where=f"RUN_DIR={run}")
    start = init_model(cfg, data, objects) if rebuilt else None
    points = [] if start is None else [measure(start, x, y, epoch=0, **kw)]
    for epoch in kept:
        trained = load_run(run, epoch=epoch, model=model).model
        points.append(measure(trained, x, y, epoch=epoch, **kw))
    return RunBias(
        run=str(run), activation=cfg.label, private=cfg.private,
        clip_norm=clip_norm, clipping=clipping, sample_size=sample_size,
        sample_seed=seed, points=points,
    )  # fmt: skip


def write_json(results: list[RunBias], path: str | Path) -> Path:
    """Write `results` atomically to PATH (.json)."""
    path = outputs.file_set(path, (".json",))[0]  # dots in the name are kept
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path, {"diagnostic": DIAGNOSTIC_LABEL, "runs": [dataclasses.asdict(r) for r in results]}
    )
    return path
