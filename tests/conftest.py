"""Shared fixtures: a tiny Fashion-MNIST-shaped dataset in the canonical gzip IDX format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

# Strict numerics, as equinox's tests run: no implicit rank broadcasting anywhere, and no
# silent dtype promotion (float32 + float64, int + float) in every test not marked
# `standard_promotion`. A promotion our code relies on must be written out (`astype`,
# `[None]`), so a float64 that sneaks into a float32 path fails here. The marked tests
# run library code that promotes internally: flax's `avg_pool` (int window size / float
# sum, the CIFAR-10 CNN) and optax's `adam` (float ** int32 step count).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    if request.node.get_closest_marker("standard_promotion"):
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip IDX file (magic 0x0000_08_ndim, big-endian dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_mnist_like(directory: Path, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Class-dependent blobs (learnable), 28x28, 10 classes, written as the four IDX files."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    templates = rng.integers(0, 256, size=(10, 28, 28))
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.integers(-60, 60, size=(n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A 600/200-example dataset directory, usable as --data-dir for (fashion-)mnist."""
    return make_mnist_like(tmp_path_factory.mktemp("data"), n_train=600, n_test=200)
