"""The loss a run is given must fit the model's outputs: a single logit under the default
softmax cross-entropy would train nothing (its gradient is 0), so it is refused."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import toolkit
from toolkit.base import ToolkitError


def _binary(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


KW = dict(batch_size=16, epochs=1, clip_norm=1.0, noise_multiplier=0.5)


@pytest.mark.parametrize("loss_fn", [None, "softmax_cross_entropy", toolkit.softmax_cross_entropy])
def test_one_logit_with_softmax_cross_entropy_is_refused(loss_fn):
    x, y = _binary()
    with pytest.raises(ToolkitError, match="one output .*sigmoid_binary_cross_entropy"):
        toolkit.fit(nnx.Linear(5, 1, rngs=nnx.Rngs(0)), (x, y), loss_fn=loss_fn,
                    optimizer=toolkit.optimizer("sgd", lr=0.1), **KW)  # fmt: skip


def test_one_logit_with_the_sigmoid_loss_learns_and_is_scored_by_sign():
    x, y = _binary()
    result = toolkit.fit(
        nnx.Linear(5, 1, rngs=nnx.Rngs(0)), (x, y), eval_data=(x, y),
        loss_fn="sigmoid_binary_cross_entropy", optimizer=toolkit.optimizer("sgd", lr=0.5),
        **{**KW, "epochs": 3},
    )  # fmt: skip
    assert result.config.loss == "sigmoid_binary_cross_entropy"
    # The sign of x[:, 0] decides the label: a few noisy steps already beat the base rate
    # (0.5 +- 0.06 here) by far; 0.0 would be the argmax-of-one-column bug.
    assert result.history[-1].metrics["test_accuracy"] > 0.75
