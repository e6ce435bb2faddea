import numpy as np
import pytest
from scipy import stats

from toolkit.privacy import PoissonSampler, ShuffleSampler, pad_chunks, physical_batch_size


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


def test_make_sampler_draws_at_the_accounted_rate():
    """`make_sampler` (what training runs) samples at exactly the q the accountant uses,
    B / N. Statistically: over 2,000 steps of N = 500, B = 50, the total membership is
    Binomial(10^6, 0.1), standard deviation 300; 5 of them (1,500) is tighter than the
    2,000 extra draws that q = (B + 1) / N gives."""
    from toolkit.privacy import PrivacyParams, make_sampler

    n, b, steps = 500, 50, 2000
    sampler = make_sampler("poisson", num_examples=n, batch_size=b, seed=4)
    assert sampler.sampling_prob == PrivacyParams(n, b, 1, 1.0).sampling_prob == b / n
    total = sum(len(sampler.indices(t)) for t in range(steps))
    q = b / n
    assert abs(total - n * steps * q) < 5 * np.sqrt(n * steps * q * (1 - q))


def test_every_example_joins_at_rate_q():
    """Each of N = 50 examples, the first and the last included, joins 2,000 Poisson
    batches Binomial(2000, 0.2) times: mean 400, standard deviation 17.9. All 50 counts
    within 5 standard deviations (a false failure has probability < 3e-5)."""
    n, q, steps = 50, 0.2, 2000
    sampler = PoissonSampler(n, q, seed=2)
    counts = np.zeros(n)
    for t in range(steps):
        counts[sampler.indices(t)] += 1
    sd = np.sqrt(steps * q * (1 - q))
    assert np.all(np.abs(counts - steps * q) < 5 * sd), counts


def test_shuffle_draws_a_fresh_permutation_each_epoch():
    """Epoch e's batches come from its own permutation: the first batch of epoch 1 is not
    epoch 0's (10 of 100 examples; the same set by chance has probability 1 / C(100, 10))."""
    s = ShuffleSampler(100, 10, seed=0)
    assert not np.array_equal(s.indices(0), s.indices(10))
    epoch1 = np.concatenate([s.indices(t) for t in range(10, 20)])
    assert sorted(epoch1.tolist()) == list(range(100))
