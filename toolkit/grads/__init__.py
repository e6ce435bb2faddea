"""toolkit.grads."""

from toolkit.grads._augment import Augmult
from toolkit.grads._bookkeeping import NORM_RULES, Unsupported, make_clipped_grad
from toolkit.grads._independence import RTOL, keyed_by_example, rows_interact
from toolkit.grads._per_example import (
    IMPLEMENTATIONS,
    LOSSES,
    ClippedGrad,
    ClippedGradFn,
    LossFn,
    check_model,
    clipped_grad,
    merge,
    per_example_grads_fn,
    per_example_loss_fn,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    split_model,
)
from toolkit.grads.clipping import (
    CLIPPING_RULES,
    clip_factors,
    clipped_sum,
    per_example_norms,
    sensitivity,
)

__all__ = [
    "Augmult",
    "CLIPPING_RULES",
    "ClippedGrad",
    "ClippedGradFn",
    "IMPLEMENTATIONS",
    "LOSSES",
    "LossFn",
    "NORM_RULES",
    "RTOL",
    "Unsupported",
    "check_model",
    "clip_factors",
    "clipped_grad",
    "clipped_sum",
    "keyed_by_example",
    "make_clipped_grad",
    "merge",
    "per_example_grads_fn",
    "per_example_loss_fn",
    "per_example_norms",
    "rows_interact",
    "sensitivity",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "split_model",
]
