"""The small private `RunConfig` that the training tests start from."""

from __future__ import annotations

from toolkit.runs import RunConfig


def tiny_config(data_dir, **overrides) -> RunConfig:
    """Fashion-MNIST-shaped, 2 epochs of B=60, sigma 0.8, C 1; `overrides` replace fields."""
    base = dict(
        dataset="fashion-mnist", data_dir=str(data_dir), epochs=2, batch_size=60, lr=0.5,
        clip_norm=1.0, noise_multiplier=0.8, seed=3, max_physical_batch=64,
    )  # fmt: skip
    return RunConfig(**{**base, **overrides})
