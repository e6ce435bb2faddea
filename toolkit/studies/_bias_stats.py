"""Statistics of the clipping-bias study, from running sums, with Poisson-bootstrap intervals.

`toolkit.studies._bias` streams the per-example gradients g_i of n training examples and
keeps, for K weight vectors v_k over the examples, the weighted sums (in float64):

    n_k = sum_i v_ki,   G_k = sum_i v_ki g_i,   Gc_k = sum_i v_ki clip(g_i),
    the weighted count of clipped examples (||g_i|| > C), and of finite norms and their sum.

Row k = 0 is the measurement itself (v_0 = 1); rows 1..R are the bootstrap replicates
(v_r = W_r, below). Every statistic is the same function of one row, so point estimate
and replicates share one code path (`statistics`). With gbar = G_k / n_k (the mean
gradient), gclip = Gc_k / n_k (the mean clipped gradient, what clipped GD follows),
S the sensitivity of the clipped sum (C flat, 1 automatic; `toolkit.grads.clipping`),
sigma the run's noise multiplier, B its expected batch and d its number of parameters:

    cosine            cos(gclip, gbar)
    norm_ratio        ||gclip|| / ||gbar||
    projection        <gclip, gbar / ||gbar||> / S: the clipped mean's component along the
                      true mean gradient, in units of S (at most 1: ||clip(g_i)|| <= S)
    fraction_clipped  weighted share of examples with ||g_i|| > C
    mean_grad_norm    weighted mean of the finite ||g_i|| (pre-clip)
    noise_direction   sigma S / B: the std of one DP-SGD step's noise along any one
                      direction (update = (sum_i clip(g_i) + N(0, (sigma S)^2 I_d)) / B,
                      `toolkit.privacy._privatizer`), in the units of projection * S
    snr               projection * S / noise_direction = B <gclip, gbar/||gbar||> / (sigma S):
                      the expected step along the true gradient against its noise there
    noise_norm_ratio  (sigma S sqrt(d) / B) / ||gclip||: the noise vector's length
                      (about sqrt(d) directions) against the signal's

A run without noise (non-private, or sigma = 0) has noise_direction = 0, snr = +inf
(or -inf, NaN when the projection is 0) and noise_norm_ratio = 0; an unknown noise
(`noise=None`) gives NaN for the three.

**Bootstrap.** Poisson bootstrap over examples (Hanley & MacGibbon 2006; Chamandy et al.
2012): replicate r weights example i by W_ri ~ Poisson(1), independently, which
approximates resampling n examples with replacement and lets each chunk of examples
add its share to every replicate (W_chunk @ G_chunk). W (R x N over the run's whole
training split, `bootstrap_weights`) comes from the seed alone, so two runs measured on
the same examples with the same seed and R see the same replicates, and the difference of
their replicate statistics is the paired bootstrap of their difference
(`paired_difference`). The 95% interval is the percentile interval: the 2.5% and 97.5%
order statistics of the R replicate values (numpy's "inverted_cdf": no interpolation,
so the +inf of a run without noise stays inf). It covers the choice of examples at fixed
parameters, not the randomness of training (that is what several seeds show).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from toolkit.base import ToolkitError

DIAGNOSTIC_LABEL = (
    "diagnostic computed on private training data without noise: not covered by eps, "
    "not for release"
)
CI_LEVEL = 0.95
# Statistics with a bootstrap interval and stored replicates.
BOOTSTRAPPED = ("cosine", "projection", "norm_ratio", "fraction_clipped", "snr",
                "noise_norm_ratio", "mean_grad_norm")  # fmt: skip
MAX_REPLICATES = 1000  # W is R x N float32; the sums 2 (R + 1) x d float64
_WEIGHTS_STREAM = 1  # W's numpy stream is (seed, 1); the sample's is seed


@dataclasses.dataclass(frozen=True)
class StepNoise:
    """The Gaussian noise of one DP-SGD step of a run: sigma and the expected batch B."""

    noise_multiplier: float  # sigma; 0 for a non-private run
    batch_size: float  # B: the divisor of the noisy clipped sum

    def direction(self, sensitivity: float) -> float:
        """sigma S / B: the std of the step's noise along any one direction."""
        return self.noise_multiplier * sensitivity / self.batch_size


@dataclasses.dataclass(frozen=True)
class LayerBias:
    """One layer's part of the clipping bias (`toolkit.studies._bias`), point estimates."""

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
    mean_grad_norm: float  # weighted mean of the finite ||g_i||, pre-clip
    projection: float  # <gclip, gbar/||gbar||> / S
    noise_direction: float  # sigma S / B
    snr: float  # projection S / noise_direction
    noise_norm_ratio: float  # sigma S sqrt(d) / B / ||gclip||
    layers: dict[str, LayerBias]
    ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # 95%
    replicates: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # R each
    clip_norm: float | None = None  # the C clipped at (a quantile run's C_t at this epoch)


@dataclasses.dataclass(frozen=True)
class RunBias:
    """The clipping bias over one run's training, with what it was measured at."""

    run: str
    activation: str
    private: bool
    run_seed: int  # the training run's seed (not the sample's)
    clip_norm: float  # the C used here (a non-private run: the C given; quantile: C_0)
    clipping: str
    sensitivity: float  # S: C flat, 1 automatic
    noise_multiplier: float  # sigma of the run (0: non-private)
    batch_size: int  # the run's expected batch B
    num_params: int  # d
    num_train: int  # the run's training split (after validation and limit_train)
    sample_size: int  # n examples measured (num_train: all of them)
    sample_seed: int  # seeds the sample (when n < num_train) and the bootstrap weights
    bootstrap: int  # R replicates (0: no intervals)
    examples: str  # SHA-256 of the measured examples (inputs and labels, in order)
    points: list[BiasPoint]
    diagnostic: str = DIAGNOSTIC_LABEL

    @property
    def label(self) -> str:
        """What was trained and how it was clipped: "relu, DP-SGD, C=0.1", "tanh, DP-SGD,
        per-layer C=0.1", "relu, non-private" (runs of one label differ only in seed)."""
        if not self.private:
            return f"{self.activation}, non-private"
        rule = "" if self.clipping == "flat" else f"{self.clipping} "
        return f"{self.activation}, DP-SGD, {rule}C={self.clip_norm:g}"

    @property
    def noiseless(self) -> bool:
        """No noise in the run's steps: snr is inf, noise_norm_ratio 0."""
        return not self.noise_multiplier > 0

    def point(self, epoch: int) -> BiasPoint:
        for p in self.points:
            if p.epoch == epoch:
                return p
        measured = ", ".join(str(p.epoch) for p in self.points)
        raise ToolkitError(f"epoch={epoch} was not measured in {self.run} (measured: {measured}).")


@dataclasses.dataclass(frozen=True)
class Sums:
    """Weighted sums over the examples, one row per weight vector (module docstring).

    Row 0 has weight 1 on every example; rows 1..R are the bootstrap replicates.
    """

    grad: np.ndarray  # (K, d) sum_i v_ki g_i
    clipped: np.ndarray  # (K, d) sum_i v_ki clip(g_i)
    count: np.ndarray  # (K,) sum_i v_ki
    clipped_count: np.ndarray  # (K,) sum_i v_ki [||g_i|| > C]
    norm_sum: np.ndarray  # (K,) sum_i v_ki ||g_i|| over finite norms
    finite_count: np.ndarray  # (K,) sum_i v_ki [||g_i|| finite]


def bootstrap_weights(num_train: int, *, replicates: int, seed: int) -> np.ndarray:
    """W (R, N) float32, W_ri ~ Poisson(1) for example i of the run's training split.

    A function of (seed, N, R) only: the examples measured pick their columns, so the
    same example gets the same weights in every run on the same split.
    """
    rng = np.random.default_rng((seed, _WEIGHTS_STREAM))
    return rng.poisson(1.0, size=(replicates, num_train)).astype(np.float32)


def statistics(sums: Sums, *, sensitivity: float, noise: StepNoise | None) -> dict[str, np.ndarray]:
    """Every statistic of the module docstring for each row of `sums`: name -> (K,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        count = sums.count[:, None]
        gbar, gclip = sums.grad / count, sums.clipped / count
        n_bar, n_clip = np.linalg.norm(gbar, axis=1), np.linalg.norm(gclip, axis=1)
        dot = np.sum(gbar * gclip, axis=1)
        positive = (n_bar > 0) & (n_clip > 0)
        out = {
            "cosine": np.where(positive, dot / (n_bar * n_clip), np.nan),
            "norm_ratio": np.where(n_bar > 0, n_clip / n_bar, np.nan),
            "projection": np.where(n_bar > 0, dot / n_bar / sensitivity, np.nan),
            "fraction_clipped": sums.clipped_count / sums.count,
            "mean_grad_norm": sums.norm_sum / sums.finite_count,
        }
        direction = math.nan if noise is None else noise.direction(sensitivity)
        d = sums.grad.shape[1]
        out["noise_direction"] = np.full(len(n_bar), direction)
        out["snr"] = out["projection"] * sensitivity / direction
        out["noise_norm_ratio"] = (
            np.zeros(len(n_bar)) if direction == 0 else direction * math.sqrt(d) / n_clip
        )
    return out


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of replicate values (order statistics, no interpolation)."""
    alpha = (1 - CI_LEVEL) / 2
    lo, hi = np.quantile(np.asarray(values, np.float64), [alpha, 1 - alpha],
                         method="inverted_cdf")  # fmt: skip
    return float(lo), float(hi)


def layer_bias(sums: Sums, names: list[str]) -> dict[str, LayerBias]:
    """Per layer (row 0 of `sums`; `names[j]` is the layer of coordinate j):

    bias_share  ||d_l||^2 / ||d||^2, d = gbar - gclip: where the clipped-away gradient
                lives (sums to 1 over layers; 0 when nothing is clipped);
    grad_share  ||gbar_l||^2 / ||gbar||^2: where the mean gradient lives (sums to 1);
    cosine      cos(gclip_l, gbar_l), the layer's own direction change.
    """
    gbar, gclip = sums.grad[0] / sums.count[0], sums.clipped[0] / sums.count[0]
    names_arr = np.asarray(names)
    d2, g2 = float(np.sum((gbar - gclip) ** 2)), float(gbar @ gbar)
    layers = {}
    for name in dict.fromkeys(names):
        at = names_arr == name
        b, c = gbar[at], gclip[at]
        nb, nc = np.linalg.norm(b), np.linalg.norm(c)
        layers[name] = LayerBias(
            bias_share=float(np.sum((b - c) ** 2)) / d2 if d2 > 0 else 0.0,
            grad_share=float(b @ b) / g2 if g2 > 0 else math.nan,
            cosine=float(b @ c / (nb * nc)) if nb > 0 and nc > 0 else math.nan,
        )
    return layers


def bias_point(
    sums: Sums, *, epoch: int, names: list[str], sensitivity: float, noise: StepNoise | None
) -> BiasPoint:
    """The point of `sums` (row 0), with intervals and replicates from rows 1.. (if any)."""
    stats = statistics(sums, sensitivity=sensitivity, noise=noise)
    replicated = len(sums.count) > 1
    return BiasPoint(
        epoch=epoch,
        **{k: float(v[0]) for k, v in stats.items()},
        layers=layer_bias(sums, names),
        ci={k: interval(stats[k][1:]) for k in BOOTSTRAPPED} if replicated else {},
        replicates={k: stats[k][1:].tolist() for k in BOOTSTRAPPED} if replicated else {},
    )


@dataclasses.dataclass(frozen=True)
class Difference:
    """statistic(a) - statistic(b) at one epoch, with its paired-bootstrap 95% interval."""

    statistic: str
    epoch: int
    estimate: float
    ci: tuple[float, float]


def paired_difference(a: RunBias, b: RunBias, *, epoch: int, statistic: str) -> Difference:
    """The difference a - b of `statistic` at `epoch`, and the percentile interval of the
    R paired replicate differences (the same weights W_r on the same examples).

    Refused (one-line ToolkitError) unless both were measured on the same examples (the
    same digest) with the same seed and R >= 1 replicates.
    """
    if statistic not in BOOTSTRAPPED:
        raise ToolkitError(f"statistic={statistic!r} has no replicates; expected one of "
                           f"{', '.join(BOOTSTRAPPED)}.")  # fmt: skip
    for name, x, y in (
        ("examples", a.examples, b.examples),
        ("sample_seed", a.sample_seed, b.sample_seed),
        ("bootstrap", a.bootstrap, b.bootstrap),
    ):
        if x != y:
            raise ToolkitError(
                f"{a.run} and {b.run} were measured with different {name} ({x} and {y}): "
                "their bootstrap replicates are not paired; measure both on the same "
                "training split with the same --sample, --seed and --bootstrap."
            )
    if a.bootstrap < 1:
        raise ToolkitError(f"{a.run} and {b.run} have no bootstrap replicates (--bootstrap 0).")
    pa, pb = a.point(epoch), b.point(epoch)
    with np.errstate(invalid="ignore"):
        diffs = np.asarray(pa.replicates[statistic]) - np.asarray(pb.replicates[statistic])
        estimate = getattr(pa, statistic) - getattr(pb, statistic)
    return Difference(statistic=statistic, epoch=epoch, estimate=float(estimate),
                      ci=interval(diffs))  # fmt: skip


def from_record(d: Mapping[str, Any]) -> RunBias:
    """A `RunBias` from its JSON (`dataclasses.asdict`, as `toolkit.studies.write_json` writes)."""
    points = [
        BiasPoint(**{
            **p,
            "layers": {k: LayerBias(**v) for k, v in p["layers"].items()},
            "ci": {k: tuple(v) for k, v in p["ci"].items()},
        })
        for p in d["points"]
    ]  # fmt: skip
    return RunBias(**{**d, "points": points})
