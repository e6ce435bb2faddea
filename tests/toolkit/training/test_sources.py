"""What a run is built from (`toolkit.training._sources`) and what its summary keeps: a
factory that raises is one line; models and losses that cannot be hashed still train
(the pre-training checks cache by model and loss); a summary drops a held-out loss only
where it keeps that split's accuracy."""

from __future__ import annotations

import dataclasses

import numpy as np
import optax
import pytest
from flax import nnx

import toolkit
from toolkit.base import ToolkitError
from toolkit.runs import RunConfig
from toolkit.training._sources import Objects, build_model

KW = dict(batch_size=16, epochs=1, clip_norm=1.0, noise_multiplier=0.5,
          optimizer=toolkit.optimizer("sgd", lr=0.1))  # fmt: skip


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


def _boom(*, rngs):
    raise RuntimeError("no weights file here\nsecond line")


def test_a_factory_that_raises_is_one_line_naming_the_model():
    cfg = RunConfig(model="tests.toolkit.training.test_sources:_boom", activation=None)
    with pytest.raises(ToolkitError) as info:
        build_model(cfg, None, Objects(), np.zeros(2, np.uint32))
    message = str(info.value)
    assert "model='tests.toolkit.training.test_sources:_boom'" in message
    assert "RuntimeError: no weights file here" in message and "\n" not in message


@dataclasses.dataclass  # mutable, so unhashable: the checks' cache must not need a hash
class WeightedXent:
    weight: float = 1.0

    def __call__(self, logits, labels):
        return self.weight * optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class WithDict(nnx.Module):
    def __init__(self, rngs):
        self.settings = {"width": 3}  # a plain dict: static data of the graph, unhashable
        self.fc = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.fc(x)


def test_unhashable_losses_and_models_train():
    x, y = _data()
    with pytest.raises(TypeError):
        hash(WeightedXent())
    a = toolkit.fit(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), (x, y), loss_fn=WeightedXent(), **KW)
    b = toolkit.fit(WithDict(nnx.Rngs(0)), (x, y), **KW)
    assert np.isfinite(a.history[-1].train_loss) and np.isfinite(b.history[-1].train_loss)


def test_summary_keeps_a_loss_without_accuracy_and_drops_one_with_it():
    x, y = _data()

    def hook(ctx):
        return {"probe_loss": 1.5}  # a user's metric: kept whatever its name

    classified = toolkit.fit(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), (x, y), eval_data=(x, y),
                             metrics=[hook], **KW)  # fmt: skip
    assert "test_accuracy" in classified.summary.metrics
    assert "test_loss" not in classified.summary.metrics  # in epochs.jsonl, beside accuracy
    assert classified.summary.metrics["probe_loss"] == 1.5
    plain = toolkit.fit(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), (x, y), eval_data=(x, y),
                        classification=False, **KW)  # fmt: skip
    # No accuracy: the held-out loss is the summary's only held-out number, so it stays.
    assert plain.summary.metrics["test_loss"] == plain.history[-1].metrics["test_loss"]
