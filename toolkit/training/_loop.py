"""The one DP-SGD training loop: `toolkit.fit`, `toolkit train`, the audit and the benchmarks.

Per step t: the sampler draws the batch of step t (a function of (seed, t)), `select`
may drop indices (the audit's excluded canaries), the batch is cut into fixed-shape
micro-batches whose clipped sums are accumulated by a Python loop over the jitted
`accumulate`, and the privatized optimizer (noise on the sum, / B, step) is applied
once. Each example's randomness is keyed by (secret stream, t, the example's identity)
(`toolkit.privacy.randomness`), the noise by (noise key, t), so a resumed run is bit for bit an
uninterrupted one, and no example's randomness depends on its row or micro-batch. Over
several processes (`toolkit.training._distributed`) every process runs this loop on the
same values, its micro-batches sharded over the devices of all (`toolkit.training._parallel`).

Per epoch: an `EpochRecord` with the training statistics and eps, plus what each
metric hook returns (`toolkit.training.metrics`; a hook is any `f(EpochContext) -> dict`), then
`on_epoch_end(params, opt_state, history)` (the run directory's checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit import grads as cg
from toolkit.base import ToolkitError
from toolkit.privacy import (
    NON_PRIVATE_LABEL,
    ClippedStep,
    PrivacyParams,
    centred_count,
    clip_norm_of,
    pad_chunks,
)
from toolkit.runs import EpochRecord, GradNormStats
from toolkit.training import _averaging as averaging
from toolkit.training._parallel import DataParallel
from toolkit.training._progress import Display


class TrainingDiverged(ToolkitError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class EpochContext:
    """What a metric hook sees at the end of an epoch."""

    epoch: int  # 1-based
    step: int
    graphdef: nnx.GraphDef
    params: Any
    state: Any
    averaged: Any = None  # the EMA of the iterates (`toolkit.training._averaging`), if tracked

    def model(self, *, averaged: bool = False) -> nnx.Module:
        """The trained model (or its average) in evaluation mode (dropout off), a fresh copy."""
        params = self.averaged if averaged else self.params
        if params is None:
            raise ValueError("this run tracks no parameter average (ema_decay is unset).")
        model = cg.merge(self.graphdef, params, self.state)
        model.eval()
        return model


MetricFn = Callable[[EpochContext], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Loop:
    """Everything fixed for a run. `run` takes the mutable part (params, optimizer state).

    `privacy` is None for a non-private run; `sampler.indices(t)` gives step t's batch.
    """

    graphdef: nnx.GraphDef
    state: Any  # the model's non-Param state, passed through unchanged
    # Secret: every example's key derives from it (`toolkit.privacy.randomness`); None for a model
    # that draws no randomness.
    example_stream: jax.Array | None
    example_ids: jax.Array | None  # (N, 2) uint32: each training example's identity
    clip: cg.ClippedGradFn  # `.checked` already: implementation is bookkeeping or vmap
    accumulate: Callable
    update: Callable
    sampler: Any
    train_x: jax.Array
    train_y: jax.Array
    physical: int  # micro-batch rows
    devices: DataParallel
    steps_per_epoch: int
    epochs: int
    sampling: str
    accountant: str
    privacy: PrivacyParams | None
    metrics: Sequence[MetricFn] = ()
    select: Callable[[np.ndarray], np.ndarray] | None = None
    lr_hint: str = ""  # appended to the divergence message
    checkpoint_dir: str | None = None  # where each finished epoch's checkpoint is written

    def _kept(self, finished: int) -> str:
        """What a diverged run leaves in its directory, after `finished` epochs."""
        if self.checkpoint_dir is None:
            return ""
        if finished == 0:
            return f"; no epoch finished, so {self.checkpoint_dir} holds no checkpoint"
        return f"; the checkpoint of epoch {finished} is kept in {self.checkpoint_dir}"

    def epsilons(self) -> list[dict[str, float | None]]:
        from toolkit.privacy import accounting

        if self.privacy is None:
            return [dict.fromkeys(accounting.ACCOUNTANTS) for _ in range(self.epochs)]
        return self.privacy.epsilon_by_epoch(self.epochs)

    def step(self, params, opt_state, step: int, zeros=None):
        """One logical DP-SGD step: `(params, opt_state, norms, masks, losses, batch_size,
        clip_norm)`, `clip_norm` the step's C_t under the quantile rule (else None).

        `zeros` (params-shaped zeros, placed like params) starts the accumulation.
        """
        idx = self.sampler.indices(step)
        if self.select is not None:
            idx = self.select(idx)
        acc = jax.tree.map(jnp.zeros_like, params) if zeros is None else zeros
        clip_norm = clip_norm_of(opt_state)  # C_t of the quantile rule, else None
        unclipped = jnp.zeros((), jnp.float32)
        norms, masks, losses = [], [], []
        for chunk_idx, chunk_mask in pad_chunks(idx, self.physical):
            batch = self.devices.shard_batch((chunk_idx, chunk_mask))
            acc, n, loss = self.accumulate(
                params, acc, self.train_x, self.train_y, *batch, self.state,
                self.example_stream, np.uint32(step), self.example_ids,
                **({} if clip_norm is None else {"clip_norm": clip_norm}),
            )  # fmt: skip
            if clip_norm is not None:
                unclipped = unclipped + _centred_count(n, batch[1], clip_norm)
            norms.append(n)
            masks.append(chunk_mask)
            losses.append(loss)
        summed = acc if clip_norm is None else ClippedStep(acc, unclipped)
        params, opt_state = self.update(params, opt_state, summed)
        return params, opt_state, norms, masks, losses, len(idx), clip_norm

    def run(
        self,
        params,
        opt_state,
        *,
        start_epoch: int = 0,
        history: Sequence[EpochRecord] = (),
        on_epoch_end: Callable[[Any, Any, list[EpochRecord]], None] | None = None,
        progress: Display | None = None,
    ) -> tuple[Any, Any, list[EpochRecord]]:
        """Epochs `start_epoch .. epochs-1`; returns (params, opt_state, history)."""
        history = list(history)
        eps_by_epoch = self.epsilons()
        spe = self.steps_per_epoch
        params, opt_state = self.devices.replicate((params, opt_state))
        zeros = jax.tree.map(jnp.zeros_like, params)
        to_host, local = self.devices.to_host, self.devices.local  # identities on one process
        label = self.privacy.label if self.privacy is not None else NON_PRIVATE_LABEL
        if progress is not None:
            progress.start(self.epochs * spe, start_epoch * spe)
        try:
            for epoch in range(start_epoch, self.epochs):
                t0 = time.perf_counter()
                # The first epoch this process runs compiles the step (XLA), on its first
                # step and on any later one that meets new input types: its steps are timed
                # one by one (synchronised) to take the compilation out of the epoch time.
                step_times: list[float] | None = [] if epoch == start_epoch else None
                norms, masks, losses, sizes, clip_norms = [], [], [], [], []
                for step in range(epoch * spe, (epoch + 1) * spe):
                    ts = time.perf_counter()
                    params, opt_state, n, m, loss, size, c = self.step(
                        params, opt_state, step, zeros
                    )
                    if step_times is not None:
                        jax.block_until_ready(params)
                        step_times.append(time.perf_counter() - ts)
                    norms += n
                    masks += m
                    losses += loss
                    sizes.append(size)
                    clip_norms += [self.clip.clip_norm if c is None else c] * len(m)
                    if progress is not None:
                        progress.step(f"epoch {epoch + 1}/{self.epochs}")
                sampled = np.concatenate(masks)
                all_norms = np.concatenate([to_host(v) for v in norms])[sampled]
                # Each example against the C its step clipped at (the quantile rule moves it).
                row_clip = np.repeat(np.asarray(clip_norms, np.float64), [len(m) for m in masks])
                clip_now = clip_norm_of(opt_state)
                all_losses = np.concatenate([to_host(v) for v in losses])[sampled]
                # Single examples with a non-finite loss or gradient are dropped by the
                # clipping rule and left out of the mean loss; the run has diverged only
                # when the parameters stop being finite or no example of the epoch is.
                finite_losses = all_losses[np.isfinite(all_losses)]
                # What follows sees this process's own copy (over several processes an
                # eager op on the global arrays would be a collective).
                own_params, own_opt_state = local((params, opt_state))
                finite = (finite_losses.size > 0 or all_losses.size == 0) and all(
                    bool(np.all(np.isfinite(x)))
                    for x in jax.device_get(jax.tree.leaves(own_params))
                )  # on the host: eager jnp ops would compile in epoch 1, once per leaf shape
                if not finite:
                    raise TrainingDiverged(
                        f"training diverged in epoch {epoch + 1}: the parameters or the train "
                        f"loss of every example are not finite (when a run stops depends on the "
                        f"private data: not covered by eps){self.lr_hint}{self._kept(epoch)}."
                    )
                ctx = EpochContext(
                    epoch + 1, (epoch + 1) * spe, self.graphdef, own_params, self.state,
                    averaging.averaged(own_opt_state),
                )  # fmt: skip
                metrics: dict[str, Any] = {}
                for hook in self.metrics:
                    metrics.update(hook(ctx))
                elapsed = time.perf_counter() - t0
                compile_s = None if step_times is None else compile_time(step_times)
                record = EpochRecord(
                    epoch=epoch + 1,
                    step=(epoch + 1) * spe,
                    train_loss=float(np.mean(finite_losses)) if finite_losses.size else math.nan,
                    nonfinite_loss_fraction=1.0 - finite_losses.size / max(all_losses.size, 1),
                    epsilon=eps_by_epoch[epoch],
                    accountant=self.accountant,
                    sampling=self.sampling,
                    privacy=label,
                    grad_norm=grad_norm_stats(all_norms, row_clip[sampled]),
                    per_example_grads=self.clip.implementation,
                    batch_size_mean=float(np.mean(sizes)),
                    epoch_time_s=elapsed - (compile_s or 0.0),
                    metrics=metrics,
                    compile_time_s=compile_s,
                    clip_norm=None if clip_now is None else float(clip_now),
                )
                history.append(record)
                if progress is not None:
                    progress.epoch(record)
                if on_epoch_end is not None:
                    on_epoch_end(own_params, own_opt_state, history)
        finally:
            if progress is not None:
                progress.close()
        params, opt_state = local((params, opt_state))
        return params, opt_state, history


_centred_count = jax.jit(centred_count)


def compile_time(step_times: Sequence[float]) -> float:
    """Seconds of compilation in an epoch's step times: the excess over the median step of
    each step that took more than twice the median (a step that compiled; with one step,
    all of it)."""
    if len(step_times) == 1:
        return float(step_times[0])
    median = float(np.median(step_times))
    return float(sum(t - median for t in step_times if t > 2 * median))


def grad_norm_stats(norms: np.ndarray, clip_norm: float | np.ndarray) -> GradNormStats:
    """Pre-clip norm statistics over the finite norms; non-finite gradients were dropped.

    `clip_norm`: C, or each example's C (the quantile rule's C_t of its step).
    """
    keep = np.isfinite(norms)
    finite = norms[keep]
    clip_norm = np.broadcast_to(np.asarray(clip_norm, np.float64), norms.shape)[keep]
    nonfinite = float(1.0 - finite.size / max(norms.size, 1))
    if finite.size == 0:
        return GradNormStats(math.nan, math.nan, math.nan, math.nan, nonfinite)
    return GradNormStats(
        mean=float(np.mean(finite)),
        median=float(np.median(finite)),
        max=float(np.max(finite)),
        fraction_clipped=float(np.mean(finite > clip_norm)),
        nonfinite_fraction=nonfinite,
    )
