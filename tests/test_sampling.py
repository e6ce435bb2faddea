import numpy as np
import pytest
from scipy import stats

from toolkit.sampling import PoissonSampler, ShuffleSampler, pad_chunks, physical_batch_size


def test_poisson_batch_sizes_pass_binomial_test():
    n, q, steps = 10_000, 0.02, 400
    sampler = PoissonSampler(n, q, seed=0)
    sizes = np.array([len(sampler.indices(t)) for t in range(steps)])
    # Total membership over all steps is Binomial(n * steps, q) under correct Poisson sampling.
    assert stats.binomtest(int(sizes.sum()), n * steps, q).pvalue > 1e-3
    # Batch sizes vary (not fixed-size batches in disguise): variance near n q (1 - q).
    assert sizes.var(ddof=1) == pytest.approx(n * q * (1 - q), rel=0.25)


def test_poisson_membership_independent_of_position():
    n, q = 2000, 0.1
    sampler = PoissonSampler(n, q, seed=1)
    counts = np.zeros(n)
    for t in range(500):
        counts[sampler.indices(t)] += 1
    # Each example's count is Binomial(500, q): first and second halves agree in mean.
    assert abs(counts[: n // 2].mean() - counts[n // 2 :].mean()) < 5 * np.sqrt(500 * q / (n // 2))


def test_samplers_are_functions_of_seed_and_step():
    a, b = PoissonSampler(1000, 0.05, seed=7), PoissonSampler(1000, 0.05, seed=7)
    assert np.array_equal(a.indices(13), b.indices(13))
    assert not np.array_equal(a.indices(13), a.indices(14))
    s = ShuffleSampler(100, 10, seed=0)
    epoch0 = np.concatenate([s.indices(t) for t in range(10)])
    assert sorted(epoch0.tolist()) == list(range(100))  # each example once per epoch


def test_pad_chunks_cover_indices_with_mask():
    idx = np.arange(5, 75)
    chunks = pad_chunks(idx, 32)
    assert len(chunks) == 3 and all(len(c) == 32 and len(m) == 32 for c, m in chunks)
    got = np.concatenate([c[m] for c, m in chunks])
    assert np.array_equal(got, idx)


def test_physical_batch_size_covers_poisson_tail():
    assert physical_batch_size(256, max_physical=512) >= 256 + 64
    p = physical_batch_size(2048, max_physical=512)
    assert p <= 512 and p % 8 == 0
