"""Data parallelism over the devices of one host, or of several processes, for the DP-SGD step.

The micro-batch's example indices and mask are sharded over a 1-D mesh of
devices ("data" axis); parameters, optimizer state and the data set are
replicated. Under `jax.jit`, XLA then partitions the per-example work by
example and all-reduces the clipped sum, so every device holds the same sum;
the noise is drawn once, from the one step key, on that replicated sum. The
privacy analysis is unchanged: it is the same mechanism, computed in parts.

With one device everything here is the identity, so single-device runs are
bit-for-bit what they were. Over several processes (`toolkit.training._distributed`)
the mesh spans `jax.devices()` of all of them: every process holds the same values,
places its own devices' part of each array (`replicate`, `shard_batch`), gathers the
per-example statistics from all (`to_host`), and hands code outside the jitted step
its own copy of the replicated results (`local`).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toolkit.base import ToolkitError


class DataParallel:
    """Shard the batch axis over `devices` (default: all local devices)."""

    def __init__(self, devices: list | None = None):
        self.devices = list(devices if devices is not None else jax.local_devices())
        self.size = len(self.devices)
        # Devices of several processes: every process runs this code on the same values.
        self.multiprocess = len({d.process_index for d in self.devices}) > 1
        if self.size > 1:
            mesh = Mesh(np.array(self.devices), ("data",))
            self._replicated = NamedSharding(mesh, PartitionSpec())
            self._batch = NamedSharding(mesh, PartitionSpec("data"))

    @classmethod
    def of_run(cls, implementation: str) -> DataParallel:
        """The devices a run's step shards over, for its per-example `implementation`.

        One process: all local devices on the book-keeping path, one device under vmap
        (XLA 0.10 returns wrong vmap'd convolution kernel gradients on batch-sharded
        inputs; benchmarks/README.md). Several processes: all devices of all of them,
        book-keeping only (the same bug; a process cannot run alone on one device).
        """
        if jax.process_count() == 1:
            return cls() if implementation == "bookkeeping" else cls(jax.devices()[:1])
        if implementation != "bookkeeping":
            raise ToolkitError(
                f"training over {jax.process_count()} processes shards every micro-batch, "
                f"which the {implementation} per-example path cannot (an XLA bug with vmap'd "
                "convolutions, benchmarks/README.md); this run needs vmap (a layer without a "
                "book-keeping rule, or --per-example vmap): train it in one process."
            )
        return cls(jax.devices())

    def round_up(self, physical: int) -> int:
        """The smallest micro-batch size >= `physical` that splits evenly over the devices."""
        return self.size * math.ceil(physical / self.size)

    def replicate(self, tree):
        if self.size == 1:
            return tree
        if not self.multiprocess:
            return jax.device_put(tree, self._replicated)
        return jax.tree.map(self._replicated_key_or_array, tree)

    def _replicated_key_or_array(self, x):
        # device_put places a host value held by every process on the global mesh, and
        # checks that it is the same in every process (one noise key, hence one noise
        # draw); typed PRNG keys go as their key data.
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), self._replicated)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x) if isinstance(x, jax.Array) else x, self._replicated)

    def shard_batch(self, tree):
        """Split the leading (example) axis of every leaf across the devices.

        Over several processes each process holds the whole micro-batch (the same
        sampled indices everywhere) and places only the rows of its own devices.
        """
        if self.size == 1:
            return tree
        if not self.multiprocess:
            return jax.device_put(tree, self._batch)
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(x.shape, self._batch, lambda i: x[i]), tree
        )

    def to_host(self, x) -> np.ndarray:
        """A per-example output of the step (sharded over the batch) as one host array."""
        if not self.multiprocess:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def local(self, tree):
        """This process's copy of replicated arrays, for code outside the jitted step.

        Over several processes an eager operation on a global array is a collective that
        every process must run; metric hooks, checkpoints and the returned model work on
        this process's own copy instead. Otherwise the identity.
        """
        if not self.multiprocess:
            return tree
        return jax.tree.map(lambda x: x.addressable_data(0), tree)
