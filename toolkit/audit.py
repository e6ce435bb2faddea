"""Empirical privacy audit from one training run (Steinke, Nasr & Jagielski 2023).

The audit turns one DP-SGD run into a statistical test of its privacy claim:

1. `m` canaries (training images beyond the base set, each given a wrong label
   drawn at random) are each included in the training set independently with
   probability 1/2 (`S_i` in {0, 1}, a seeded draw).
2. The model is trained once with DP-SGD on the base set plus the included
   canaries (`train_with_canaries`).
3. Each canary gets a membership score, minus its loss under the final model
   (members were fitted to their wrong label, so their loss is lower).
4. The auditor guesses "member" for the `k+` highest scores and "non-member"
   for the `k-` lowest, abstains on the rest, and counts the correct guesses
   `v` out of `r = k+ + k-`.
5. If training is (eps, delta)-DP, then (SNJ 2023, Thm. 3.3; Thm. 3.1 for delta = 0)

       P[W >= v] <= f(v) + 2 m delta max_{i=1..v} (f(v - i) - f(v)) / i,
       f(u) = P[Binomial(r, e^eps / (1 + e^eps)) >= u],

   so eps is rejected at confidence `c` when that bound is `< 1 - c`
   (`p_value`). The audited eps is the largest rejected eps
   (`epsilon_lower_bound`); with a grid of `K` guess counts each is tested at
   level `(1 - c) / K` (Bonferroni) and the largest bound is reported
   (`audit_scores`).

Guarantee: for an (eps, delta)-DP training run, P[audited eps > eps] <= 1 - c,
over the canary draw and the training randomness. A correct implementation
can therefore show an audited eps above its accountant's eps in at most a
fraction 1 - c of audits; a larger audited eps is evidence of a bug in the
mechanism or the accounting. The converse does not hold: a small audited eps
proves nothing (the attack may just be weak; see docs/privacy.md).

Sampling rate: the accountant's `q = B / N` must not depend on which canaries
are in. Training therefore samples Poisson batches over all `N = base + m`
slots with `q = B / N` and drops the slots of excluded canaries, which is
DP-SGD on the actual data set with a fixed, public `q` (the add/remove-one
relation exactly).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import special, stats

from toolkit import accounting, dpsgd, rundir
from toolkit import train as train_lib
from toolkit.config import TrainConfig, resolve
from toolkit.data import Dataset, load_dataset, to_float
from toolkit.errors import ToolkitError
from toolkit.io import atomic_write_bytes, atomic_write_json
from toolkit.sampling import make_sampler, pad_chunks, physical_batch_size

_AUDIT_TAG = 3  # SeedSequence stream of the audit (samplers use 1 and 2)
_EPS_SEARCH_MAX = 64.0  # expit(64) = 1 - 1.6e-28: beyond it no finite data rejects anything
_BISECTION_STEPS = 50
AUDIT_FILE, CANARY_FILE = "audit.json", "canaries.npz"


# --- statistics -------------------------------------------------------------------------


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of `v` or more correct guesses out of `r` under (eps, delta)-DP (SNJ 2023, Thm. 3.3).

    Args:
        m: Number of canaries, each included with probability 1/2.
        r: Number of guesses made (abstentions excluded), `0 <= r <= m`.
        v: Number of correct guesses, `0 <= v <= r`.
        epsilon: eps of the null hypothesis, `>= 0`.
        delta: delta of the null hypothesis, with `2 m delta <= 1`.

    Returns:
        ``min(1, f(v) + 2 m delta max_{i=1..v} (f(v-i) - f(v)) / i)``, where
        ``f(u) = P[Binomial(r, e^eps/(1+e^eps)) >= u]``, in float64. The maximum runs to
        `v` only: for `i > v`, ``f(v-i) = f(0) = 1`` and the ratio only shrinks.
    """
    _check_counts(m, r, v)
    if not (epsilon >= 0 and delta >= 0 and 2 * m * delta <= 1):
        raise ToolkitError(
            f"Expected epsilon >= 0 and 0 <= 2*m*delta <= 1, got {epsilon}, {m}, {delta}."
        )
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))  # e^eps / (1 + e^eps): eps-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Bin >= v]
    if delta == 0:
        return min(tail, 1.0)
    # (f(v-i) - f(v)) = P[v-i <= Bin <= v-1] = cumulative pmf from v-1 downwards.
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float) -> float:
    """Largest eps rejected at `confidence`: ``p_value(eps) < 1 - confidence``; 0.0 if none.

    `p_value` is non-decreasing in eps when ``2 m delta <= 1`` (it is then a maximum of
    non-negative combinations of binomial upper tails, each non-decreasing in the success
    probability), so bisection on ``[0, 64]`` finds the crossing; the value returned
    always satisfies the rejection inequality itself (it is the lower end of the bracket).
    """
    _check_confidence(confidence)
    level = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < level

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2 * hi
        if hi > _EPS_SEARCH_MAX:
            return lo
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def guess_grid(m: int) -> list[tuple[int, int]]:
    """The (k+, k-) guess counts tried; fixed before the scores are seen (it depends on m only).

    Positive-only guesses on the top 1, 2, 5, 10, 20 and 50% of scores, and balanced
    guesses (half top, half bottom) on 10, 20, 50 and 100% of the canaries.
    """
    grid = [(max(1, round(f * m)), 0) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)]
    grid += [(max(1, round(f * m / 2)), max(1, round(f * m / 2))) for f in (0.1, 0.2, 0.5, 1.0)]
    grid = [(kp, min(kn, m - kp)) for kp, kn in grid if kp <= m]
    return sorted(set(grid))


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """The audited bound and the guess count that achieved it."""

    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    guesses: int  # r
    correct: int  # v
    k_pos: int
    k_neg: int
    tests: int  # K, Bonferroni: each test ran at level (1 - confidence) / K


def audit_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    grid: list[tuple[int, int]] | None = None,
) -> AuditResult:
    """eps lower bound from membership scores (higher = more likely a member).

    For each ``(k+, k-)`` in `grid` (default `guess_grid(m)`), guess the `k+` highest
    scores in and the `k-` lowest out, count the correct guesses and compute
    `epsilon_lower_bound` at confidence ``1 - (1 - confidence) / K``; return the largest.
    Ties and NaN scores are broken by canary index (NaN counts as the lowest score), so
    the guesses depend on the scores alone, never on `included`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.ndim != 1 or scores.shape != included.shape or scores.size < 1:
        raise ToolkitError(
            "Expected scores and included of one equal length >= 1, "
            f"got {scores.shape} and {included.shape}."
        )
    m = scores.size
    grid = guess_grid(m) if grid is None else grid
    _check_confidence(confidence)
    per_test = 1.0 - (1.0 - confidence) / len(grid)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")  # best first
    best = None
    for k_pos, k_neg in grid:
        if not (k_pos >= 0 and k_neg >= 0 and 1 <= k_pos + k_neg <= m):
            raise ToolkitError(
                f"guess counts (k+={k_pos}, k-={k_neg}) must satisfy 1 <= k+ + k- <= m={m}."
            )
        top, bottom = order[:k_pos], order[m - k_neg :]
        v = int(included[top].sum() + (~included[bottom]).sum())
        r = k_pos + k_neg
        eps = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, confidence=per_test)
        if best is None or eps > best.epsilon_lower_bound:
            best = AuditResult(eps, confidence, delta, m, r, v, k_pos, k_neg, len(grid))
    return best


def _check_counts(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m):
        raise ToolkitError(f"Expected 0 <= correct={v} <= guesses={r} <= canaries={m}.")


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise ToolkitError(f"confidence={confidence!r} must be in (0, 1).")


# --- canaries and training ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Canaries:
    """`m` mislabeled training images and which of them are in (the secret bits S)."""

    source_index: np.ndarray  # int, (m,): index into the full training set
    images: np.ndarray  # uint8, (m, H, W, C)
    labels: np.ndarray  # int32, (m,): a wrong label, drawn uniformly among the other classes
    included: np.ndarray  # bool, (m,): S_i, each True with probability 1/2


def make_canaries(data: Dataset, *, base: int, m: int, seed: int) -> Canaries:
    """Canaries are training images `base .. base+m-1` (outside the base set), relabelled."""
    idx = np.arange(base, base + m)
    true = data.train_labels[idx]
    shift = np.random.default_rng([seed, _AUDIT_TAG, 1]).integers(1, data.num_classes, size=m)
    labels = ((true + shift) % data.num_classes).astype(np.int32)
    included = np.random.default_rng([seed, _AUDIT_TAG, 0]).random(m) < 0.5
    return Canaries(idx, data.train_images[idx], labels, included)


def train_with_canaries(
    cfg: TrainConfig, data: Dataset, canaries: Canaries, *, progress: bool = False
) -> tuple[Any, Any, int]:
    """DP-SGD on the base set plus the included canaries, with `q` fixed by all slots.

    `cfg` must be resolved for ``N = base + m`` examples. The loop is `train._fit`'s
    (same samplers, micro-batching, noise keys `fold_in(key, step)`), without
    checkpoints; the only difference is that the sampled slots of excluded canaries
    are dropped, so they never touch the model.

    Returns:
        `(graphdef, params, steps)`.
    """
    images = np.concatenate([data.train_images, canaries.images])
    labels = np.concatenate([data.train_labels, canaries.labels])
    present = np.concatenate([np.ones(len(data.train_labels), bool), canaries.included])
    n = len(labels)
    universe = dataclasses.replace(data, train_images=images, train_labels=labels)
    run = train_lib._init(cfg, universe)
    mech = dpsgd.Mechanism(
        clipping=cfg.clipping, clip_norm=cfg.clip_norm, gamma=cfg.gamma,
        noise_multiplier=cfg.noise_multiplier,
    )  # fmt: skip
    train_x, train_y = jnp.asarray(to_float(images)), jnp.asarray(labels)
    per_example = dpsgd.resolve_implementation(
        run.graphdef, run.params, train_x, train_y, cfg.per_example
    )
    accumulate = dpsgd.make_accumulate(run.graphdef, mech, implementation=per_example)
    update = dpsgd.make_update(run.optimizer, mech, expected_batch_size=float(cfg.batch_size))
    sampler = make_sampler(cfg.sampling, num_examples=n, batch_size=cfg.batch_size, seed=cfg.seed)
    physical = physical_batch_size(cfg.batch_size, max_physical=cfg.max_physical_batch)
    steps = cfg.epochs * (n // cfg.batch_size)
    params, opt_state, zeros = run.params, run.opt_state, dpsgd.zeros_like(run.params)
    with train_lib._progress(progress, steps, 0) as (bar, task):
        for step in range(steps):
            idx = sampler.indices(step)
            idx = idx[present[idx]]
            acc = zeros
            for chunk_idx, chunk_mask in pad_chunks(idx, physical):
                acc, _, _ = accumulate(params, acc, train_x, train_y, chunk_idx, chunk_mask)
            params, opt_state = update(params, opt_state, acc, jax.random.fold_in(run.key, step))
            if bar is not None:
                bar.update(task, advance=1, description="audit training")
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)):
        raise train_lib.TrainingDiverged(
            f"audit training diverged: the parameters are not finite (lr={cfg.lr} may be too large)."  # noqa: E501
        )
    return run.graphdef, params, steps


def _losses_and_correct(graphdef, params, images: np.ndarray, labels: np.ndarray):
    @jax.jit
    def batch(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return loss, jnp.argmax(logits, -1) == y

    losses, correct = [], []
    for i in range(0, len(labels), 1000):
        x = jnp.asarray(to_float(images[i : i + 1000]))
        loss, c = batch(params, x, jnp.asarray(labels[i : i + 1000]))
        losses.append(np.asarray(loss, np.float64))
        correct.append(np.asarray(c))
    return np.concatenate(losses), np.concatenate(correct)


# --- the audit ------------------------------------------------------------------------------


def run_audit(
    cfg: TrainConfig,
    *,
    canaries: int,
    confidence: float = 0.95,
    out: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train once with `canaries` canaries and compare the audited eps with the accountants'.

    The base set is the first `cfg.limit_train` training examples (all but the last
    `canaries` if `limit_train` is None); the canaries are the next `canaries` examples.
    `out`, if given, is created only when the audit is complete (written in a temporary
    sibling directory, then renamed), holding `audit.json` and `canaries.npz`.

    Returns:
        The audit record (also `audit.json`); ``record["consistent"]`` is False when the
        audited eps exceeds the smallest accountant eps, which a correct implementation
        shows with probability at most ``1 - confidence``.
    """
    if out is not None:
        rundir.prepare_new(out)
    _check_confidence(confidence)
    if not (isinstance(canaries, int) and canaries >= 2):
        raise ToolkitError(f"canaries={canaries!r} must be an integer >= 2.")
    if not 2 * canaries * cfg.delta <= 1:
        raise ToolkitError(
            f"canaries={canaries} with delta={cfg.delta}: the audit needs 2*canaries*delta <= 1."
        )
    full = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    n_full = len(full.train_labels)
    base = cfg.limit_train if cfg.limit_train is not None else n_full - canaries
    if not (base >= 1 and base + canaries <= n_full):
        raise ToolkitError(
            f"limit_train={cfg.limit_train} plus canaries={canaries} must be <= the "
            f"{n_full} training examples (the canaries are taken after the base set)."
        )
    n = base + canaries
    requested = cfg.to_dict()
    cfg = resolve(dataclasses.replace(cfg, limit_train=base), num_examples=n)
    data = dataclasses.replace(
        full, train_images=full.train_images[:base], train_labels=full.train_labels[:base]
    )
    canary = make_canaries(full, base=base, m=canaries, seed=cfg.seed)

    t0 = time.perf_counter()
    graphdef, params, steps = train_with_canaries(cfg, data, canary, progress=progress)
    train_time = time.perf_counter() - t0
    losses, _ = _losses_and_correct(graphdef, params, canary.images, canary.labels)
    _, test_correct = _losses_and_correct(graphdef, params, full.test_images, full.test_labels)
    result = audit_scores(-losses, canary.included, delta=cfg.delta, confidence=confidence)

    q = cfg.batch_size / n
    eps = (
        accounting.epsilons(
            noise_multiplier=cfg.noise_multiplier, sampling_prob=q, steps=steps, delta=cfg.delta
        )
        if cfg.private
        else dict.fromkeys(accounting.ACCOUNTANTS, math.inf)
    )
    tightest = min(eps.values())
    record = rundir.jsonable(
        {
            "config": cfg.to_dict(),
            "requested": requested,
            "canaries": canaries,
            "canary_kind": "mislabeled training image (uniform wrong label)",
            "score": "minus the canary's loss under the final model",
            "num_base": base,
            "num_included": int(canary.included.sum()),
            "num_examples": n,
            "sampling_prob": q,
            "steps": steps,
            "private": cfg.private,
            "noise_multiplier": cfg.noise_multiplier,
            "delta": cfg.delta,
            "accountant": cfg.accountant,
            "epsilon": eps,
            "epsilon_headline": eps[cfg.accountant],
            "privacy": train_lib.privacy_label(cfg),
            "audit": {
                **dataclasses.asdict(result),
                "method": "one-run audit, Steinke, Nasr & Jagielski 2023, Thm. 3.3; "
                "Bonferroni over the guess counts",
            },
            "epsilon_lower_bound": result.epsilon_lower_bound,
            "confidence": confidence,
            "consistent": bool(result.epsilon_lower_bound <= tightest),
            "test_accuracy": float(test_correct.mean()),
            "train_time_s": train_time,
            "provenance": rundir.provenance(),
        }
    )
    if out is not None:
        arrays = {
            "source_index": canary.source_index,
            "labels": canary.labels,
            "included": canary.included,
            "loss": losses,
        }
        _write_dir_atomically(out, record, arrays)
    return record


def _write_dir_atomically(out: Path, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Build the directory beside `out`, then rename it into place: all of it or nothing."""
    import io

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        atomic_write_json(tmp / AUDIT_FILE, record)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(tmp / CANARY_FILE, buf.getvalue())
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, out)  # onto an absent or empty directory: atomic on POSIX
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToolkitError(f"--out={out} could not be written ({e.strerror or e}).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
