"""`toolkit train`: a paper CNN on a paper data set, from a `TrainConfig`, into a run directory.

`train(cfg, out=...)` runs a configuration and writes its run directory; `resume(out)`
continues one. Both run `toolkit.training._loop` (through `toolkit.training._fit.build_loop`, as
`toolkit.fit` does) and end with the same numbers for the same config: batches and
noise keys are functions of (seed, step) and the checkpoint restores params and
optimizer state bit for bit. Both return a `toolkit.training._fit.FitResult`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from toolkit.base import ToolkitError
from toolkit.data._datasets import Dataset, load_dataset, to_float, with_validation
from toolkit.grads import Augmult, merge
from toolkit.nn import build_model
from toolkit.privacy import PrivacyParams
from toolkit.privacy import _sampling as sampling
from toolkit.runs import TrainConfig, resolve, rundir, validate
from toolkit.training import _dpsgd as dpsgd
from toolkit.training import metrics
from toolkit.training._fit import FitResult, build_loop, final_epsilon, summarize
from toolkit.training._loop import TrainingDiverged
from toolkit.training._progress import progress_display
from toolkit.training._tracking import TensorBoardSink

__all__ = ["TrainingDiverged", "load_data", "privacy_params", "resume", "train"]
# What summary.json keeps of the last epoch's metrics.
_SUMMARY_METRICS = (
    "test_accuracy", "val_accuracy", "ema_test_accuracy", "ema_val_accuracy",
    "per_class_accuracy_std",
)  # fmt: skip


def load_data(cfg: TrainConfig) -> Dataset:
    """The config's data: the validation split held out first, then `limit_train` applied."""
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    if cfg.validation:
        data = with_validation(data, cfg.validation)
    if cfg.limit_train is not None and cfg.limit_train < len(data.train_labels):
        data = dataclasses.replace(
            data,
            train_images=data.train_images[: cfg.limit_train],
            train_labels=data.train_labels[: cfg.limit_train],
        )
    return data


def privacy_params(cfg: TrainConfig, *, num_examples: int) -> PrivacyParams | None:
    """The accounted mechanism of a resolved config; None for a non-private run."""
    if not cfg.private:
        return None
    return PrivacyParams(
        num_examples=num_examples, batch_size=cfg.batch_size, epochs=cfg.epochs,
        noise_multiplier=cfg.noise_multiplier, delta=cfg.delta, accountant=cfg.accountant,
        sampling=cfg.sampling,
    )  # fmt: skip


def init_model(cfg: TrainConfig) -> tuple[nnx.Module, jax.Array]:
    """The paper CNN initialised from the seed, and the run's noise key."""
    init_key, noise_key = jax.random.split(jax.random.key(cfg.seed))
    seed = int(jax.random.randint(init_key, (), 0, 2**31 - 1))
    model = build_model(
        cfg.dataset, cfg.activation, seed=seed, weight_standardization=cfg.weight_standardization
    )
    return model, noise_key


def setup(cfg: TrainConfig, data: Dataset, *, out: Path | None = None, select=None,
          evaluate: bool = True):  # fmt: skip
    """A `toolkit.training._fit._Setup` for a resolved config on `data` (audit passes `select`)."""
    model, noise_key = init_model(cfg)
    n = len(data.train_labels)
    hooks = []
    if evaluate:  # on the validation split when there is one: tuning never sees test
        prefix, (x, y) = (
            ("val", data.validation)
            if data.validation is not None
            else ("test", (data.test_images, data.test_labels))
        )
        held_out = (to_float(x), y)
        hooks = [
            metrics.evaluation(held_out, num_classes=data.num_classes, prefix=prefix),
            metrics.first_activation_norm(held_out[0]),
        ]
        if cfg.ema_decay is not None:
            hooks.insert(1, metrics.evaluation(held_out, prefix=prefix, averaged=True))
    kept = f"; the checkpoint of the last finished epoch is kept in {out}" if out else ""
    steps_per_epoch = sampling.steps_per_epoch(n, cfg.batch_size)  # as the loop runs them
    optimizer = dpsgd.make_optimizer(
        cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch, total_steps=cfg.epochs * steps_per_epoch,
    )  # fmt: skip
    return build_loop(
        model, jnp.asarray(to_float(data.train_images)), jnp.asarray(data.train_labels),
        loss_fn=None, optimizer=optimizer,
        mechanism=dpsgd.Mechanism.from_config(cfg), privacy=privacy_params(cfg, num_examples=n),
        batch_size=cfg.batch_size, epochs=cfg.epochs, sampling=cfg.sampling,
        accountant=cfg.accountant, seed=cfg.seed, noise_key=noise_key,
        per_example=cfg.per_example, max_physical_batch=cfg.max_physical_batch,
        metric_hooks=hooks, select=select, lr_hint=f" (lr={cfg.lr} may be too large){kept}",
        ema_decay=cfg.ema_decay,
        augment=Augmult(cfg.augmult) if cfg.augmult else None,
    )  # fmt: skip


def _run(cfg: TrainConfig, data: Dataset, out: Path | None, s, *, start_epoch: int, history,
         progress: bool, sink: TensorBoardSink | None = None) -> FitResult:  # fmt: skip
    on_epoch_end = None
    if out is not None:
        on_epoch_end = rundir.epoch_writer(
            out, key=s.noise_key, state=s.loop.state, cfg_hash=rundir.config_hash(cfg),
            steps_per_epoch=s.loop.steps_per_epoch, keep_every=cfg.keep_checkpoints,
        )  # fmt: skip
    if sink is not None:  # after the run's own records: they are the source of truth
        on_epoch_end = _also_track(on_epoch_end, sink)
    params = s.params
    try:
        if start_epoch < cfg.epochs:
            params, _, history = s.loop.run(
                s.params, s.opt_state, start_epoch=start_epoch, history=history,
                on_epoch_end=on_epoch_end, progress=progress_display(progress),
            )  # fmt: skip
    finally:
        if sink is not None:
            sink.close()
    n = len(data.train_labels)
    privacy = privacy_params(cfg, num_examples=n)
    summary = summarize(
        history, num_train=n, epochs=cfg.epochs, privacy=privacy, accountant=cfg.accountant,
        sampling=cfg.sampling, dataset=cfg.dataset, activation=cfg.activation.label,
        metric_keys=_SUMMARY_METRICS,
    )  # fmt: skip
    if out is not None:
        rundir.write_summary(out, summary)
    model = merge(s.loop.graphdef, params, s.loop.state)
    return FitResult(model, final_epsilon(summary), history, cfg, summary)


def _also_track(on_epoch_end, sink: TensorBoardSink):
    def both(params, opt_state, history) -> None:
        if on_epoch_end is not None:
            on_epoch_end(params, opt_state, history)
        sink.write(history[-1])

    return both


def train(cfg: TrainConfig, *, out: Path | None = None, progress: bool = False,
          tensorboard: Path | None = None) -> FitResult:  # fmt: skip
    """Run `cfg` from scratch; all validation (settings, data, --out) before anything is written.

    `tensorboard`: also write each epoch's scalars there (`toolkit.training._tracking`).
    """
    if out is not None:
        rundir.prepare_new(out)
    validate(cfg)  # the settings first: loading the data could fail on a bad one less clearly
    sink = TensorBoardSink(tensorboard) if tensorboard is not None else None  # checks the extra
    data = load_data(cfg)
    requested = cfg.to_dict()
    cfg = resolve(cfg, num_examples=len(data.train_labels))
    s = setup(cfg, data, out=out)
    if out is not None:
        privacy = privacy_params(cfg, num_examples=len(data.train_labels))
        extra = {
            "requested": requested,
            "provenance": rundir.provenance(),
            "privacy": privacy.label if privacy else "non-private (no DP guarantee)",
        }
        rundir.write_config(out, cfg, extra)
    return _run(cfg, data, out, s, start_epoch=0, history=[], progress=progress, sink=sink)


def resume(out: Path, *, progress: bool = False, tensorboard: Path | None = None) -> FitResult:
    """Continue the run in `out` from its last checkpoint to the configured number of epochs."""
    record = rundir.read_config(out)
    try:
        cfg = TrainConfig.from_dict(record["config"])
        same = rundir.config_hash(cfg) == record.get("config_hash")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ToolkitError(f"{out / rundir.CONFIG} is not a valid run config ({e}).") from None
    if record.get("kind", "train") != "train":
        raise ToolkitError(
            f"--resume={out} is a {record.get('kind')} run, not a toolkit train run."
        )
    if not same:  # checked before the config is used: an edited file could hold anything
        raise ToolkitError(f"{out / rundir.CONFIG} was edited (hash mismatch); it cannot resume.")
    fmt = rundir.checkpoint_format(out)
    if fmt is not None and fmt != rundir.CHECKPOINT_FORMAT:
        raise ToolkitError(
            f"{out / rundir.CHECKPOINT} has checkpoint format {fmt} (format 1: written before "
            f"the library API); this toolkit resumes format {rundir.CHECKPOINT_FORMAT} only. "
            "toolkit.load_run still reads its model."
        )
    data = load_data(cfg)
    s = setup(cfg, data, out=out)
    if (out / rundir.CHECKPOINT).exists():
        params, opt_state, _, _, meta = rundir.load_checkpoint(
            out, params=s.params, opt_state=s.opt_state, state=s.loop.state,
            cfg_hash=record["config_hash"],
        )  # fmt: skip
        s = dataclasses.replace(s, params=params, opt_state=opt_state)
        start, history = meta["epoch"], meta["history"]
    else:  # killed before the first epoch ended
        start, history = 0, []
    sink = TensorBoardSink(tensorboard) if tensorboard is not None else None
    rundir.remove_stale_temporaries(out)  # left by a kill during an atomic write
    rundir.write_epochs(out, history)
    return _run(cfg, data, out, s, start_epoch=start, history=history, progress=progress,
                sink=sink)  # fmt: skip
