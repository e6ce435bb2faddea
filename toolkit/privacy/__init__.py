"""toolkit.privacy."""

from toolkit.privacy import accounting, randomness
from toolkit.privacy._calibration import NOISE_MULTIPLIER_SEARCH_RANGE, calibrate_noise_multiplier
from toolkit.privacy._params import NON_PRIVATE_LABEL, PrivacyParams
from toolkit.privacy._privatizer import PrivatizerState, add_gaussian_noise, gaussian_privatizer
from toolkit.privacy._quantile import (
    ClippedStep,
    QuantileState,
    centred_count,
    clip_norm_of,
    default_count_noise,
    gradient_noise,
    quantile_privatizer,
)
from toolkit.privacy._sampling import (
    SAMPLINGS,
    PoissonSampler,
    ShuffleSampler,
    make_sampler,
    pad_chunks,
    physical_batch_size,
    steps_per_epoch,
)

__all__ = [
    "ClippedStep",
    "QuantileState",
    "centred_count",
    "clip_norm_of",
    "default_count_noise",
    "gradient_noise",
    "quantile_privatizer",
    "NOISE_MULTIPLIER_SEARCH_RANGE",
    "NON_PRIVATE_LABEL",
    "PoissonSampler",
    "PrivacyParams",
    "PrivatizerState",
    "SAMPLINGS",
    "ShuffleSampler",
    "accounting",
    "add_gaussian_noise",
    "calibrate_noise_multiplier",
    "gaussian_privatizer",
    "make_sampler",
    "pad_chunks",
    "physical_batch_size",
    "randomness",
    "steps_per_epoch",
]
