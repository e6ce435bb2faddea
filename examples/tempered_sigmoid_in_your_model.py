"""A tempered sigmoid inside your own model, as an NNX layer with the paper's (s, T, o).

    python examples/tempered_sigmoid_in_your_model.py --limit 6000 --epochs 2

phi(x) = s * sigmoid(T x) - o (eq. 3 of Papernot et al.); (2, 2, 1) is tanh. The range
(-o, s - o) bounds every activation, which is what keeps per-example gradient norms
small and clipping gentle. The script trains the same MLP with two triplets at the same
eps and prints their accuracy and the mean pre-clip gradient norm of the last epoch.
"""

import argparse

import optax
from flax import nnx

import toolkit
from toolkit.data import load_dataset, to_float


class TemperedSigmoid(nnx.Module):
    """phi_{s,T,o} as a layer (no parameters; s, T, o are fixed hyperparameters)."""

    def __init__(self, scale: float, inverse_temp: float, offset: float):
        self.scale, self.inverse_temp, self.offset = scale, inverse_temp, offset

    def __call__(self, x):
        return toolkit.tempered_sigmoid(
            x, scale=self.scale, inverse_temp=self.inverse_temp, offset=self.offset
        )


class MLP(nnx.Module):
    def __init__(self, act: TemperedSigmoid, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(784, 128, rngs=rngs)
        self.act = act
        self.fc2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x.reshape(x.shape[0], -1))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=6000, help="training examples used")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    data = load_dataset("fashion-mnist")
    train = (to_float(data.train_images[: args.limit]), data.train_labels[: args.limit])
    test = (to_float(data.test_images), data.test_labels)
    for triplet in ((2.0, 2.0, 1.0), (1.58, 3.0, 0.71)):  # tanh; a Figure-2 style triplet
        model = MLP(TemperedSigmoid(*triplet), nnx.Rngs(0))
        result = toolkit.fit(
            model, train, optimizer=optax.sgd(2.0, momentum=0.9),
            batch_size=512, epochs=args.epochs, clip_norm=0.1, target_epsilon=2.7, eval_data=test,
        )  # fmt: skip
        last = result.history[-1]
        print(
            f"(s, T, o) = {triplet}: test accuracy {last.test_accuracy:.4f}, "
            f"eps {result.epsilon['rdp-classic']:.3f} (rdp-classic); mean pre-clip norm "
            f"{last.grad_norm.mean:.3f} (training data, no noise: not covered by eps)"
        )


if __name__ == "__main__":
    main()
