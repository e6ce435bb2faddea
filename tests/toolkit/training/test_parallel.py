"""Data-parallel DP-SGD over local devices gives the single-device update for the same key.

The batch axis of the micro-batch (`idx`, `mask`) is sharded over a 1-D mesh,
params and data are replicated; XLA partitions the per-example work and
all-reduces the clipped sum, and the noise is drawn once, replicated, from the
one key. Two CPU devices need `--xla_force_host_platform_device_count=2`
before JAX starts, hence a subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import REPO

F32_EPS = float(np.finfo(np.float32).eps)

_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from toolkit.training import _dpsgd as dpsgd

    class Small(nnx.Module):  # the MNIST CNN's layer kinds, at a size that compiles fast
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 4, (4, 4), strides=2, padding="SAME", rngs=rngs)
            self.conv2 = nnx.Conv(4, 6, (3, 3), padding="SAME", rngs=rngs)
            self.fc = nnx.Linear(4 * 4 * 6, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(jnp.tanh(self.conv1(x)), (2, 2), strides=(2, 2))
            x = jnp.tanh(self.conv2(x))
            return self.fc(x.reshape(x.shape[0], -1))

    assert jax.device_count() == 2, jax.devices()
    graphdef, params = nnx.split(Small(nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((20, 16, 16, 1), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 20))
    idx = jnp.asarray([3, 1, 4, 15, 9, 2, 6, 5], jnp.int32)
    mask = jnp.asarray([True] * 7 + [False])
    mech = dpsgd.Mechanism(clip_norm=0.1, noise_multiplier=1.1)
    opt = optax.sgd(0.5)
    key = jax.random.key(7)
    tx = mech.privatized(opt, expected_batch_size=8.0, key=key)
    update = dpsgd.make_update(tx)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep, bat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    out = {}
    for impl in ("bookkeeping", "vmap"):
        acc = dpsgd.make_accumulate(graphdef, mech, implementation=impl)
        zeros = dpsgd.zeros_like(params)
        one, _, _ = acc(params, zeros, images, labels, idx, mask)
        new_one, _ = update(params, tx.init(params), one)

        put = lambda t, s: jax.device_put(t, s)
        p_r = put(params, rep)
        summed, norms, _ = acc(p_r, put(zeros, rep), put(images, rep), put(labels, rep),
                               put(idx, bat), put(mask, bat))
        new_two, _ = update(p_r, put(tx.init(params), rep), summed)
        leaves = lambda t: np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(t)])
        out[impl] = {
            "norms_sharded": norms.sharding.is_equivalent_to(bat, 1),
            "sum_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(summed)),
            "sum_one": leaves(one).tolist(), "sum_two": leaves(summed).tolist(),
            "params_one": leaves(new_one).tolist(), "params_two": leaves(new_two).tolist(),
            "params_before": leaves(params).tolist(),
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def two_device_run():
    root = str(REPO)
    proc = _two_devices([sys.executable, "-c", _SCRIPT], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# XLA bug (jax/jaxlib 0.10.2, CPU): jax.vmap of a convolution's kernel gradient over a
# batch-sharded input returns wrong gradients for every example off the first shard;
# benchmarks/xla_sharded_vmap_conv_repro.py reproduces it in ten lines. The book-keeping
# path never forms that grouped convolution and is exact.
_VMAP_BUG = pytest.mark.xfail(strict=True, reason="XLA SPMD bug: vmap'd conv kernel grads")


@pytest.mark.parametrize("impl", ["bookkeeping", pytest.param("vmap", marks=_VMAP_BUG)])
def test_sharded_step_equals_single_device_step(two_device_run, impl):
    r = {k: np.asarray(v) if isinstance(v, list) else v for k, v in two_device_run[impl].items()}
    assert r["norms_sharded"], "per-example norms should stay sharded over the batch axis"
    assert r["sum_replicated"]
    # The clipped sum: 7 terms of norm <= 0.1, added in another order (two partial sums).
    np.testing.assert_allclose(r["sum_two"], r["sum_one"], rtol=0, atol=16 * F32_EPS * 7 * 0.1)
    # One noise draw: std 1.1 * 0.1 * lr 0.5 / 8 ~ 7e-3 per coordinate, far above rounding,
    # so a separate draw per device would differ by ~1e-2 where we allow 1e-6.
    step = r["params_one"] - r["params_before"]
    assert np.std(step) > 1e-3
    np.testing.assert_allclose(r["params_two"], r["params_one"], rtol=0, atol=1e-6)


def _two_devices(cmd: list[str], root: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    return subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)


def test_train_on_two_devices_matches_one_device(tiny_data_dir, tmp_path):
    """`toolkit train` shards every micro-batch over the local devices with no flag.

    Same seed, same sampled batches, same noise key: the runs differ only in the
    order of float32 additions in the clipped sum (two partial sums), ~1e-7
    relative per step; over 20 steps with lr 0.5 we saw 4.5e-8 (allowed: 1e-4),
    while one extra or missing example or noise draw moves parameters by > 1e-3.
    """
    from toolkit.runs import RunConfig, rundir
    from toolkit.training import train

    root = str(REPO)
    args = dict(
        dataset="fashion-mnist", data_dir=str(tiny_data_dir), epochs=2, batch_size=60, lr=0.5,
        clip_norm=1.0, noise_multiplier=0.8, seed=3, max_physical_batch=40,
    )  # fmt: skip
    script = (
        "import json, sys, jax; from pathlib import Path\n"
        "from toolkit.runs import RunConfig; from toolkit.training import train\n"
        "assert jax.local_device_count() == 2\n"
        "train(RunConfig(**json.loads(sys.argv[1])), out=Path(sys.argv[2]))\n"
    )
    proc = _two_devices(
        [sys.executable, "-c", script, json.dumps(args), str(tmp_path / "two")], root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(RunConfig(**args), out=tmp_path / "one").history
    two = rundir.read_epochs(tmp_path / "two")
    assert [r.per_example_grads for r in two] == ["bookkeeping"] * 2
    for a, b in zip(one, two, strict=True):
        assert a.batch_size_mean == b.batch_size_mean  # the same Poisson batches
        assert a.epsilon == b.epsilon
        np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-4)
        assert abs(a.test_accuracy - b.test_accuracy) <= 1 / 200  # at most one flip
    with (
        np.load(tmp_path / "one" / "checkpoint.npz") as z1,
        np.load(tmp_path / "two" / "checkpoint.npz") as z2,
    ):
        leaves = [k for k in z1.files if k.startswith("tree/params")]
        for k in leaves:
            np.testing.assert_allclose(z1[k], z2[k], rtol=0, atol=1e-4)


_PER_EXAMPLE_FORWARD = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from tests.zoo import ZOO
    from toolkit.grads import Augmult, make_clipped_grad

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep, bat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    out = {}
    for name in ("groupnorm", "augmult", "dropout"):
        make, data = ZOO[name]
        graphdef, params, state = nnx.split(make(), nnx.Param, ...)
        x, y = (jnp.asarray(v) for v in data(8))
        keys = jax.random.split(jax.random.key(1), 8)
        fn = make_clipped_grad(graphdef, augment=Augmult(2) if name == "augmult" else None)
        step = jax.jit(lambda p, s, x, y, k: fn(p, x, y, lambda n: jnp.minimum(1.0, 0.1 / n), s, k))
        one = step(params, state, x, y, keys)
        two = step(*(jax.device_put(t, rep) for t in (params, state)),
                   *(jax.device_put(t, bat) for t in (x, y, keys)))
        out[name] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)))
    print(json.dumps(out))
    """
)


def test_sharded_per_example_forward_equals_one_device():
    """Models whose book-keeping forward runs per example (free parameters, views, dropout
    keys) under jax.vmap: no kernel gradient is vmap'd there, so unlike the vmap path it is
    exact on a batch-sharded input. Tolerance: 8 clipped terms of norm <= 0.1 summed in two
    partial sums (~1e-7 measured); the XLA bug moves results by O(0.1)."""
    proc = _two_devices([sys.executable, "-c", _PER_EXAMPLE_FORWARD], str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert max(errors.values()) <= 16 * F32_EPS * 8 * 0.1, errors
