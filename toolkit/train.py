"""The training loop: DP-SGD epochs, evaluation, metrics, checkpoints.

`train(cfg, out=...)` runs a configuration and writes its run directory;
`resume(out)` continues one. Both end with the same numbers for the same
config: batches and noise keys are functions of (seed, step) and the
checkpoint restores params and optimizer state bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from toolkit import accounting, dpsgd, rundir
from toolkit.config import TrainConfig, resolve
from toolkit.data import Dataset, load_dataset, to_float
from toolkit.errors import ToolkitError
from toolkit.models import build_model
from toolkit.parallel import DataParallel
from toolkit.sampling import make_sampler, pad_chunks, physical_batch_size

_EVAL_BATCH = 1000
_ACT_NORM_EXAMPLES = 1000  # fixed test images on which Figure 5's activation norm is measured


class TrainingDiverged(ToolkitError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""


@dataclasses.dataclass
class _Run:
    """Everything a run needs on device, built once from a resolved config."""

    cfg: TrainConfig
    data: Dataset
    graphdef: Any
    params: Any
    opt_state: Any
    key: jax.Array
    optimizer: optax.GradientTransformation

    @property
    def num_train(self) -> int:
        return len(self.data.train_labels)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.cfg.batch_size


def load_data(cfg: TrainConfig) -> Dataset:
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    if cfg.limit_train is not None and cfg.limit_train < len(data.train_labels):
        data = dataclasses.replace(
            data,
            train_images=data.train_images[: cfg.limit_train],
            train_labels=data.train_labels[: cfg.limit_train],
        )
    return data


def _init(cfg: TrainConfig, data: Dataset) -> _Run:
    init_key, noise_key = jax.random.split(jax.random.key(cfg.seed))
    model = build_model(
        cfg.dataset, cfg.activation, seed=int(jax.random.randint(init_key, (), 0, 2**31 - 1))
    )
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = dpsgd.make_optimizer(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum)
    return _Run(cfg, data, graphdef, params, optimizer.init(params), noise_key, optimizer)


def epsilon_schedule(cfg: TrainConfig, *, num_examples: int) -> list[dict[str, float | None]]:
    """eps after each epoch under every accountant (None for a non-private run)."""
    if not cfg.private:
        return [dict.fromkeys(accounting.ACCOUNTANTS) for _ in range(cfg.epochs)]
    spe = num_examples // cfg.batch_size
    steps = [spe * (e + 1) for e in range(cfg.epochs)]
    curves = {
        name: accounting.epsilon_curve(
            accountant=name,
            noise_multiplier=cfg.noise_multiplier,
            sampling_prob=cfg.batch_size / num_examples,
            steps=steps,
            delta=cfg.delta,
        )
        for name in accounting.ACCOUNTANTS
    }
    return [{name: curves[name][e] for name in accounting.ACCOUNTANTS} for e in range(cfg.epochs)]


def privacy_label(cfg: TrainConfig) -> str:
    """How the headline eps was obtained, e.g. 'rdp-classic, Poisson sampling'."""
    if not cfg.private:
        return "non-private (no DP guarantee)"
    if cfg.sampling == "poisson":
        return f"{cfg.accountant}, Poisson sampling"
    return (
        f"{cfg.accountant} Poisson analysis applied to SHUFFLED batches "
        "(not a proven bound for this sampling)"
    )


def _make_eval(graphdef):
    @jax.jit
    def evaluate(params, x, y):
        model = nnx.merge(graphdef, params)
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.argmax(logits, -1) == y, loss

    @jax.jit
    def act_norm(params, x):
        a = nnx.merge(graphdef, params).first_activation(x)
        return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1)))

    return evaluate, act_norm


def _evaluate(run: _Run, params, evaluate, act_norm, test_x, test_y) -> dict[str, Any]:
    correct, losses = [], []
    n = len(run.data.test_labels)
    for i in range(0, n, _EVAL_BATCH):
        batch = slice(i, i + _EVAL_BATCH)
        hits, loss = evaluate(params, test_x[batch], test_y[batch])
        correct.append(np.asarray(hits))
        losses.append(np.asarray(loss))
    correct, losses = np.concatenate(correct), np.concatenate(losses)
    labels = run.data.test_labels
    k = run.data.num_classes
    per_class = np.bincount(labels, weights=correct, minlength=k) / np.maximum(
        np.bincount(labels, minlength=k), 1
    )
    return {
        "test_accuracy": float(correct.mean()),
        "test_loss": float(losses.mean()),
        "per_class_accuracy": [float(a) for a in per_class],
        "per_class_accuracy_std": float(np.std(per_class)),
        "first_conv_activation_norm": float(act_norm(params, test_x[:_ACT_NORM_EXAMPLES])),
    }


def _grad_norm_stats(norms: np.ndarray, clip_norm: float) -> dict[str, float]:
    """Pre-clip norm statistics over the finite norms; non-finite gradients were dropped."""
    finite = norms[np.isfinite(norms)]
    stats = {"nonfinite_fraction": float(1.0 - finite.size / max(norms.size, 1))}
    if finite.size == 0:
        return {"mean": math.nan, "median": math.nan, "max": math.nan,
                "fraction_clipped": math.nan, **stats}  # fmt: skip
    return {
        "mean": float(np.mean(finite)),
        "median": float(np.median(finite)),
        "max": float(np.max(finite)),
        "fraction_clipped": float(np.mean(finite > clip_norm)),
        **stats,
    }


@contextlib.contextmanager
def _progress(enabled: bool, total: int, completed: int) -> Iterator:
    if not enabled:
        yield None, None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        yield bar, bar.add_task("training", total=total, completed=completed)


def _fit(run: _Run, out: Path | None, *, start_epoch: int, history: list, progress: bool):
    cfg = run.cfg
    mech = dpsgd.Mechanism(
        clipping=cfg.clipping,
        clip_norm=cfg.clip_norm,
        gamma=cfg.gamma,
        noise_multiplier=cfg.noise_multiplier,
    )
    update = dpsgd.make_update(run.optimizer, mech, expected_batch_size=float(cfg.batch_size))
    evaluate, act_norm = _make_eval(run.graphdef)
    sampler = make_sampler(
        cfg.sampling, num_examples=run.num_train, batch_size=cfg.batch_size, seed=cfg.seed
    )
    train_x = jnp.asarray(to_float(run.data.train_images))
    per_example = dpsgd.resolve_implementation(
        run.graphdef, run.params, train_x, jnp.asarray(run.data.train_labels), cfg.per_example
    )
    accumulate = dpsgd.make_accumulate(run.graphdef, mech, implementation=per_example)
    # All local devices share the per-example work. Not under vmap: XLA 0.10 returns wrong
    # vmap'd convolution kernel gradients on batch-sharded inputs (benchmarks/README.md).
    devices = DataParallel() if per_example == "bookkeeping" else DataParallel(jax.devices()[:1])
    physical = devices.round_up(
        physical_batch_size(cfg.batch_size, max_physical=cfg.max_physical_batch)
    )
    train_x, train_y = devices.replicate((train_x, jnp.asarray(run.data.train_labels)))
    test_x = jnp.asarray(to_float(run.data.test_images))
    test_y = jnp.asarray(run.data.test_labels)
    eps_by_epoch = epsilon_schedule(cfg, num_examples=run.num_train)
    cfg_hash = rundir.config_hash(cfg)
    spe = run.steps_per_epoch
    params, opt_state = devices.replicate((run.params, run.opt_state))
    zeros = dpsgd.zeros_like(params)

    with _progress(progress, cfg.epochs * spe, start_epoch * spe) as (bar, task):
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            norms, masks, losses, sizes = [], [], [], []
            for step in range(epoch * spe, (epoch + 1) * spe):
                idx = sampler.indices(step)
                acc = zeros
                for chunk_idx, chunk_mask in pad_chunks(idx, physical):
                    chunk = devices.shard_batch((chunk_idx, chunk_mask))
                    acc, n, loss = accumulate(params, acc, train_x, train_y, *chunk)
                    norms.append(n)
                    masks.append(chunk_mask)
                    losses.append(loss)
                sizes.append(len(idx))
                params, opt_state = update(
                    params, opt_state, acc, jax.random.fold_in(run.key, step)
                )
                if bar is not None:
                    bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs}")
            sampled = np.concatenate(masks)
            all_norms = np.concatenate([np.asarray(n) for n in norms])[sampled]
            all_losses = np.concatenate([np.asarray(v) for v in losses])[sampled]
            # Single examples with a non-finite loss or gradient are dropped by the clipping
            # rule and left out of the mean loss; the run has diverged only when the
            # parameters stop being finite or no example of the epoch is finite any more.
            finite_losses = all_losses[np.isfinite(all_losses)]
            train_loss = float(np.mean(finite_losses)) if finite_losses.size else math.nan
            finite = (finite_losses.size > 0 or all_losses.size == 0) and all(
                bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)
            )
            if not finite:
                kept = f"; the checkpoint of epoch {epoch} is kept in {out}" if out else ""
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch + 1}: the parameters or the train loss "
                    f"of every example are not finite (lr={cfg.lr} may be too large){kept}."
                )
            record = {
                "epoch": epoch + 1,
                "step": (epoch + 1) * spe,
                "train_loss": train_loss,
                "nonfinite_loss_fraction": 1.0 - finite_losses.size / max(all_losses.size, 1),
                **_evaluate(run, params, evaluate, act_norm, test_x, test_y),
                "epsilon": eps_by_epoch[epoch],
                "accountant": cfg.accountant,
                "sampling": cfg.sampling,
                "privacy": privacy_label(cfg),
                "grad_norm": _grad_norm_stats(all_norms, cfg.clip_norm),
                "per_example_grads": per_example,
                "batch_size_mean": float(np.mean(sizes)),
                "epoch_time_s": time.perf_counter() - t0,
            }
            history.append(rundir.jsonable(record))
            if out is not None:
                rundir.save_checkpoint(
                    out, params=params, opt_state=opt_state, key=run.key,
                    step=(epoch + 1) * spe, epoch=epoch + 1, history=history, cfg_hash=cfg_hash,
                )  # fmt: skip
                rundir.write_epochs(out, history)
    return params, opt_state, history


def _summary(cfg: TrainConfig, history: list[dict[str, Any]], num_train: int) -> dict[str, Any]:
    last = history[-1]
    return rundir.jsonable(
        {
            "dataset": cfg.dataset,
            "activation": cfg.activation.label,
            "epochs": cfg.epochs,
            "num_train": num_train,
            "private": cfg.private,
            "noise_multiplier": cfg.noise_multiplier,
            "test_accuracy": last["test_accuracy"],
            "per_class_accuracy_std": last["per_class_accuracy_std"],
            "epsilon": last["epsilon"],
            "delta": cfg.delta if cfg.private else None,
            "accountant": cfg.accountant,
            "sampling": cfg.sampling,
            "privacy": privacy_label(cfg),
            "train_time_s": sum(r["epoch_time_s"] for r in history),
            "per_example_grads": last.get("per_example_grads"),
        }
    )


def train(
    cfg: TrainConfig, *, out: Path | None = None, progress: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `cfg` from scratch; returns (summary, epoch history).

    All validation (settings, data, --out) happens before anything is written.
    """
    if out is not None:
        rundir.prepare_new(out)
    data = load_data(cfg)
    requested = cfg.to_dict()
    cfg = resolve(cfg, num_examples=len(data.train_labels))
    run = _init(cfg, data)
    if out is not None:
        extra = {
            "requested": requested,
            "provenance": rundir.provenance(),
            "privacy": privacy_label(cfg),
        }  # noqa: E501
        rundir.write_config(out, cfg, extra)
    _, _, history = _fit(run, out, start_epoch=0, history=[], progress=progress)
    summary = _summary(cfg, history, run.num_train)
    if out is not None:
        rundir.write_summary(out, summary)
    return summary, history


def resume(out: Path, *, progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Continue the run in `out` from its last checkpoint to the configured number of epochs."""
    record = rundir.read_config(out)
    try:
        cfg = TrainConfig.from_dict(record["config"])
        same = rundir.config_hash(cfg) == record.get("config_hash")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ToolkitError(f"{out / rundir.CONFIG} is not a valid run config ({e}).") from None
    if not same:  # checked before the config is used: an edited file could hold anything
        raise ToolkitError(f"{out / rundir.CONFIG} was edited (hash mismatch); it cannot resume.")
    data = load_data(cfg)
    run = _init(cfg, data)
    if (out / rundir.CHECKPOINT).exists():
        params, opt_state, key, meta = rundir.load_checkpoint(
            out, params=run.params, opt_state=run.opt_state, cfg_hash=record["config_hash"]
        )
        run = dataclasses.replace(run, params=params, opt_state=opt_state, key=key)
        start, history = meta["epoch"], meta["history"]
    else:  # killed before the first epoch ended
        start, history = 0, []
    rundir.remove_stale_temporaries(out)  # left by a kill during an atomic write
    rundir.write_epochs(out, history)
    if start < cfg.epochs:
        _, _, history = _fit(run, out, start_epoch=start, history=history, progress=progress)
    summary = _summary(cfg, history, run.num_train)
    rundir.write_summary(out, summary)
    return summary, history
