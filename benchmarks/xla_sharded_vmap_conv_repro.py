"""Minimal reproduction: vmap'd conv kernel gradients are wrong on a batch-sharded input.

Seen with jax/jaxlib 0.10.2 on CPU with two host devices. Run from the repository root:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python benchmarks/xla_sharded_vmap_conv_repro.py

Expected all zeros; prints large errors for the examples on the second device.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

mesh = Mesh(np.array(jax.devices()), ("data",))
x = jnp.asarray(np.random.default_rng(0).random((4, 6, 6, 2), np.float32))
k = jnp.ones((3, 3, 2, 3), jnp.float32)


def per_example_kernel_grads(k, x):
    def f(k, xi):
        y = jax.lax.conv_general_dilated(
            xi[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y**2)

    return jax.vmap(jax.grad(f), in_axes=(None, 0))(k, x)


if __name__ == "__main__":
    f = jax.jit(per_example_kernel_grads)
    one = f(k, x)
    two = f(
        jax.device_put(k, NamedSharding(mesh, PartitionSpec())),
        jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))),
    )
    err = np.abs(np.asarray(one) - np.asarray(two)).reshape(len(x), -1).max(axis=1)
    print(f"jax {jax.__version__}, {jax.device_count()} devices; max |single - sharded|:", err)
