"""The public API: DP-SGD on any Flax NNX model (`fit`), and trained runs back (`load_run`).

>>> result = toolkit.fit(model, (x, y), optimizer=optax.sgd(0.5, momentum=0.9),
...                      batch_size=256, epochs=5, clip_norm=1.0, target_epsilon=3.0)
>>> result.epsilon          # {'rdp': ..., 'rdp-classic': ..., 'pld': ...}
>>> result.model            # the trained nnx.Module

`fit` is the same loop as `toolkit train` (`toolkit.training._loop`): Poisson sampling over the
N training examples, per-example clipping (`toolkit.grads._per_example`), Gaussian noise on
the clipped sum then division by B (`toolkit.privacy._privatizer`), the optimizer you give, eps
under every accountant (`toolkit.privacy._params`). With `out=DIR` it writes a run directory
(`toolkit.runs.rundir`) that `load_run(DIR, model=...)` reads back.

What eps covers: the training examples, under add/remove-one neighbours, for the
mechanism above. Not covered: hyperparameters tuned on the same data, and whatever the
metric hooks compute on private data.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

from toolkit import grads as cg
from toolkit.base import ToolkitError
from toolkit.grads import Augmult
from toolkit.privacy import (
    NON_PRIVATE_LABEL,
    PrivacyParams,
    make_sampler,
    physical_batch_size,
    randomness,
    steps_per_epoch,
)
from toolkit.privacy.accounting import ACCOUNTANTS
from toolkit.runs import EpochRecord, RunSummary, rundir
from toolkit.training import _averaging as averaging
from toolkit.training import _dpsgd as dpsgd
from toolkit.training import metrics as metrics_lib
from toolkit.training._loop import Loop, MetricFn
from toolkit.training._parallel import DataParallel
from toolkit.training._progress import Display, progress_display


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The settings of a `fit` run, as recorded in config.json (kind "fit").

    The model, loss and optimizer are code; they are recorded by name only.
    """

    num_train: int
    batch_size: int
    epochs: int
    clip_norm: float
    clipping: str
    gamma: float
    noise_multiplier: float  # resolved: calibrated when target_epsilon was given
    target_epsilon: float | None
    delta: float
    accountant: str
    sampling: str
    seed: int
    per_example: str
    max_physical_batch: int
    model: str
    loss: str
    optimizer: str
    ema_decay: float | None = None
    augment: str | None = None  # the Augmult, as its repr

    # Left out of the config hash at these values, so runs written before they existed
    # keep their hash (and resume).
    HASH_DEFAULTS: ClassVar[dict[str, Any]] = {"ema_decay": None, "augment": None}

    @property
    def private(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FitConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A trained run: the model, eps under every accountant, per-epoch records, config."""

    model: nnx.Module
    epsilon: Mapping[str, float]  # accountant -> eps (inf: no guarantee)
    history: Sequence[EpochRecord]
    config: Any  # FitConfig, or TrainConfig for a `toolkit train` run
    summary: RunSummary | None = None  # None while a run directory is unfinished


@dataclasses.dataclass(frozen=True)
class _Setup:
    """A `Loop` plus its initial mutable state, before any step ran."""

    loop: Loop
    params: Any
    opt_state: Any
    noise_key: jax.Array


def build_loop(
    model: nnx.Module,
    train_x: jax.Array,
    train_y: jax.Array,
    *,
    loss_fn: cg.LossFn | None,
    optimizer: optax.GradientTransformation,
    mechanism: dpsgd.Mechanism,
    privacy: PrivacyParams | None,
    batch_size: int,
    epochs: int,
    sampling: str,
    accountant: str,
    seed: int,
    noise_key: jax.Array,
    per_example: str = "auto",
    max_physical_batch: int = 512,
    metric_hooks: Sequence[MetricFn] = (),
    select: Callable[[np.ndarray], np.ndarray] | None = None,
    lr_hint: str = "",
    ema_decay: float | None = None,
    augment: Augmult | None = None,
) -> _Setup:
    """Everything `toolkit.training._loop.Loop.run` needs; shared by `fit`, `toolkit train`, audit.

    `ema_decay` chains `toolkit.training._averaging.track_ema` after the privatized optimizer: an
    average of the iterates for the metric hooks, which never changes the update.
    """
    graphdef, params, state = cg.split_model(model)
    n = len(train_y)
    clip = mechanism.clipped_grad(
        graphdef, loss_fn=loss_fn, implementation=per_example, augment=augment
    )
    # Checked at the micro-batch shape training runs (before rounding to the devices).
    rows = min(physical_batch_size(batch_size, max_physical=max_physical_batch), n)
    clip = clip.checked(params, state, train_x, train_y, rows=rows)
    # All local devices share the per-example work. Not under vmap: XLA 0.10 returns wrong
    # vmap'd convolution kernel gradients on batch-sharded inputs (benchmarks/README.md).
    devices = (
        DataParallel() if clip.implementation == "bookkeeping" else DataParallel(jax.devices()[:1])
    )
    physical = devices.round_up(physical_batch_size(batch_size, max_physical=max_physical_batch))
    tx = mechanism.privatized(optimizer, expected_batch_size=float(batch_size), key=noise_key)
    if ema_decay is not None:
        tx = optax.chain(tx, averaging.track_ema(ema_decay))
    stream = ids = None
    if randomness.has_keys(state) or augment is not None:  # each example's own key
        stream = randomness.example_stream(noise_key)
        ids = jnp.asarray(randomness.example_ids(train_x, train_y))
    train_x, train_y, stream, ids = devices.replicate((train_x, train_y, stream, ids))
    loop = Loop(
        graphdef=graphdef,
        state=state,
        example_stream=stream,
        example_ids=ids,
        clip=clip,
        accumulate=dpsgd.make_accumulate_fn(clip),
        update=dpsgd.make_update(tx),
        sampler=make_sampler(sampling, num_examples=n, batch_size=batch_size, seed=seed),
        train_x=train_x,
        train_y=train_y,
        physical=physical,
        devices=devices,
        steps_per_epoch=steps_per_epoch(n, batch_size),  # what `privacy` counts, N // B
        epochs=epochs,
        sampling=sampling,
        accountant=accountant,
        privacy=privacy,
        metrics=tuple(metric_hooks),
        select=select,
        lr_hint=lr_hint,
    )
    return _Setup(loop, params, tx.init(params), noise_key)


def summarize(
    history: Sequence[EpochRecord],
    *,
    num_train: int,
    epochs: int,
    privacy: PrivacyParams | None,
    accountant: str,
    sampling: str,
    dataset: str | None = None,
    activation: str | None = None,
    metric_keys: Sequence[str] | None = None,
) -> RunSummary:
    """The run summary from the epoch records (`metric_keys`: which final metrics to keep)."""
    last = history[-1]
    compiled = [r for r in history if r.compile_time_s is not None]
    kept = {k: v for k, v in last.metrics.items() if metric_keys is None or k in metric_keys}
    return RunSummary(
        dataset=dataset,
        activation=activation,
        epochs=epochs,
        num_train=num_train,
        private=privacy is not None,
        noise_multiplier=privacy.noise_multiplier if privacy is not None else 0.0,
        epsilon=last.epsilon,
        delta=privacy.delta if privacy is not None else None,
        accountant=accountant,
        sampling=sampling,
        privacy=privacy.label if privacy is not None else NON_PRIVATE_LABEL,
        train_time_s=sum(r.epoch_time_s + (r.compile_time_s or 0.0) for r in history),
        per_example_grads=last.per_example_grads,
        metrics=kept,
        compile_time_s=sum(r.compile_time_s for r in compiled) if compiled else None,
    )


def fit(
    model: nnx.Module,
    train_data: tuple[ArrayLike, ArrayLike],
    *,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    epochs: int,
    clip_norm: float,
    loss_fn: cg.LossFn | None = None,
    clipping: str = "flat",
    gamma: float = 0.01,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    accountant: str = "rdp-classic",
    sampling: str = "poisson",
    seed: int = 0,
    eval_data: tuple[ArrayLike, ArrayLike] | None = None,
    classification: bool = True,
    metrics: Sequence[MetricFn] = (),
    out: str | Path | None = None,
    per_example: str = "auto",
    max_physical_batch: int = 512,
    progress: bool | Display = False,
    ema_decay: float | None = None,
    augment: Augmult | None = None,
) -> FitResult:
    """Train `model` with DP-SGD on `train_data`; returns the trained model and its eps.

    Args:
        model: Any Flax NNX module mapping a batch of inputs to outputs. Its `nnx.Param`s
            are trained; other state (dropout's PRNG stream, constants) is passed through.
            BatchNorm is refused (it mixes examples). The module itself is not modified.
        train_data: `(inputs, labels)` arrays with the same leading size N.
        optimizer: Any optax transformation; it receives the privatized mean gradient.
        batch_size: Expected batch size B; Poisson sampling probability q = B / N.
        epochs: Epochs of N // B steps each.
        clip_norm: Per-example clipping norm C (flat). Automatic clipping has none (it
            normalises, sensitivity 1): there C only sets the threshold of the
            `fraction_clipped` diagnostic, and neither the update nor the noise depends on it.
        loss_fn: `loss_fn(outputs, labels) -> (batch,)` per-example losses; default
            softmax cross-entropy with integer labels.
        clipping: "flat" (sensitivity C) or "automatic" (g / (||g|| + gamma), sensitivity 1).
        gamma: Automatic clipping's stabiliser.
        noise_multiplier: sigma; give exactly one of it and `target_epsilon`.
        target_epsilon: Calibrate sigma so that the `accountant` eps is at most this.
        delta: delta of the guarantee.
        accountant: "rdp-classic", "rdp" or "pld": calibrates sigma and names the headline.
        sampling: "poisson" (what the accountants assume) or "shuffle" (labelled so).
        seed: Seeds batch sampling and noise. Not the model's init, nor dropout masks:
            those come from the model's own `nnx.Rngs` key, folded with (step, micro-batch).
        eval_data: `(inputs, labels)` evaluated after each epoch (loss, and accuracy with
            `classification`).
        classification: Whether outputs are (B, k) logits of integer labels (accuracy).
        metrics: More per-epoch hooks `f(EpochContext) -> dict` (`toolkit.training.metrics`).
        out: Run directory to create (must be absent or empty).
        per_example: "auto", "bookkeeping" or "vmap" (speed only, `toolkit.grads._per_example`).
        max_physical_batch: Micro-batch cap (memory and speed only).
        progress: True for a progress bar (one line per epoch without a terminal).
        ema_decay: Also keep an exponential moving average of the iterates (post-processing,
            no privacy cost; `toolkit.training._averaging`); `eval_data` is then evaluated on it too,
            as `ema_test_*`. The returned model is the last iterate.
        augment: Augmentation multiplicity for image inputs (N, H, W, C):
            `toolkit.grads._augment.Augmult(k)` averages each example's gradient over K random
            shift/flip views before clipping (sensitivity unchanged; vmap path).

    Returns:
        A `FitResult`: `.model`, `.epsilon` (all three accountants), `.history`, `.config`.
    """
    x, y = _check_data("train_data", train_data)
    n = len(y)
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ToolkitError(
            "give exactly one of noise_multiplier and target_epsilon "
            f"(got noise_multiplier={noise_multiplier}, target_epsilon={target_epsilon})."
        )
    _check_int("batch_size", batch_size, 1, n)
    _check_int("epochs", epochs, 1, 10**6)
    _check_int("seed", seed, 0, 2**63 - 1)
    _check_int("max_physical_batch", max_physical_batch, 1, 2**31 - 1)
    if not (isinstance(clip_norm, int | float) and 0 < clip_norm < math.inf):
        raise ToolkitError(f"clip_norm={clip_norm!r} must be finite and > 0.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ToolkitError(f"optimizer={optimizer!r} must be an optax GradientTransformation.")
    if not isinstance(model, nnx.Module):
        raise ToolkitError(f"model must be a flax.nnx.Module, got {type(model).__name__}.")
    if out is not None:
        out = Path(out)
        rundir.prepare_new(out)
    if delta >= 1 / n:
        warnings.warn(
            f"delta={delta} >= 1/N = {1 / n:.3g}: such a delta permits releasing a whole "
            "example; use delta < 1/N.",
            stacklevel=2,
        )
    if target_epsilon is not None:
        privacy = PrivacyParams.calibrated(
            target_epsilon=target_epsilon, num_examples=n, batch_size=batch_size, epochs=epochs,
            delta=delta, accountant=accountant, sampling=sampling,
        )  # fmt: skip
    else:
        privacy = PrivacyParams(
            n, batch_size, epochs, noise_multiplier, delta, accountant, sampling
        )
    mech = dpsgd.Mechanism(
        clipping=clipping, clip_norm=clip_norm, gamma=gamma,
        noise_multiplier=privacy.noise_multiplier,
    )  # fmt: skip
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ToolkitError(f"ema_decay={ema_decay!r} must be in (0, 1).")
    hooks = list(metrics)
    if eval_data is not None:
        ex, ey = _check_data("eval_data", eval_data)
        evals = [
            metrics_lib.evaluation(
                (ex, ey), loss_fn=loss_fn, classification=classification, averaged=avg
            )
            for avg in ((False, True) if ema_decay is not None else (False,))
        ]
        hooks[:0] = evals
    cfg = FitConfig(
        num_train=n, batch_size=batch_size, epochs=epochs, clip_norm=float(clip_norm),
        clipping=clipping, gamma=gamma, noise_multiplier=privacy.noise_multiplier,
        target_epsilon=target_epsilon, delta=delta, accountant=accountant, sampling=sampling,
        seed=seed, per_example=per_example, max_physical_batch=max_physical_batch,
        model=type(model).__qualname__, loss=getattr(loss_fn, "__name__", "softmax_cross_entropy")
        if loss_fn is not None else "softmax_cross_entropy", optimizer=_name(optimizer),
        ema_decay=ema_decay, augment=None if augment is None else repr(augment),
    )  # fmt: skip
    setup = build_loop(
        model, jnp.asarray(x), jnp.asarray(y), loss_fn=loss_fn, optimizer=optimizer,
        mechanism=mech, privacy=privacy, batch_size=batch_size, epochs=epochs,
        sampling=sampling, accountant=accountant, seed=seed, noise_key=jax.random.key(seed),
        per_example=per_example, max_physical_batch=max_physical_batch, metric_hooks=hooks,
        ema_decay=ema_decay, augment=augment,
    )  # fmt: skip
    on_epoch_end = None
    if out is not None:
        extra = {"provenance": rundir.provenance(), "privacy": privacy.label}
        rundir.write_config(out, cfg, extra, kind="fit")
        on_epoch_end = rundir.epoch_writer(
            out, key=setup.noise_key, state=setup.loop.state, cfg_hash=rundir.config_hash(cfg),
            steps_per_epoch=setup.loop.steps_per_epoch,
        )  # fmt: skip
    display = progress if not isinstance(progress, bool) else progress_display(progress)
    params, _, history = setup.loop.run(
        setup.params, setup.opt_state, on_epoch_end=on_epoch_end, progress=display
    )
    summary = summarize(
        history, num_train=n, epochs=epochs, privacy=privacy, accountant=accountant,
        sampling=sampling,
    )  # fmt: skip
    if out is not None:
        rundir.write_summary(out, summary)
    trained = cg.merge(setup.loop.graphdef, params, setup.loop.state)
    return FitResult(trained, final_epsilon(summary), history, cfg, summary)


def load_run(
    path: str | Path,
    *,
    model: nnx.Module | Callable[[], nnx.Module] | None = None,
    epoch: int | None = None,
) -> FitResult:
    """A run directory back as a `FitResult`, with the trained model rebuilt.

    Args:
        path: A run directory written by `toolkit train --out` or `fit(out=...)`.
        model: For `fit` runs, the model's structure: an instance of the same class and
            shape (its values are replaced), or a function returning one. Not needed for
            `toolkit train` runs, whose model is known from the config.
        epoch: Load the checkpoint kept after this epoch (`toolkit train
            --keep-checkpoints`) instead of the last one; the history is then the one it
            holds (epochs 1..epoch).

    Returns:
        The model with the parameters of the last finished epoch (the checkpoint), the
        eps under every accountant, the history, the config and the summary (None while
        unfinished).
    """
    from toolkit.nn import build_model
    from toolkit.runs import TrainConfig

    path = Path(path)
    record = rundir.read_config(path)
    kind = record.get("kind", "train")  # runs written before the library API are train runs
    try:
        if kind == "train":
            cfg: Any = TrainConfig.from_dict(record["config"])
            skeleton = build_model(
                cfg.dataset, cfg.activation, seed=0,
                weight_standardization=cfg.weight_standardization,
            )  # fmt: skip
        elif kind == "fit":
            cfg = FitConfig.from_dict(record["config"])
            if model is None:
                raise ToolkitError(
                    f"{path} is a toolkit.fit run of a {cfg.model}; pass model= an instance "
                    f"of {cfg.model} (or a function returning one) to rebuild it."
                )
            skeleton = model() if callable(model) and not isinstance(model, nnx.Module) else model
        else:
            raise ToolkitError(f"{path / rundir.CONFIG} has unknown kind {kind!r}.")
    except (KeyError, TypeError) as e:
        raise ToolkitError(f"{path / rundir.CONFIG} is not a valid run config ({e}).") from None
    graphdef, template, state = cg.split_model(skeleton)
    file = rundir.CHECKPOINT if epoch is None else rundir.kept_checkpoint(epoch)
    params, _, saved_state, _, meta = rundir.load_checkpoint(
        path, params=template, opt_state=None, state=state, cfg_hash=None, file=file
    )
    trained = cg.merge(graphdef, params, state if saved_state is None else saved_state)
    history = rundir.read_epochs(path) if epoch is None else meta["history"]
    summary = rundir.read_summary(path)
    done = summary is not None and epoch is None  # a kept checkpoint: eps spent by then
    last = summary.epsilon if done else (history[-1].epsilon if history else {})
    return FitResult(trained, final_epsilon(last), history, cfg, summary)


def final_epsilon(last: RunSummary | Mapping[str, float | None]) -> dict[str, float]:
    """{accountant: eps} of a summary (or an epsilon mapping); None (stored inf) -> inf."""
    eps = last.epsilon if isinstance(last, RunSummary) else last
    return {name: math.inf if eps.get(name) is None else eps[name] for name in ACCOUNTANTS}


def _check_data(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ToolkitError(f"{name} must be an (inputs, labels) pair of arrays.")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y) or len(y) == 0:
        raise ToolkitError(
            f"{name}: inputs {x.shape} and labels {y.shape} must have one equal leading size >= 1."
        )
    return x, y


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not (
        isinstance(value, int | np.integer) and not isinstance(value, bool) and lo <= value <= hi
    ):
        raise ToolkitError(f"{name}={value!r} must be an integer in [{lo}, {hi}].")


def _name(optimizer: optax.GradientTransformation) -> str:
    init = getattr(optimizer.init, "__qualname__", "")
    return init.split(".<locals>")[0] or type(optimizer).__name__
