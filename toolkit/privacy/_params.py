"""The privacy parameters of one DP-SGD run, and the step count T the accountants compose.

`PrivacyParams` is frozen and holds what the accountants need: the data set size N, the
expected batch size B (so q = B / N), the epochs (so T = epochs * (N // B) steps, the
count the loop runs: both take N // B from `toolkit.privacy._sampling.steps_per_epoch`), sigma,
delta, the headline accountant and the sampling actually run. It yields the dp-accounting
event of the run and its eps under every accountant (`toolkit.privacy.accounting`). A run with
sigma = 0 has eps = inf: no DP guarantee.

>>> p = PrivacyParams(num_examples=60000, batch_size=256, epochs=60, noise_multiplier=1.1)
>>> p.steps, round(p.epsilon(), 2)
(14040, 3.01)
"""

from __future__ import annotations

import dataclasses
import math

from dp_accounting import dp_event

from toolkit.base import ToolkitError, plain_fields
from toolkit.privacy import accounting
from toolkit.privacy._calibration import calibrate_noise_multiplier
from toolkit.privacy._sampling import SAMPLINGS, steps_per_epoch


@dataclasses.dataclass(frozen=True)
class PrivacyParams:
    """(q, steps, sigma, delta, accountant) of DP-SGD with Poisson-subsampled Gaussian steps.

    Attributes:
        num_examples: Training set size N (the examples the sampler draws from).
        batch_size: Expected batch size B; the sampling probability is q = B / N.
        epochs: Epochs; may be fractional (`toolkit account`), steps are rounded down.
        noise_multiplier: sigma: noise std on the clipped sum over its sensitivity.
        delta: delta of the (eps, delta) guarantee.
        accountant: The accountant of the headline eps (all three are always available).
        sampling: "poisson" (what every accountant here assumes) or "shuffle" (labelled).
    """

    num_examples: int
    batch_size: int
    epochs: float
    noise_multiplier: float
    delta: float = 1e-5
    accountant: str = "rdp-classic"
    sampling: str = "poisson"

    def __post_init__(self) -> None:
        plain_fields(self)  # NumPy and JAX scalars as Python numbers
        if not (isinstance(self.num_examples, int) and self.num_examples >= 1):
            raise ToolkitError(f"num_examples={self.num_examples!r} must be an integer >= 1.")
        if not (isinstance(self.batch_size, int) and 1 <= self.batch_size <= self.num_examples):
            raise ToolkitError(
                f"batch_size={self.batch_size!r} must be an integer in [1, {self.num_examples}]."
            )
        if not (math.isfinite(self.epochs) and self.epochs >= 0):
            raise ToolkitError(f"epochs={self.epochs!r} must be finite and >= 0.")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ToolkitError(f"noise_multiplier={self.noise_multiplier!r} must be finite, >= 0.")
        if not 0 < self.delta < 1:
            raise ToolkitError(f"delta={self.delta!r} must be in (0, 1).")
        if self.accountant not in accounting.ACCOUNTANTS:
            raise ToolkitError(
                f"accountant={self.accountant!r} is unknown; "
                f"expected one of {', '.join(accounting.ACCOUNTANTS)}."
            )
        if self.sampling not in SAMPLINGS:
            raise ToolkitError(
                f"sampling={self.sampling!r} is unknown; expected one of {', '.join(SAMPLINGS)}."
            )

    @classmethod
    def calibrated(
        cls,
        *,
        target_epsilon: float,
        num_examples: int,
        batch_size: int,
        epochs: float,
        delta: float = 1e-5,
        accountant: str = "rdp-classic",
        sampling: str = "poisson",
    ) -> PrivacyParams:
        """The smallest sigma (to 0.1%) whose `accountant` eps is at most `target_epsilon`."""
        probe = cls(num_examples, batch_size, epochs, 0.0, delta, accountant, sampling)
        sigma = calibrate_noise_multiplier(
            accountant=accountant,
            target_epsilon=target_epsilon,
            sampling_prob=probe.sampling_prob,
            steps=probe.steps,
            delta=delta,
        )
        return dataclasses.replace(probe, noise_multiplier=sigma)

    @property
    def sampling_prob(self) -> float:
        """q = B / N."""
        return self.batch_size / self.num_examples

    @property
    def steps_per_epoch(self) -> int:
        """N // B: an epoch is this many Poisson draws (`toolkit.privacy.steps_per_epoch`)."""
        return steps_per_epoch(self.num_examples, self.batch_size)

    @property
    def steps(self) -> int:
        """T = epochs * (N // B), exactly the steps the training loop runs."""
        return self.steps_after(self.epochs)

    def steps_after(self, epochs: float) -> int:
        """Steps run by the end of `epochs` epochs."""
        return int(epochs * self.steps_per_epoch)

    def event(self, steps: int | None = None) -> dp_event.DpEvent:
        """The dp-accounting event: `steps` (default T) Poisson-subsampled Gaussian steps."""
        one = dp_event.PoissonSampledDpEvent(
            self.sampling_prob, dp_event.GaussianDpEvent(self.noise_multiplier)
        )
        return dp_event.SelfComposedDpEvent(one, self.steps if steps is None else steps)

    def epsilon(self, accountant: str | None = None, *, steps: int | None = None) -> float:
        """eps at `delta` after `steps` (default T) under `accountant` (default the headline)."""
        return accounting.epsilon(
            accountant=accountant or self.accountant,
            noise_multiplier=self.noise_multiplier,
            sampling_prob=self.sampling_prob,
            steps=self.steps if steps is None else steps,
            delta=self.delta,
        )

    def epsilons(self, *, steps: int | None = None) -> dict[str, float]:
        """{accountant: eps} for every accountant, after `steps` (default T)."""
        return {name: self.epsilon(name, steps=steps) for name in accounting.ACCOUNTANTS}

    def epsilon_by_epoch(self, epochs: int) -> list[dict[str, float]]:
        """{accountant: eps} at the end of each of the first `epochs` epochs."""
        steps = [self.steps_after(e + 1) for e in range(epochs)]
        curves = {
            name: accounting.epsilon_curve(
                accountant=name,
                noise_multiplier=self.noise_multiplier,
                sampling_prob=self.sampling_prob,
                steps=steps,
                delta=self.delta,
            )
            for name in accounting.ACCOUNTANTS
        }
        return [{name: curves[name][e] for name in accounting.ACCOUNTANTS} for e in range(epochs)]

    @property
    def label(self) -> str:
        """How the headline eps was obtained, e.g. 'rdp-classic, Poisson sampling'."""
        if self.noise_multiplier == 0:
            return "sigma = 0: eps = inf, no DP guarantee"
        if self.sampling == "poisson":
            return f"{self.accountant}, Poisson sampling"
        return (
            f"{self.accountant} Poisson analysis applied to SHUFFLED batches "
            "(not a proven bound for this sampling)"
        )


NON_PRIVATE_LABEL = "non-private (no DP guarantee)"
