"""The paper's CNNs in Flax NNX, with the activation injected (Tables 1 and 2).

No batch norm anywhere: it mixes examples within a batch, so a per-example
gradient would depend on the other examples and per-example clipping would no
longer bound one example's influence.

Weights use Glorot-uniform kernels and zero biases, the Keras defaults of the
TensorFlow Privacy setup the paper trained with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from toolkit.activations import Activation, ActivationSpec
from toolkit.errors import ToolkitError

_KERNEL_INIT = nnx.initializers.glorot_uniform()


def _conv(cin: int, cout: int, k: int, stride: int, padding: str, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin, cout, (k, k), strides=stride, padding=padding, kernel_init=_KERNEL_INIT, rngs=rngs
    )


class MnistCNN(nnx.Module):
    """Table 1: the MNIST / Fashion-MNIST CNN, 26,010 parameters.

    Conv 16 8x8/2 SAME -> act -> MaxPool 2x2/1 -> Conv 32 4x4/2 VALID -> act ->
    MaxPool 2x2/1 -> flatten (4*4*32) -> Dense 32 -> act -> Dense 10.
    Spatial sizes 28 -> 14 -> 13 -> 5 -> 4.
    """

    def __init__(self, activation: Activation, *, rngs: nnx.Rngs, num_classes: int = 10):
        self.act = activation
        self.conv1 = _conv(1, 16, 8, 2, "SAME", rngs)
        self.conv2 = _conv(16, 32, 4, 2, "VALID", rngs)
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

    def __init__(self, activation: Activation, *, rngs: nnx.Rngs, num_classes: int = 10):
        self.act = activation
        widths = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]
        self.convs = nnx.List([_conv(cin, cout, 3, 1, "SAME", rngs) for cin, cout in widths])
        self.head = _conv(256, num_classes, 3, 1, "SAME", rngs)

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


def build_model(dataset: str, activation: ActivationSpec, *, seed: int) -> nnx.Module:
    """The paper's model for `dataset`, initialised from `seed`."""
    if dataset not in _MODELS:
        raise ToolkitError(f"dataset={dataset!r} is unknown; expected one of {', '.join(_MODELS)}.")
    return _MODELS[dataset](activation.build(), rngs=nnx.Rngs(params=seed))


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
