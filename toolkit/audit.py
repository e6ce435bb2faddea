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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from toolkit import accounting, rundir
from toolkit import train as train_lib
from toolkit.audit_stats import audit_scores, check_confidence
from toolkit.config import TrainConfig, resolve
from toolkit.data import Dataset, load_dataset, to_float
from toolkit.errors import ToolkitError
from toolkit.io import atomic_write_bytes, default_mode
from toolkit.privacy import NON_PRIVATE_LABEL
from toolkit.progress import progress_display
from toolkit.records import AuditRecord

_AUDIT_TAG = 3  # SeedSequence stream of the audit (samplers use 1 and 2)
AUDIT_FILE, CANARY_FILE = "audit.json", "canaries.npz"


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
) -> tuple[nnx.Module, int]:
    """DP-SGD on the base set plus the included canaries, with `q` fixed by all slots.

    `cfg` must be resolved for ``N = base + m`` examples. This is `toolkit train`'s loop
    (`toolkit.loop`: same samplers, micro-batching, noise keys), without checkpoints or
    evaluation; the only difference is its `select`, which drops the sampled slots of
    excluded canaries, so they never touch the model.

    Returns:
        `(trained model, steps)`.
    """
    images = np.concatenate([data.train_images, canaries.images])
    labels = np.concatenate([data.train_labels, canaries.labels])
    present = np.concatenate([np.ones(len(data.train_labels), bool), canaries.included])
    universe = dataclasses.replace(data, train_images=images, train_labels=labels)
    s = train_lib.setup(cfg, universe, select=lambda idx: idx[present[idx]], evaluate=False)
    params, _, _ = s.loop.run(
        s.params, s.opt_state, progress=progress_display(progress, "audit training")
    )
    model = train_lib.merge(s.loop.graphdef, params, s.loop.state)
    return model, s.loop.epochs * s.loop.steps_per_epoch


def _losses_and_correct(model: nnx.Module, images: np.ndarray, labels: np.ndarray):
    graphdef, params = nnx.split(model)

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
) -> AuditRecord:
    """Train once with `canaries` canaries and compare the audited eps with the accountants'.

    The base set is the first `cfg.limit_train` training examples (all but the last
    `canaries` if `limit_train` is None); the canaries are the next `canaries` examples.
    `out`, if given, is created only when the audit is complete (written in a temporary
    sibling directory, then renamed), holding `audit.json` and `canaries.npz`.

    Returns:
        The audit record (also `audit.json`); ``record.consistent`` is False when the
        audited eps exceeds the smallest accountant eps, which a correct implementation
        shows with probability at most ``1 - confidence``.
    """
    if out is not None:
        rundir.prepare_new(out)
    check_confidence(confidence)
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
    model, steps = train_with_canaries(cfg, data, canary, progress=progress)
    train_time = time.perf_counter() - t0
    losses, _ = _losses_and_correct(model, canary.images, canary.labels)
    _, test_correct = _losses_and_correct(model, full.test_images, full.test_labels)
    result = audit_scores(-losses, canary.included, delta=cfg.delta, confidence=confidence)

    privacy = train_lib.privacy_params(cfg, num_examples=n)
    q = cfg.batch_size / n
    eps = (
        privacy.epsilons(steps=steps) if privacy is not None
        else dict.fromkeys(accounting.ACCOUNTANTS, math.inf)
    )  # fmt: skip
    tightest = min(eps.values())
    record = AuditRecord(
        **{
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
            "privacy": privacy.label if privacy is not None else NON_PRIVATE_LABEL,
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


def _write_dir_atomically(out: Path, record: AuditRecord, arrays: dict[str, np.ndarray]) -> None:
    """Build the directory beside `out`, then rename it into place: all of it or nothing."""
    import io

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        rundir.write_audit(tmp / AUDIT_FILE, record)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(tmp / CANARY_FILE, buf.getvalue())
        os.chmod(tmp, default_mode(directory=True))
        os.replace(tmp, out)  # onto an absent or empty directory: atomic on POSIX
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToolkitError(f"--out={out} could not be written ({e.strerror or e}).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
