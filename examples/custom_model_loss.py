"""Your own model and loss under DP-SGD: a small CNN with GroupNorm and a focal loss.

    python examples/custom_model_loss.py --limit 6000 --epochs 2

GroupNorm normalises each example on its own (BatchNorm would mix examples and is
refused); its scale and bias are parameters outside Linear/Conv layers, which the
book-keeping path gives one copy per example (the pre-training check picks it). The focal
loss (Lin et al. 2017) returns one loss per example, as `toolkit.fit` requires.
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import toolkit
from toolkit.data import load_dataset, to_float


class SmallCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 8, (5, 5), strides=2, rngs=rngs)
        self.norm = nnx.GroupNorm(8, num_groups=4, rngs=rngs)
        self.head = nnx.Linear(14 * 14 * 8, 10, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.norm(self.conv(x)))
        return self.head(h.reshape(h.shape[0], -1))


def focal_loss(logits, labels, gamma=2.0):
    """-(1 - p_y)^gamma log p_y per example: down-weights examples already fitted."""
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    return -((1 - jnp.exp(log_p)) ** gamma) * log_p


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=6000, help="training examples used")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    data = load_dataset("fashion-mnist")
    train = (to_float(data.train_images[: args.limit]), data.train_labels[: args.limit])
    result = toolkit.fit(
        SmallCNN(nnx.Rngs(0)), train, loss_fn=focal_loss, optimizer=optax.sgd(1.0, momentum=0.9),
        batch_size=256, epochs=args.epochs, clip_norm=0.5, target_epsilon=3.0, accountant="pld",
        eval_data=(to_float(data.test_images), data.test_labels), progress=True,
    )  # fmt: skip
    last = result.history[-1]
    print(f"per-example gradients: {last.per_example_grads} (chosen on training examples: "
          "not covered by eps)")  # fmt: skip
    print(f"test accuracy {last.test_accuracy:.4f}, sigma {result.config.noise_multiplier:.3f}")
    for name, eps in result.epsilon.items():
        print(f"eps ({name}) = {eps:.3f} at delta = 1e-5")


if __name__ == "__main__":
    main()
