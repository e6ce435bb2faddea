"""The lower-level API alone: pre-clip per-example gradient norms, then DP-SGD by hand.

    python examples/preclip_norms.py --limit 2048 --epochs 2

`toolkit.grads._per_example` gives, for one batch, the clipped sum, every example's pre-clip
gradient norm and loss; the fraction of norms above C is how much clipping biases the
step (Theorem 1 is about exactly this). Then a few DP-SGD steps from the pieces:
`gaussian_privatizer` chained before an optax optimizer, Poisson batches, and
`PrivacyParams` for the eps of the steps actually taken.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import toolkit
from toolkit.data import load_dataset, to_float
from toolkit.nn import ActivationSpec, build_model
from toolkit.privacy import PoissonSampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=2048, help="training examples used")
    p.add_argument("--epochs", type=int, default=2, help="epochs of N // B Poisson steps")
    args = p.parse_args()
    data = load_dataset("fashion-mnist")
    x = jnp.asarray(to_float(data.train_images[: args.limit]))
    y = jnp.asarray(data.train_labels[: args.limit])

    model = build_model("fashion-mnist", ActivationSpec("tanh"), seed=0)  # Table 1's CNN
    graphdef, params, state = toolkit.split_model(model)
    clip = toolkit.clipped_grad(graphdef, clip_norm=0.1).checked(params, state, x, y)
    grad = jax.jit(lambda p, xb, yb: clip(p, state, xb, yb))
    norms = np.asarray(grad(params, x[:256], y[:256]).norms)
    print(f"{clip.implementation}: pre-clip norms on 256 examples at initialisation "
          "(training data without noise: not covered by eps)")  # fmt: skip
    print("  quantiles 10/50/90%:", np.round(np.quantile(norms, [0.1, 0.5, 0.9]), 3))
    for c in (0.1, 1.0, 10.0):
        print(f"  fraction clipped at C = {c:g}: {np.mean(norms > c):.2f}")

    batch, sigma = 256, 1.1
    privacy = toolkit.PrivacyParams(
        num_examples=len(y),
        batch_size=batch,
        epochs=args.epochs,
        noise_multiplier=sigma,
    )
    tx = optax.chain(
        toolkit.gaussian_privatizer(noise_multiplier=sigma, sensitivity=clip.sensitivity,
                                    expected_batch_size=batch, key=jax.random.key(0)),
        optax.sgd(2.0, momentum=0.9),
    )  # fmt: skip
    opt_state = tx.init(params)
    sampler = PoissonSampler(len(y), privacy.sampling_prob, seed=0)
    for t in range(privacy.steps):
        idx = sampler.indices(t)
        out = grad(params, x[idx], y[idx])  # one shape per batch size: fine for a demo
        updates, opt_state = tx.update(out.clipped_sum, opt_state, params)
        params = optax.apply_updates(params, updates)
    print(f"after {privacy.steps} steps: mean pre-clip norm {float(jnp.mean(out.norms)):.3f} "
          "(last batch, no noise: not covered by eps)")  # fmt: skip
    for name, eps in privacy.epsilons().items():
        print(f"eps ({name}) = {eps:.3f} at delta = {privacy.delta:g}")


if __name__ == "__main__":
    main()
