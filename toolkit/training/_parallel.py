"""Data parallelism over the local devices of one host, for the DP-SGD step.

The micro-batch's example indices and mask are sharded over a 1-D mesh of
all local devices ("data" axis); parameters, optimizer state and the data set
are replicated. Under `jax.jit`, XLA then partitions the per-example work by
example and all-reduces the clipped sum, so every device holds the same sum;
the noise is drawn once, from the one step key, on that replicated sum. The
privacy analysis is unchanged: it is the same mechanism, computed in parts.

With one device everything here is the identity, so single-device runs are
bit-for-bit what they were. On several hosts, call `jax.distributed.initialize()`
first (see README): `jax.devices()` then spans all hosts, but this module shards
over `jax.local_devices()` only, so each host runs its own data-parallel copy.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class DataParallel:
    """Shard the batch axis over `devices` (default: all local devices)."""

    def __init__(self, devices: list | None = None):
        self.devices = list(devices if devices is not None else jax.local_devices())
        self.size = len(self.devices)
        if self.size > 1:
            mesh = Mesh(np.array(self.devices), ("data",))
            self._replicated = NamedSharding(mesh, PartitionSpec())
            self._batch = NamedSharding(mesh, PartitionSpec("data"))

    def round_up(self, physical: int) -> int:
        """The smallest micro-batch size >= `physical` that splits evenly over the devices."""
        return self.size * math.ceil(physical / self.size)

    def replicate(self, tree):
        return tree if self.size == 1 else jax.device_put(tree, self._replicated)

    def shard_batch(self, tree):
        """Split the leading (example) axis of every leaf across the devices."""
        return tree if self.size == 1 else jax.device_put(tree, self._batch)
