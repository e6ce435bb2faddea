"""The sensitivity bound end to end: `toolkit.fit` on D and on D minus one example.

For every model of the zoo (`tests/zoo.py`: models users write) and every per-example
implementation that accepts it, one DP-SGD step with q = 1 (every example in the batch),
no noise and plain SGD at lr 1, the same seed on both sides. Then the step's update is
S / B, so the clipped sum is S = (theta_0 - theta_1) B, and the accountant's assumption
is ||S(D) - S(D')|| <= C (flat clipping) or <= 1 (automatic). Example 0 is removed, which
moves every other example to another row and, with micro-batches of 8 rows, the later
ones to another micro-batch: randomness keyed by the row (dropout masks, augmult views)
breaks the bound by several C.

Tolerance: S is recovered from float32 parameters of magnitude ~1 after an update of
norm <= 13 C / B, so each coordinate carries ~1e-7 B absolute error, ~1e-5 C over the
few hundred coordinates; 1e-3 C is far above that and far below a broken bound (>= 2 C
measured with row-keyed masks). The removed example's gradient has norm > C (C = 0.05
is below every initial gradient norm here), so the bound is met with equality, and a
lower bound of 0.5 C checks that the removal is seen at all.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import toolkit
from tests import zoo
from toolkit.base import ToolkitError
from toolkit.grads import Augmult

N, C = 13, 0.05

# (model, implementation): every path each model is accepted on.
CASES = [(name, path) for name in zoo.ZOO for path in ("bookkeeping", "vmap")] + [
    ("dropout", "auto"),
]
SLOW = {"paper-cnn", "attention", "augmult"}


def clipped_sum(name: str, x, y, *, per_example: str, clipping: str = "flat", **kw):
    """S of one fit step on (x, y), and the path the run took (`kw`: more fit settings)."""
    s, result = _one_step(name, x, y, per_example=per_example, clipping=clipping, **kw)
    return s, result.history[-1].per_example_grads


def _one_step(name: str, x, y, *, per_example: str, clipping: str, noise_multiplier=0.0, **kw):
    """(S + noise, the fit result) of one step with q = 1, plain SGD at lr 1."""
    make, _ = zoo.ZOO[name]
    model = make()
    before = [np.asarray(v, np.float64) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # delta >= 1/N on 13 examples
        result = toolkit.fit(
            model, (x, y), optimizer=optax.sgd(1.0), batch_size=len(y), epochs=1,
            clip_norm=C, clipping=clipping, noise_multiplier=noise_multiplier, seed=7,
            per_example=per_example, max_physical_batch=8,
            augment=Augmult(2) if name == "augmult" else None, **kw,
        )  # fmt: skip
    after = jax.tree.leaves(nnx.state(result.model, nnx.Param))
    s = np.concatenate([((b - np.asarray(a, np.float64)) * len(y)).ravel()
                        for b, a in zip(before, after, strict=True)])  # fmt: skip
    return s, result


def neighbour_gap(name: str, per_example: str, clipping: str = "flat") -> tuple[float, str]:
    """||S(D) - S(D minus example 0)|| / sensitivity, and the path taken."""
    x, y = zoo.ZOO[name][1](N)
    full, path = clipped_sum(name, x, y, per_example=per_example, clipping=clipping)
    less, _ = clipped_sum(name, x[1:], y[1:], per_example=per_example, clipping=clipping)
    return float(np.linalg.norm(full - less)) / (C if clipping == "flat" else 1.0), path


@pytest.mark.parametrize(
    ("name", "per_example"),
    [pytest.param(*c, marks=[pytest.mark.slow] if c[0] in SLOW else []) for c in CASES],
    ids=[f"{n}-{p}" for n, p in CASES],
)
def test_removing_one_example_moves_the_clipped_sum_by_at_most_c(name, per_example):
    gap, path = neighbour_gap(name, per_example)
    assert path in ("bookkeeping", "vmap") and (per_example == "auto" or path == per_example)
    assert 0.5 <= gap <= 1 + 1e-3, f"{name} on {path}: ||S(D) - S(D')|| = {gap:.4f} C"


@pytest.mark.parametrize("per_example", ["bookkeeping", "vmap"])
def test_removing_one_example_moves_an_automatic_clipped_sum_by_at_most_one(per_example):
    gap, _ = neighbour_gap("dropout", per_example, clipping="automatic")
    assert 0.5 <= gap <= 1 + 1e-3, f"||S(D) - S(D')|| = {gap:.4f}"


@pytest.mark.parametrize("per_example", ["auto", "bookkeeping", "vmap"])
def test_a_layer_with_batch_statistics_in_training_mode_is_refused_by_name(per_example):
    """Per-example in evaluation mode, mixing the batch in training mode: refused on every
    path (the vmap path would otherwise train it on batches of one)."""
    model = zoo.BatchMixing(nnx.Rngs(0))
    with pytest.raises(ToolkitError, match=r"layer stand \(BatchStandardize\) mixes the examples"):
        toolkit.fit(model, zoo.vectors(N), optimizer=optax.sgd(1.0), batch_size=N, epochs=1,
                    clip_norm=C, noise_multiplier=0.0, delta=1e-3,
                    per_example=per_example)  # fmt: skip


@pytest.mark.parametrize("per_example", ["auto", "bookkeeping", "vmap"])
@pytest.mark.parametrize("module", [zoo.SizeGatedStats, zoo.RowShift])
def test_mixing_only_in_big_batches_or_late_rows_is_refused(module, per_example):
    """The checks run at the micro-batch size training uses, on every row: a model that
    mixes only from 5 rows up, or moves row i+3 into row i, is seen (both passed checks
    on 4 rows that looked at row 0 only, and moved the sum by ~1.9 C)."""
    with pytest.raises(ToolkitError, match="mixes the examples of a batch"):
        toolkit.fit(module(nnx.Rngs(0)), zoo.vectors(N), optimizer=optax.sgd(1.0),
                    batch_size=N, epochs=1, clip_norm=C, noise_multiplier=0.0, delta=1e-3,
                    per_example=per_example, max_physical_batch=8)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "per_example"),
    [("mlp", "bookkeeping"), ("mlp", "vmap"), ("dropout", "bookkeeping"), ("layernorm", "vmap")],
)
def test_per_layer_clipping_moves_the_clipped_sum_by_at_most_c(name, per_example):
    """Each layer's part clipped to C_l with sum C_l^2 = C^2: the removed example moves the
    sum by at most C (both splits of C)."""
    for split in ("equal", "size"):
        x, y = zoo.ZOO[name][1](N)
        kw = dict(per_example=per_example, clipping="per-layer", layer_split=split)
        full, path = clipped_sum(name, x, y, **kw)
        less, _ = clipped_sum(name, x[1:], y[1:], **kw)
        gap = float(np.linalg.norm(full - less)) / C
        assert path == per_example
        assert 0.5 <= gap <= 1 + 1e-3, f"{name} {split} on {path}: {gap:.4f} C"


@pytest.mark.parametrize(("name", "per_example"), [("mlp", "bookkeeping"), ("mlp", "vmap"),
                                                   ("dropout", "vmap")])  # fmt: skip
def test_quantile_clipping_moves_the_sum_by_at_most_c_and_the_count_by_a_half(name, per_example):
    """The quantile rule's step releases the clipped sum at C_0 = C and the centred count,
    both noisy. With the same seed on D and D minus example 0, the noise draws are the same
    (keyed by the run's seed and the step; sigma_b is given, so sigma_g is the same too),
    so the differences of the released values are the differences of the sums: ||dS|| <= C,
    and the count, recovered from C_1 = C exp(-eta (b / B + 1/2 - gamma)), moves by exactly
    1/2 (example 0's gradient norm is above C). Tolerance: C_1 is a float32 (~1e-7
    relative), times B / eta = 65 gives ~1e-5 on the count."""
    eta, target, sigma_b = 0.2, 0.5, 3.0
    x, y = zoo.ZOO[name][1](N)
    kw = dict(per_example=per_example, clipping="quantile", noise_multiplier=1.0,
              count_noise=sigma_b, quantile_lr=eta, target_quantile=target)  # fmt: skip
    (full, a), (less, b) = _one_step(name, x, y, **kw), _one_step(name, x[1:], y[1:], **kw)

    def count(result, n):  # b + noise, from the recorded C_1
        return (-np.log(result.history[-1].clip_norm / C) / eta - 0.5 + target) * n

    assert 0.5 <= float(np.linalg.norm(full - less)) / C <= 1 + 1e-3
    assert abs(count(a, N) - count(b, N - 1) + 0.5) < 1e-3, (count(a, N), count(b, N - 1))
