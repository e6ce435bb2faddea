"""The paper's CNNs in Flax NNX, with the activation injected (Tables 1 and 2).

No batch norm anywhere: it mixes examples within a batch, so a per-example
gradient would depend on the other examples and per-example clipping would no
longer bound one example's influence.

Weights use Glorot-uniform kernels and zero biases, the Keras defaults of the
TensorFlow Privacy setup the paper trained with. `build_model` and `build_paper_cnn`
initialise a model under one `jax.jit`, one compilation per architecture instead of one
per eager operation and kernel shape (issue 23: 4.7 s of a 1-epoch run's start-up went
there); the numbers are those of the eager construction, bit for bit.

`weight_standardization=True` (issue 12, a lever beyond the paper) reparameterises
every convolution kernel by scaled weight standardisation (Qiao et al. 2019, "Micro-Batch
Training with Batch-Channel Normalization and Weight Standardization"; the scaled form
of Brock et al. 2021, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets", as used for DP-SGD by De et al. 2022): per output channel,
`W_hat = (W - mean(W)) / (std(W) sqrt(fan_in))`. It normalises the weights, never the
activations, so examples stay independent, and it adds no parameter (26,010 stay
26,010). The layer contracts through its `conv_general_dilated` hook with the kernel
`kernel_transform(kernel)`, as book-keeping (`toolkit.grads`) expects of a convolution
whose kernel is reparameterised.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from toolkit.base import ToolkitError
from toolkit.nn._activations import Activation, ActivationSpec


def _glorot_uniform(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """`nnx.initializers.glorot_uniform()`, the same numbers: U(-1, 1) * sqrt(3 / fan_avg).

    The uniform bits are drawn as one flat vector and reshaped. JAX's threefry bits are a
    function of each element's row-major index, so they equal those of a draw of `shape`
    (both `jax_threefry_partitionable` settings), and the arithmetic is JAX's own line by
    line; but XLA:CPU compiles a flat draw in about a fifth of the time of a 4-D one.
    """
    shape = tuple(shape)
    receptive = math.prod(shape) / shape[-2] / shape[-1]  # in_axis=-2, out_axis=-1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    variance = jnp.array(1.0 / ((fan_in + fan_out) / 2), dtype=dtype)
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, -1)
    return flat.reshape(shape) * jnp.sqrt(3 * variance)


_KERNEL_INIT = _glorot_uniform


_WS_EPS = 1e-4  # keeps W_hat finite for a constant filter; tiny against std at init (~0.05)


def standardize_kernel(kernel: jax.Array) -> jax.Array:
    """Scaled weight standardisation of an HWIO kernel, per output channel (last axis)."""
    axes = tuple(range(kernel.ndim - 1))
    fan_in = math.prod(kernel.shape[:-1])
    centred = kernel - jnp.mean(kernel, axis=axes, keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=axes, keepdims=True) + _WS_EPS**2)
    return centred / (std * math.sqrt(fan_in))


class WSConv(nnx.Module):
    """A 2-D convolution whose kernel is weight-standardised at every call.

    Same parameters (`kernel` HWIO, `bias`) and initialisation as `nnx.Conv`; NHWC input.
    Like `nnx.Conv` it contracts through its `conv_general_dilated` attribute, here with
    the kernel `kernel_transform(kernel)`: the hook book-keeping taps.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: str, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_KERNEL_INIT(rngs.params(), (k, k, cin, cout)))
        # A key for the (zero) bias too, as nnx.Conv draws one: the later layers then get
        # the same initial weights as in the plain CNN of the same seed.
        self.bias = nnx.Param(nnx.initializers.zeros_init()(rngs.params(), (cout,)))
        self.stride, self.padding = stride, padding
        self.kernel_transform = standardize_kernel
        self.conv_general_dilated = jax.lax.conv_general_dilated

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel_transform(self.kernel[...])
        dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
        y = self.conv_general_dilated(
            x, kernel, (self.stride, self.stride), self.padding, dimension_numbers=dims
        )
        return y + self.bias[...].reshape((1,) * (y.ndim - 1) + (-1,))


def _conv(
    cin: int, cout: int, k: int, stride: int, padding: str, rngs: nnx.Rngs, ws: bool = False
) -> nnx.Module:
    if ws:
        return WSConv(cin, cout, k, stride, padding, rngs)
    return nnx.Conv(
        cin, cout, (k, k), strides=stride, padding=padding, kernel_init=_KERNEL_INIT, rngs=rngs
    )


class MnistCNN(nnx.Module):
    """Table 1: the MNIST / Fashion-MNIST CNN, 26,010 parameters.

    Conv 16 8x8/2 SAME -> act -> MaxPool 2x2/1 -> Conv 32 4x4/2 VALID -> act ->
    MaxPool 2x2/1 -> flatten (4*4*32) -> Dense 32 -> act -> Dense 10.
    Spatial sizes 28 -> 14 -> 13 -> 5 -> 4.
    """

    def __init__(
        self,
        activation: Activation,
        *,
        rngs: nnx.Rngs,
        num_classes: int = 10,
        weight_standardization: bool = False,
    ):
        self.act = activation
        self.conv1 = _conv(1, 16, 8, 2, "SAME", rngs, weight_standardization)
        self.conv2 = _conv(16, 32, 4, 2, "VALID", rngs, weight_standardization)
        self.fc1 = nnx.Linear(4 * 4 * 32, 32, kernel_init=_KERNEL_INIT, rngs=rngs)
        self.fc2 = nnx.Linear(32, num_classes, kernel_init=_KERNEL_INIT, rngs=rngs)

    def first_activation(self, x: jax.Array) -> jax.Array:
        """Output of the first conv layer after the activation (Figure 5), (B, 14, 14, 16)."""
        return self.act(self.conv1(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, 10) for images (B, 28, 28, 1) in [0, 1]."""
        x = nnx.max_pool(self.first_activation(x), (2, 2), strides=(1, 1), padding="VALID")
        x = self.act(self.conv2(x))
        x = nnx.max_pool(x, (2, 2), strides=(1, 1), padding="VALID")
        x = x.reshape(x.shape[0], -1)
        return self.fc2(self.act(self.fc1(x)))


class Cifar10CNN(nnx.Module):
    """Table 2: the CIFAR-10 CNN, 605,226 parameters.

    [Conv 32 3x3, Conv 32 3x3] -> AvgPool 2x2/2 -> [Conv 64 x2] -> AvgPool ->
    [Conv 128 x2] -> AvgPool -> Conv 256 3x3 -> Conv 10 3x3 -> mean over space.
    All convolutions stride 1, SAME; activation after every conv but the last.
    """

    def __init__(
        self,
        activation: Activation,
        *,
        rngs: nnx.Rngs,
        num_classes: int = 10,
        weight_standardization: bool = False,
    ):
        self.act = activation
        ws = weight_standardization
        widths = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]
        self.convs = nnx.List([_conv(ci, co, 3, 1, "SAME", rngs, ws) for ci, co in widths])
        self.head = _conv(256, num_classes, 3, 1, "SAME", rngs, ws)

    def first_activation(self, x: jax.Array) -> jax.Array:
        """Output of the first conv layer after the activation (Figure 5), (B, 32, 32, 32)."""
        return self.act(self.convs[0](x))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, 10) for images (B, 32, 32, 3) in [0, 1]."""
        x = self.first_activation(x)
        for i, conv in enumerate(self.convs[1:], start=1):
            x = self.act(conv(x))
            if i in (1, 3, 5):  # after each pair of convolutions
                x = nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return jnp.mean(self.head(x), axis=(1, 2))


_MODELS = {"mnist": MnistCNN, "fashion-mnist": MnistCNN, "cifar10": Cifar10CNN}
# "paper-cnn" picks the paper's CNN by the input shape (H, W, C) of the data.
PAPER_CNNS = {(28, 28, 1): MnistCNN, (32, 32, 3): Cifar10CNN}


def build_model(
    dataset: str, activation: ActivationSpec, *, seed: int, weight_standardization: bool = False
) -> nnx.Module:
    """The paper's model for `dataset`, initialised from `seed`."""
    if dataset not in _MODELS:
        raise ToolkitError(f"dataset={dataset!r} is unknown; expected one of {', '.join(_MODELS)}.")
    return _initialised(_MODELS[dataset], activation, seed, weight_standardization)


def build_paper_cnn(
    input_shape: tuple[int, ...],
    activation: ActivationSpec,
    *,
    seed: int,
    weight_standardization: bool = False,
) -> nnx.Module:
    """The paper's CNN for images of `input_shape` (28x28x1 or 32x32x3), from `seed`."""
    shape = tuple(int(d) for d in input_shape)
    if shape not in PAPER_CNNS:
        raise ToolkitError(
            f"model='paper-cnn' takes images of shape 28x28x1 (MNIST's CNN) or 32x32x3 "
            f"(CIFAR-10's); the data has inputs of shape {shape}: pass your own --model."
        )
    return _initialised(PAPER_CNNS[shape], activation, seed, weight_standardization)


def _initialised(cls, activation: ActivationSpec, seed: int, ws: bool) -> nnx.Module:
    """`cls(activation.build(), rngs=nnx.Rngs(params=seed), weight_standardization=ws)`,
    built under one jit: the same parameters, one compilation per (cls, activation, ws)."""
    return _init_fn(cls, activation, ws)(jax.random.key(seed))  # nnx.Rngs' key of an int seed


@functools.lru_cache(maxsize=32)
def _init_fn(cls, activation: ActivationSpec, ws: bool):
    @nnx.jit
    def init(key: jax.Array) -> nnx.Module:
        return cls(activation.build(), rngs=nnx.Rngs(params=key), weight_standardization=ws)

    return init


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
