"""Batch selection: Poisson sampling (what the accountants assume) or shuffling.

Both samplers are stateless functions of (seed, step): the batch of step t is
the same whether or not the run was interrupted before t, so resuming needs
only the step count. Randomness comes from numpy's SeedSequence, keyed by
(seed, stream tag, step or epoch), independent of the JAX keys used for noise.

Batches are returned as index arrays; `pad_chunks` cuts them into fixed-shape
micro-batches with a mask so the jitted step compiles once.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from toolkit.base.choices import SAMPLINGS

_POISSON_TAG, _SHUFFLE_TAG = 1, 2


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """N // B: the steps of one epoch, and the one place that number is derived.

    Rounded down: with N = 250 and B = 40 an epoch is 6 steps, not 7. The training loop,
    the shuffle sampler, the lr schedule and the accountants (`toolkit.privacy._params`) all take
    their step counts from here, private or not, so the loop never runs a step that the
    accountant does not count.
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size={batch_size} must be in [1, num_examples={num_examples}].")
    return num_examples // batch_size


@dataclasses.dataclass(frozen=True)
class PoissonSampler:
    """Each example joins each step's batch independently with probability q."""

    num_examples: int
    sampling_prob: float
    seed: int

    def indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _POISSON_TAG, step])
        return np.flatnonzero(rng.random(self.num_examples) < self.sampling_prob)


@dataclasses.dataclass(frozen=True)
class ShuffleSampler:
    """Fixed-size batches from a fresh permutation each epoch.

    NOT what the Poisson accountants assume: runs using it are labelled as such.
    """

    num_examples: int
    batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_examples, self.batch_size)

    def indices(self, step: int) -> np.ndarray:
        epoch, b = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, _SHUFFLE_TAG, epoch]).permutation(
            self.num_examples
        )
        return np.sort(perm[b * self.batch_size : (b + 1) * self.batch_size])


def make_sampler(
    sampling: str, *, num_examples: int, batch_size: int, seed: int
) -> PoissonSampler | ShuffleSampler:
    if sampling == "poisson":
        return PoissonSampler(num_examples, batch_size / num_examples, seed)
    if sampling == "shuffle":
        return ShuffleSampler(num_examples, batch_size, seed)
    raise ValueError(f"sampling={sampling!r}; expected one of {SAMPLINGS}.")


def physical_batch_size(batch_size: int, *, max_physical: int) -> int:
    """Fixed micro-batch shape for a logical batch of expected size `batch_size`.

    Pads a Poisson batch to B + 4 sqrt(B) (exceeded with probability < 1e-4),
    then splits it into the fewest micro-batches of at most `max_physical`
    rows, rounded up to a multiple of 8. A larger batch just takes one more
    micro-batch: correctness never depends on this size, only speed.
    """
    padded = batch_size + math.ceil(4 * math.sqrt(batch_size))
    chunks = math.ceil(padded / max_physical)
    return 8 * math.ceil(padded / chunks / 8)


def pad_chunks(indices: np.ndarray, physical: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split `indices` into (idx, mask) pairs of length `physical`; padding rows point at 0."""
    n_chunks = max(1, math.ceil(len(indices) / physical))
    padded = np.zeros(n_chunks * physical, dtype=np.int32)
    padded[: len(indices)] = indices
    mask = np.zeros(n_chunks * physical, dtype=bool)
    mask[: len(indices)] = True
    return [
        (padded[i * physical : (i + 1) * physical], mask[i * physical : (i + 1) * physical])
        for i in range(n_chunks)
    ]
