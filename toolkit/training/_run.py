"""One kind of run: `fit` (Python), `train` (a `RunConfig`), `resume`, and `load_run`.

>>> result = toolkit.fit(model, (x, y), optimizer=toolkit.optimizer("sgd", lr=0.5),
...                      batch_size=256, epochs=5, clip_norm=1.0, target_epsilon=3.0)
>>> result.epsilon          # {'rdp': ..., 'rdp-classic': ..., 'pld': ...}
>>> result.model            # the trained nnx.Module

`fit` turns its arguments into a `RunConfig` (objects given in Python are recorded by
import path, or as `python:<name>`) and calls `train`, which `toolkit train` calls too:
the same loop (`toolkit.training._loop`), the same run directory (`toolkit.runs.rundir`),
the same records. Poisson sampling over the N training examples, per-example clipping
(`toolkit.grads`), Gaussian noise on the clipped sum then division by B
(`toolkit.privacy`), the optimizer, eps under every accountant.

`resume(out)` continues a run from its last checkpoint and ends with the numbers of an
uninterrupted run: batches and noise keys are functions of (seed, step), and the
checkpoint restores parameters and optimizer state bit for bit.

What eps covers: the training examples, under add/remove-one neighbours, for the
mechanism above. Not covered: hyperparameters tuned on the same data, and whatever the
metric hooks compute on private data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from toolkit import grads as cg
from toolkit.base import ToolkitError, specs
from toolkit.data import DATASETS
from toolkit.grads import LOSSES, Augmult
from toolkit.nn import build_paper_cnn
from toolkit.privacy import (
    NON_PRIVATE_LABEL,
    PrivacyParams,
    make_sampler,
    physical_batch_size,
    randomness,
    steps_per_epoch,
)
from toolkit.privacy.accounting import ACCOUNTANTS
from toolkit.runs import EpochRecord, RunConfig, RunSummary, config_from_record, rundir
from toolkit.runs import resolve as resolve_config
from toolkit.runs import validate as validate_config
from toolkit.training import _averaging as averaging
from toolkit.training import _distributed as multihost
from toolkit.training import _dpsgd as dpsgd
from toolkit.training import metrics as metrics_lib
from toolkit.training._loop import Loop, MetricFn
from toolkit.training._parallel import DataParallel
from toolkit.training._progress import Display, progress_display
from toolkit.training._sources import (
    ARRAYS,
    Objects,
    OptimizerSpec,
    build_model,
    check_model_kind,
    is_factory,
    load_data,
    loss_of,
    model_inputs,
    optimizer_of,
    run_keys,
)
from toolkit.training._tracking import TensorBoardSink

# Metrics that stay in epochs.jsonl only: summary.json keeps the last epoch's others.
_EPOCH_ONLY = ("per_class_accuracy", "first_conv_activation_norm")
# The input shape of each named data set, to rebuild the paper CNN without loading it.
_SHAPES = {"mnist": (28, 28, 1), "fashion-mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A trained run: the model, eps under every accountant, per-epoch records, config."""

    model: nnx.Module
    epsilon: Mapping[str, float]  # accountant -> eps (inf: no guarantee)
    history: Sequence[EpochRecord]
    config: RunConfig  # resolved: the calibrated sigma
    summary: RunSummary | None = None  # None while a run directory is unfinished


@dataclasses.dataclass(frozen=True)
class Setup:
    """A `Loop` plus its initial mutable state, before any step ran, and its resolved config."""

    loop: Loop
    params: Any
    opt_state: Any
    noise_key: jax.Array
    config: RunConfig
    num_train: int


def build_loop(
    model: nnx.Module,
    train_x: jax.Array,
    train_y: jax.Array,
    *,
    config: RunConfig,
    loss_fn: cg.LossFn | None,
    optimizer: optax.GradientTransformation,
    noise_key: jax.Array,
    metric_hooks: Sequence[MetricFn] = (),
    select: Callable[[np.ndarray], np.ndarray] | None = None,
    lr_hint: str = "",
    checkpoint_dir: str | None = None,
) -> tuple[Loop, Any, Any]:
    """The `Loop` of a resolved config, its initial params and optimizer state.

    `ema_decay` chains `toolkit.training._averaging.track_ema` after the privatized
    optimizer: an average of the iterates for the metric hooks, which never changes the
    update. `select` (the audit) keeps a subset of each sampled batch.
    """
    cfg = config
    graphdef, params, state = cg.split_model(model)
    n = len(train_y)
    augment = Augmult(cfg.augmult) if cfg.augmult else None
    mechanism = dpsgd.Mechanism.from_config(cfg)
    clip = mechanism.clipped_grad(
        graphdef, loss_fn=loss_fn, implementation=cfg.per_example, augment=augment
    )
    # Checked at the micro-batch shape training runs (before rounding to the devices).
    physical = physical_batch_size(cfg.batch_size, max_physical=cfg.max_physical_batch)
    clip = clip.checked(params, state, train_x, train_y, rows=min(physical, n))
    # All local devices (over several processes: all devices) share the per-example work.
    devices = DataParallel.of_run(clip.implementation)
    tx = mechanism.privatized(optimizer, expected_batch_size=float(cfg.batch_size), key=noise_key)
    if cfg.ema_decay is not None:
        tx = optax.chain(tx, averaging.track_ema(cfg.ema_decay))
    stream = ids = None
    if randomness.has_keys(state) or augment is not None:  # each example's own key
        stream = randomness.example_stream(noise_key)
        ids = jnp.asarray(randomness.example_ids(train_x, train_y))
    train_x, train_y, stream, ids = devices.replicate((train_x, train_y, stream, ids))
    loop = Loop(
        graphdef=graphdef, state=state, example_stream=stream, example_ids=ids, clip=clip,
        accumulate=dpsgd.make_accumulate_fn(clip), update=dpsgd.make_update(tx),
        sampler=make_sampler(cfg.sampling, num_examples=n, batch_size=cfg.batch_size,
                             seed=cfg.seed),
        train_x=train_x, train_y=train_y, physical=devices.round_up(physical), devices=devices,
        steps_per_epoch=steps_per_epoch(n, cfg.batch_size),  # what `privacy` counts, N // B
        epochs=cfg.epochs, sampling=cfg.sampling, accountant=cfg.accountant,
        privacy=privacy_params(cfg, num_examples=n), metrics=tuple(metric_hooks), select=select,
        lr_hint=lr_hint, checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    return loop, params, tx.init(params)


def init_model(cfg: RunConfig, data, objects: Objects = Objects()) -> nnx.Module:
    """The model a run starts from: the same initialisation as its first step saw."""
    init_key, _ = run_keys(cfg, objects)
    return build_model(cfg, data, objects, init_key)


def privacy_params(cfg: RunConfig, *, num_examples: int) -> PrivacyParams | None:
    """The accounted mechanism of a resolved config; None for a non-private run."""
    if not cfg.private:
        return None
    return PrivacyParams(
        num_examples=num_examples, batch_size=cfg.batch_size, epochs=cfg.epochs,
        noise_multiplier=cfg.noise_multiplier, delta=cfg.delta, accountant=cfg.accountant,
        sampling=cfg.sampling,
    )  # fmt: skip


def setup(
    cfg: RunConfig,
    data,
    objects: Objects = Objects(),
    *,
    out: Path | None = None,
    metrics: Sequence[MetricFn] = (),
    select: Callable[[np.ndarray], np.ndarray] | None = None,
    evaluate: bool = True,
) -> Setup:
    """Build everything to train a resolved `cfg` (`toolkit.runs.resolve`) on `data`.

    `evaluate`: evaluate the held-out split after each epoch (the validation split when
    there is one, so tuning never sees test). `metrics`: more hooks, after those.
    """
    n = len(data.train_labels)
    if cfg.noise_multiplier is None:  # a target eps not yet calibrated
        raise ToolkitError("setup takes a resolved config (toolkit.runs.resolve).")
    init_key, noise_key = run_keys(cfg, objects)
    model = build_model(cfg, data, objects, init_key)
    loss_fn = loss_of(cfg, objects)
    optimizer = optimizer_of(cfg, objects, steps_per_epoch=steps_per_epoch(n, cfg.batch_size))
    hooks = [*(_held_out_hooks(cfg, data, model, loss_fn) if evaluate else ()), *metrics]
    lr = f"lr={cfg.lr}" if cfg.lr is not None else "the learning rate"
    loop, params, opt_state = build_loop(
        model, jnp.asarray(model_inputs(data, data.train_images)),
        jnp.asarray(data.train_labels), config=cfg, loss_fn=loss_fn, optimizer=optimizer,
        noise_key=noise_key, metric_hooks=hooks, select=select,
        lr_hint=f" ({lr} may be too large)", checkpoint_dir=None if out is None else str(out),
    )  # fmt: skip
    return Setup(loop, params, opt_state, noise_key, cfg, n)


def _held_out_hooks(cfg: RunConfig, data, model: nnx.Module, loss_fn) -> list[MetricFn]:
    prefix, (x, y) = (
        ("val", data.validation)
        if data.validation is not None
        else ("test", (data.test_images, data.test_labels))
    )
    if len(y) == 0:  # arrays or a file without a held-out split: nothing to evaluate
        return []
    held_out = (model_inputs(data, x), y)
    kw = dict(loss_fn=loss_fn, classification=cfg.classification, prefix=prefix)
    hooks = [metrics_lib.evaluation(held_out, num_classes=data.num_classes or None, **kw)]
    if cfg.ema_decay is not None:
        hooks.append(metrics_lib.evaluation(held_out, averaged=True, **kw))
    if hasattr(model, "first_activation"):
        hooks.append(metrics_lib.first_activation_norm(held_out[0]))
    if cfg.eval_every == 1:
        return hooks
    return [metrics_lib.every(h, cfg.eval_every, last=cfg.epochs) for h in hooks]


def _epoch_only(key: str, metrics: Mapping[str, Any]) -> bool:
    """Metrics kept in epochs.jsonl only: per-class lists, Figure 5's activation norm, and
    a held-out loss where its accuracy is reported (the summary keeps the accuracy)."""
    if key in _EPOCH_ONLY:
        return True
    return key.endswith("_loss") and key.removesuffix("_loss") + "_accuracy" in metrics


def summarize(history: Sequence[EpochRecord], cfg: RunConfig, *, num_train: int) -> RunSummary:
    """The run summary from the epoch records."""
    last = history[-1]
    privacy = privacy_params(cfg, num_examples=num_train)
    compiled = [r for r in history if r.compile_time_s is not None]
    return RunSummary(
        dataset=cfg.dataset,
        activation=cfg.label,
        epochs=cfg.epochs,
        num_train=num_train,
        private=privacy is not None,
        noise_multiplier=privacy.noise_multiplier if privacy is not None else 0.0,
        epsilon=last.epsilon,
        delta=privacy.delta if privacy is not None else None,
        accountant=cfg.accountant,
        sampling=cfg.sampling,
        privacy=privacy.label if privacy is not None else NON_PRIVATE_LABEL,
        train_time_s=sum(r.epoch_time_s + (r.compile_time_s or 0.0) for r in history),
        per_example_grads=last.per_example_grads,
        metrics={k: v for k, v in last.metrics.items() if not _epoch_only(k, last.metrics)},
        compile_time_s=sum(r.compile_time_s for r in compiled) if compiled else None,
    )


def train(
    cfg: RunConfig,
    *,
    out: Path | None = None,
    progress: bool | Display = False,
    tensorboard: Path | None = None,
    objects: Objects = Objects(),
    metrics: Sequence[MetricFn] = (),
    distributed: Mapping[str, Any] | None = None,
) -> FitResult:
    """Run `cfg` from scratch; all validation (settings, data, --out) before anything is written.

    `out` is held by this process until the run ends (`toolkit.runs.rundir.claim`): a
    second run started on it fails at once, and a run that fails before its config.json
    is written leaves nothing there. `tensorboard`: also write each epoch's scalars there
    (`toolkit.training._tracking`).

    `distributed`: `{"coordinator": "HOST:PORT", "num_processes": N, "process_id": I}`
    trains this one run with N processes, each calling `train` with the same `cfg`
    (`toolkit.training._distributed`; JAX must not have computed anything yet in this
    process). So does a process that called `jax.distributed.initialize` itself. Only
    process 0 writes `out` and `tensorboard`, and shows progress; every process returns
    the same result.
    """
    if distributed is not None:
        distributed = multihost.check(distributed)
        validate_config(cfg)  # in every process, before any joins: none is left waiting
        if distributed["process_id"] != 0:
            out, tensorboard, progress = None, None, False
    elif not multihost.writes_records():  # one of several processes, not process 0
        out, tensorboard, progress = None, None, False
    with contextlib.nullcontext() if out is None else rundir.claim(out, new=True):
        if distributed is not None:  # process 0 joins once it holds --out
            multihost.initialize(**distributed)
        return _train(cfg, out, progress, tensorboard, objects, metrics)


def _train(cfg, out, progress, tensorboard, objects, metrics) -> FitResult:
    validate_config(cfg)  # the settings first: loading data could fail on a bad one less clearly
    objects.check(cfg, where="the run")
    sink = TensorBoardSink(tensorboard) if tensorboard is not None else None  # checks the extra
    data = load_data(cfg, objects)
    requested = cfg.to_dict()
    cfg = resolve_config(cfg, num_examples=len(data.train_labels))  # sigma from the target eps
    s = setup(cfg, data, objects, out=out, metrics=metrics)
    if out is not None:
        privacy = privacy_params(s.config, num_examples=s.num_train)
        extra = {
            "requested": requested,
            "num_train": s.num_train,
            "provenance": {**rundir.provenance(), "compilation_cache": _compilation_cache()},
            "privacy": privacy.label if privacy else NON_PRIVATE_LABEL,
        }
        if multihost.process_count() > 1:  # one run, trained by several processes
            extra["processes"] = multihost.process_count()
        rundir.write_config(out, s.config, extra)
    return _run(s, out, start_epoch=0, history=[], progress=progress, sink=sink)


def _compilation_cache() -> dict[str, Any] | None:
    """JAX's persistent compilation cache in this process (`toolkit train` turns it on,
    `toolkit.cli._launch`), or None: where compiled steps were kept or loaded from."""
    folder = jax.config.jax_compilation_cache_dir
    if not (folder and jax.config.jax_enable_compilation_cache):
        return None
    return {
        "dir": str(folder),
        "min_compile_time_s": jax.config.jax_persistent_cache_min_compile_time_secs,
        "max_size_bytes": jax.config.jax_compilation_cache_max_size,
    }


def resume(
    out: str | Path,
    *,
    progress: bool | Display = False,
    tensorboard: Path | None = None,
    model: nnx.Module | Callable[..., nnx.Module] | None = None,
    train_data: tuple[Any, Any] | None = None,
    eval_data: tuple[Any, Any] | None = None,
    loss_fn: cg.LossFn | None = None,
    optimizer: optax.GradientTransformation | None = None,
    metrics: Sequence[MetricFn] = (),
) -> FitResult:
    """Continue the run in `out` from its last checkpoint to its configured epochs.

    A run whose model, data, loss or optimizer was given in Python (recorded as
    `python:<name>`) needs that object again; one recorded by name or import path must
    not be given. `metrics`: the run's own hooks, if it had any.

    The run's finished records are never lost: epochs.jsonl and summary.json are rewritten
    only from a checkpoint that holds them (`rundir.check_records_kept`), and the directory
    is held by this process while it runs (`rundir.claim`).
    """
    if multihost.process_count() > 1:
        raise ToolkitError(
            f"resume({str(out)!r}) runs in one process; this one is one of "
            f"{multihost.process_count()} (jax.distributed)."
        )
    given = (model, train_data, eval_data, loss_fn, optimizer)
    out = Path(out)
    rundir.read_config(out)  # a run directory at all, before it is claimed
    with rundir.claim(out, new=False):
        return _resume(out, progress, tensorboard, Objects(*given), metrics)


def _resume(out: Path, progress, tensorboard, objects: Objects, metrics) -> FitResult:
    record = rundir.read_config(out)
    where = f"--resume={out}"
    cfg = config_from_record(record, where=str(out / rundir.CONFIG))
    if record.get("kind", "train") == "fit":
        raise ToolkitError(
            f"{where} was written by toolkit.fit before runs had one format; it cannot "
            "resume (toolkit.load_run reads it)."
        )
    if rundir.config_hash(cfg) != record.get("config_hash"):  # before the config is used
        raise ToolkitError(f"{out / rundir.CONFIG} was edited (hash mismatch); it cannot resume.")
    fmt = rundir.checkpoint_format(out)
    if fmt is not None and fmt != rundir.CHECKPOINT_FORMAT:
        raise ToolkitError(
            f"{out / rundir.CHECKPOINT} has checkpoint format {fmt} (format 1: written before "
            f"the library API); this toolkit resumes format {rundir.CHECKPOINT_FORMAT} only. "
            "toolkit.load_run still reads its model."
        )
    saved = None
    if (out / rundir.CHECKPOINT).exists():  # a damaged checkpoint: said before any set-up
        saved, _ = rundir.read_checkpoint(out, cfg_hash=record["config_hash"])
    rundir.check_records_kept(
        out, checkpoint_epoch=None if saved is None else saved["epoch"], epochs=cfg.epochs
    )
    objects.check(cfg, where=where)
    data = load_data(cfg, objects)
    recorded_n = record.get("num_train")
    if recorded_n is not None and recorded_n != len(data.train_labels):
        raise ToolkitError(
            f"{where} trained on {recorded_n} examples; the data given has "
            f"{len(data.train_labels)}."
        )
    s = setup(cfg, data, objects, out=out, metrics=metrics)
    if (out / rundir.CHECKPOINT).exists():
        params, opt_state, _, key, meta = rundir.load_checkpoint(
            out, params=s.params, opt_state=s.opt_state, state=s.loop.state,
            cfg_hash=record["config_hash"],
        )  # fmt: skip
        s = dataclasses.replace(s, params=params, opt_state=opt_state)
        start, history = meta["epoch"], meta["history"]
        _check_resumable(cfg, objects, key=key, history=history, where=where)
    else:  # killed before the first epoch ended
        start, history = 0, []
    sink = TensorBoardSink(tensorboard) if tensorboard is not None else None
    rundir.remove_stale_temporaries(out)  # left by a kill during an atomic write
    rundir.write_epochs(out, history)
    return _run(s, out, start_epoch=start, history=history, progress=progress, sink=sink)


def _check_resumable(cfg: RunConfig, objects: Objects, *, key, history, where: str) -> None:
    """The objects given again continue the run as it was made, or a one-line error.

    The model is of the kind the run was made from (`check_model_kind`): another would
    change every example's dropout and augmult keys from here on. Arrays given with
    `eval_data` were evaluated each epoch: without them (or with them, where they were
    not) the records would change their metrics halfway.
    """
    check_model_kind(cfg, objects, saved_key=key, where=where)
    if cfg.dataset != ARRAYS or cfg.validation or not history:
        return
    evaluated = "test_loss" in history[-1].metrics
    if evaluated != (objects.eval_data is not None):
        raise ToolkitError(
            f"{where}: the run was {'' if evaluated else 'not '}evaluated on eval_data each "
            f"epoch; {'pass the same eval_data= again' if evaluated else 'do not pass eval_data='}."
        )


def _run(s: Setup, out: Path | None, *, start_epoch: int, history, progress,
         sink: TensorBoardSink | None = None) -> FitResult:  # fmt: skip
    cfg = s.config
    on_epoch_end = None
    if out is not None:
        on_epoch_end = rundir.epoch_writer(
            out, key=s.noise_key, state=s.loop.state, cfg_hash=rundir.config_hash(cfg),
            steps_per_epoch=s.loop.steps_per_epoch, keep_every=cfg.keep_checkpoints,
        )  # fmt: skip
    if sink is not None:  # after the run's own records: they are the source of truth
        on_epoch_end = _also_track(on_epoch_end, sink)
    display = progress if not isinstance(progress, bool) else progress_display(progress)
    params = s.params
    try:
        if start_epoch < cfg.epochs:
            params, _, history = s.loop.run(
                s.params, s.opt_state, start_epoch=start_epoch, history=history,
                on_epoch_end=on_epoch_end, progress=display,
            )  # fmt: skip
    finally:
        if sink is not None:
            sink.close()
    summary = summarize(history, cfg, num_train=s.num_train)
    if out is not None:
        rundir.write_summary(out, summary)
    model = cg.merge(s.loop.graphdef, params, s.loop.state)
    return FitResult(model, final_epsilon(summary), history, cfg, summary)


def _also_track(on_epoch_end, sink: TensorBoardSink):
    def both(params, opt_state, history) -> None:
        if on_epoch_end is not None:
            on_epoch_end(params, opt_state, history)
        sink.write(history[-1])

    return both


def fit(
    model: nnx.Module | Callable[..., nnx.Module] | str,
    train_data: tuple[Any, Any] | str,
    *,
    optimizer: OptimizerSpec | optax.GradientTransformation,
    batch_size: int,
    epochs: int,
    clip_norm: float,
    loss_fn: cg.LossFn | str | None = None,
    clipping: str = "flat",
    gamma: float = 0.01,
    layer_split: str = "equal",
    target_quantile: float = 0.5,
    quantile_lr: float = 0.2,
    count_noise: float | None = None,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    accountant: str = "rdp-classic",
    sampling: str = "poisson",
    seed: int = 0,
    eval_data: tuple[Any, Any] | None = None,
    classification: bool = True,
    metrics: Sequence[MetricFn] = (),
    out: str | Path | None = None,
    per_example: str = "auto",
    max_physical_batch: int = 512,
    progress: bool | Display = False,
    ema_decay: float | None = None,
    augment: Augmult | int | None = None,
    validation: int = 0,
    keep_checkpoints: int = 0,
    eval_every: int = 1,
    tensorboard: str | Path | None = None,
    distributed: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train `model` with DP-SGD on `train_data`; returns the trained model and its eps.

    Args:
        model: An NNX module (trained from its current values; recorded as
            `python:<class>`), a factory `f(rngs=nnx.Rngs(seed)) -> module` (recorded by
            import path when it has one, so `toolkit train --resume` and `toolkit bias`
            rebuild it), or a name: "package.module:factory". Its `nnx.Param`s are
            trained; other state (dropout's PRNG stream) is passed through. A layer that
            mixes the examples of a batch (BatchNorm) is refused.
        train_data: `(inputs, labels)` arrays with the same leading size N, or a data set
            by name ("fashion-mnist", `toolkit.data.DATASETS`) or file (.npz, .csv), whose
            test split is then evaluated after each epoch.
        optimizer: `toolkit.optimizer("sgd", lr=..., momentum=..., schedule=...)`, recorded
            in full; or any optax transformation (recorded by name only: pass it again to
            resume). It receives the privatized mean gradient.
        batch_size: Expected batch size B; Poisson sampling probability q = B / N.
        epochs: Epochs of N // B steps each.
        clip_norm: Per-example clipping norm C (flat). Automatic clipping has none (it
            normalises, sensitivity 1): there C only sets the threshold of the
            `fraction_clipped` diagnostic, and neither the update nor the noise depends on it.
        loss_fn: `loss_fn(outputs, labels) -> (batch,)` per-example losses, or a name in
            `toolkit.grads.LOSSES`; default softmax cross-entropy with integer labels.
        clipping: "flat" (sensitivity C), "automatic" (g / (||g|| + gamma), sensitivity 1),
            "per-layer" (each layer's part clipped to C_l, sum_l C_l^2 = C^2: sensitivity C)
            or "quantile" (flat at C_t, which starts at `clip_norm` and follows the
            `target_quantile` of the norms through a noisy count: sensitivity C_t of the
            gradient and 1/2 of the count, one Gaussian mechanism of multiplier sigma;
            `toolkit.grads.clipping`, `toolkit.privacy._quantile`).
        gamma: Automatic clipping's stabiliser.
        layer_split: Per-layer C_l: "equal" (C / sqrt(L)) or "size" (C sqrt(d_l / d)),
            from the model's shapes only.
        target_quantile: Quantile rule: the share of examples to leave unclipped.
        quantile_lr: Quantile rule: eta of C_t+1 = C_t exp(-eta (unclipped share - target)).
        count_noise: Quantile rule: the count's noise std sigma_b (default B / 20); the
            gradient gets sigma_g = (sigma^-2 - (2 sigma_b)^-2)^-1/2, so the step's
            accounted multiplier stays sigma.
        noise_multiplier: sigma; give exactly one of it and `target_epsilon`.
        target_epsilon: Calibrate sigma so that the `accountant` eps is at most this.
        delta: delta of the guarantee.
        accountant: "rdp-classic", "rdp" or "pld": calibrates sigma and names the headline.
        sampling: "poisson" (what the accountants assume) or "shuffle" (labelled so).
        seed: Seeds batch sampling and noise, and the model's initialisation when `model`
            is a factory (the seed's key is split in two); a model instance is initialised
            already. Dropout masks and augmult views come from each example's own key.
        eval_data: `(inputs, labels)` evaluated after each epoch (loss, and accuracy with
            `classification`), for `train_data` given as arrays.
        classification: Report accuracy: by argmax for (B, k) outputs, by sign for one logit.
        metrics: More per-epoch hooks `f(EpochContext) -> dict` (`toolkit.training.metrics`).
        out: Run directory to create (must be absent or empty).
        per_example: "auto", "bookkeeping" or "vmap" (speed only, `toolkit.grads`).
        max_physical_batch: Micro-batch cap (memory and speed only).
        progress: True for a progress bar (one line per epoch without a terminal).
        ema_decay: Also keep an exponential moving average of the iterates (post-processing,
            no privacy cost); the held-out data is then evaluated on it too, as `ema_*`.
            The returned model is the last iterate.
        augment: Augmentation multiplicity for image inputs (N, H, W, C): K, or
            `Augmult(K)`, averages each example's gradient over K random shift/flip views
            before clipping (sensitivity unchanged; vmap path).
        validation: Hold out the last V training examples and evaluate on them.
        keep_checkpoints: Also keep the checkpoint of every K-th epoch (`toolkit bias`).
        eval_every: Evaluate `eval_data` (or the named set's test or validation split)
            after every K-th epoch and the last one only (the other epochs' records hold
            no held-out metrics).
        tensorboard: Also write each epoch's scalars there as TensorBoard events.
        distributed: `{"coordinator": "HOST:PORT", "num_processes": N, "process_id": I}`:
            train this run with N processes, each calling `fit` with the same arguments
            (`train`); give `model` as a factory or name, since JAX must not have computed
            anything before. Only process 0 writes `out`.

    Returns:
        A `FitResult`: `.model`, `.epsilon` (all three accountants), `.history`, `.config`.
    """
    for name, path in (("out", out), ("tensorboard", tensorboard)):
        if path is not None and not str(path).strip():
            raise ToolkitError(f"{name}={str(path)!r} is an empty path; give a directory.")
    objects, fields = _objects_and_names(model, train_data, eval_data, loss_fn, optimizer)
    cfg = RunConfig(
        **fields, activation=None, epochs=epochs, batch_size=batch_size,
        max_physical_batch=max_physical_batch, per_example=per_example,
        clipping=clipping, clip_norm=clip_norm, gamma=gamma,
        layer_split=layer_split, target_quantile=target_quantile,
        quantile_lr=quantile_lr, count_noise=count_noise,
        noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
        delta=delta, accountant=accountant, sampling=sampling, seed=seed,
        validation=validation, ema_decay=ema_decay, augmult=_augmult(augment),
        keep_checkpoints=keep_checkpoints, eval_every=eval_every,
        classification=classification,
    )  # fmt: skip
    if cfg.model == "paper-cnn":
        raise ToolkitError("fit trains your own model; the paper CNN runs with toolkit train.")
    return train(
        cfg, out=None if out is None else Path(out), progress=progress,
        tensorboard=None if tensorboard is None else Path(tensorboard), objects=objects,
        metrics=metrics, distributed=distributed,
    )  # fmt: skip


def _objects_and_names(model, train_data, eval_data, loss_fn, optimizer):
    """The `Objects` to pass and the config fields naming model, data, loss, optimizer."""
    fields: dict[str, Any] = {}
    given: dict[str, Any] = {"eval_data": eval_data}
    if isinstance(model, str):
        fields["model"] = model
    elif isinstance(model, nnx.Module):
        fields["model"], given["model"] = specs.PYTHON + type(model).__qualname__, model
    elif callable(model):
        fields["model"] = specs.spec_of(model)
        given["model"] = model if fields["model"].startswith(specs.PYTHON) else None
    else:
        raise ToolkitError(
            f"model must be a flax.nnx.Module, a factory or a name, got {type(model).__name__}."
        )
    if isinstance(train_data, str | Path):
        fields["dataset"] = str(train_data)
    else:
        fields["dataset"], given["train_data"] = ARRAYS, train_data
    if loss_fn is None or isinstance(loss_fn, str):
        fields["loss"] = loss_fn or "softmax_cross_entropy"
    else:
        named = [name for name, fn in LOSSES.items() if fn is loss_fn]
        fields["loss"] = named[0] if named else specs.spec_of(loss_fn)
        given["loss_fn"] = loss_fn if fields["loss"].startswith(specs.PYTHON) else None
    if isinstance(optimizer, OptimizerSpec):
        fields.update(optimizer.fields())
    elif isinstance(optimizer, optax.GradientTransformation):
        fields.update(optimizer=specs.PYTHON + _optax_name(optimizer), lr=None)
        given["optimizer"] = optimizer
    else:
        raise ToolkitError(
            f"optimizer={optimizer!r} must be toolkit.optimizer(...) or an optax "
            "GradientTransformation."
        )
    return Objects(**given), fields


def _augmult(augment: Augmult | int | None) -> int:
    if augment is None:
        return 0
    if isinstance(augment, Augmult):
        if (augment.max_shift, augment.flip) != (Augmult(1).max_shift, Augmult(1).flip):
            raise ToolkitError(
                f"augment={augment!r}: a run records augmult by K, with the default shift "
                f"and flip; use Augmult({augment.k})."
            )
        return augment.k
    return augment


def _optax_name(optimizer: optax.GradientTransformation) -> str:
    init = getattr(optimizer.init, "__qualname__", "")
    return init.split(".<locals>")[0] or type(optimizer).__name__


def load_run(
    path: str | Path,
    *,
    model: nnx.Module | Callable[..., nnx.Module] | None = None,
    epoch: int | None = None,
) -> FitResult:
    """A run directory back as a `FitResult`, with the trained model rebuilt.

    Args:
        path: A run directory written by `toolkit train --out` or `fit(out=...)`.
        model: The model's structure, needed when the run's model was given in Python
            (recorded as `python:<class>`): an instance of the same class and shape (its
            values are replaced), a factory `f(rngs=...)`, or a function of no arguments
            returning one. A run whose model is named is rebuilt from its config.
        epoch: Load the checkpoint kept after this epoch (`keep_checkpoints`) instead of
            the last one; the history is then the one it holds (epochs 1..epoch).

    Returns:
        The model with the parameters of the last finished epoch (the checkpoint), the
        eps under every accountant, the history, the config and the summary (None while
        unfinished).
    """
    path = Path(path)
    record = rundir.read_config(path)
    cfg = config_from_record(record, where=str(path / rundir.CONFIG))
    skeleton = _skeleton(cfg, model, where=str(path))
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


def _skeleton(cfg: RunConfig, model, *, where: str) -> nnx.Module:
    """A model of the run's structure (its values are replaced by the checkpoint's)."""
    if isinstance(model, nnx.Module):
        return model
    if model is not None:  # a factory, called as in training, or a function of no arguments
        return model(rngs=nnx.Rngs(0)) if is_factory(model) else model()
    if cfg.model.startswith(specs.PYTHON):
        raise ToolkitError(
            f"{where} is a run of a model given in Python ({cfg.model}); pass model= an "
            "instance of it (or a function returning one) to rebuild it."
        )
    if not cfg.paper_model:
        return build_model(cfg, None, Objects(), jax.random.key(0))
    if cfg.dataset in DATASETS:
        shape = _SHAPES[cfg.dataset]
    else:
        shape = load_data(cfg).train_images.shape[1:]
    return build_paper_cnn(
        shape, cfg.activation, seed=0, weight_standardization=cfg.weight_standardization
    )


def final_epsilon(last: RunSummary | Mapping[str, float | None]) -> dict[str, float]:
    """{accountant: eps} of a summary (or an epsilon mapping); None (stored inf) -> inf."""
    eps = last.epsilon if isinstance(last, RunSummary) else last
    return {name: math.inf if eps.get(name) is None else eps[name] for name in ACCOUNTANTS}
