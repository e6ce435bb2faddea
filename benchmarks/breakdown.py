"""Where the DP step's time goes: XLA's flop and byte counts against measured time.

    python -m benchmarks.breakdown            # writes benchmarks/breakdown.md

For the gradient part of one step only (no optimizer, no noise), on one fixed
batch: the non-private batched gradient, and the clipped sum by book-keeping
(each per-layer norm rule) and by `jax.vmap`. For each, XLA's own cost model of
the compiled program (`compiled.cost_analysis()`: flops, bytes accessed) and
the median wall time over interleaved rounds. If the DP/plain ratio of flops
is near 1 but the time ratio is not, the gap is not arithmetic: it is how
efficiently XLA:CPU runs the extra (small, per-example) contractions and the
memory traffic they add. The per-layer table shows each layer's geometry
(T output positions, K fan-in, O fan-out) and the rule's choice.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [("mnist", 256), ("cifar10", 64), ("cifar10", 256)]


def _functions(dataset: str, batch: int):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from toolkit.grads import _bookkeeping as bookkeeping
    from toolkit.grads import clipping
    from toolkit.nn import ActivationSpec, build_model

    graphdef, params = nnx.split(build_model(dataset, ActivationSpec("tanh"), seed=0), nnx.Param)
    shape = (28, 28, 1) if dataset == "mnist" else (32, 32, 3)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, *shape), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))

    def weights(norms):
        return clipping.clip_factors(norms, clipping="flat", clip_norm=0.1, gamma=0.01)

    # Every function takes the batch as an argument: closed-over arrays would be
    # compile-time constants, and XLA would fold input-only work (patch Grams) away.
    def plain(p, x, y):
        def loss(p):
            logits = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

        return jax.grad(loss)(p)

    def per_example_loss(p, xi, yi):
        logits = nnx.merge(graphdef, p)(xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    def by_vmap(p, x, y):
        grads = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0, 0))(p, x, y)
        return clipping.clipped_sum(grads, weights(clipping.per_example_norms(grads)))

    fns = {"non-private grad": plain}
    for rule in bookkeeping.NORM_RULES:
        fast = bookkeeping.make_clipped_grad(graphdef, norm_rule=rule)
        fns[f"bookkeeping {rule}"] = lambda p, x, y, fast=fast: fast(p, x, y, weights)[0]
    fns["vmap"] = by_vmap
    return (params, x, y), fns


def _layers(dataset: str) -> list[tuple[str, int, int, int, bool]]:
    """(layer, T, K, O, ghost under the mixed rule) for each Linear / Conv layer."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from toolkit.grads import _layer_rules as layer_rules
    from toolkit.nn import ActivationSpec, build_model

    model = build_model(dataset, ActivationSpec("tanh"), seed=0)
    shape = (1, 28, 28, 1) if dataset == "mnist" else (1, 32, 32, 3)
    rows = []
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, nnx.Linear | nnx.Conv):
            continue
        hook = "dot_general" if isinstance(module, nnx.Linear) else "conv_general_dilated"
        original = getattr(module, hook)

        def tapped(*a, _orig=original, _path=path, _kernel=module.kernel.get_value().shape, **k):
            out = _orig(*a, **k)
            t = out.size // (out.shape[0] * out.shape[-1])
            kk = 1
            for s in _kernel[:-1]:
                kk *= s
            o = _kernel[-1]
            rows.append(
                ("/".join(map(str, _path)), t, kk, o, layer_rules.use_ghost("mixed", t, kk, o))
            )
            return out

        setattr(module, hook, tapped)
    jax.eval_shape(lambda: model(jnp.zeros(shape)))
    return rows


def _cost(fn, args) -> tuple[float, float]:
    import jax

    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan"))), float(
        analysis.get("bytes accessed", float("nan"))
    )


def _times(fns, args, rounds: int, per_round: int) -> dict[str, float]:
    import jax

    jitted = {name: jax.jit(fn) for name, fn in fns.items()}
    for f in jitted.values():  # compile and warm up
        jax.block_until_ready(f(*args))
        jax.block_until_ready(f(*args))
    samples = {name: [] for name in fns}
    for _ in range(rounds):  # interleaved: load on a shared machine hits all alike
        for name, f in jitted.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                jax.block_until_ready(f(*args))
            samples[name].append((time.perf_counter() - t0) / per_round)
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "breakdown.md")
    args = parser.parse_args(argv)

    import jax

    lines = [
        "# Where the DP step's time goes (benchmarks/breakdown.py)",
        "",
        f"jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Gradient part only (no optimizer, no noise); "
        "flops and bytes are XLA's cost model of the compiled program, time is the median "
        f"over {args.rounds} interleaved rounds. Ratios are against the non-private grad.",
        "",
    ]
    for dataset, batch in CASES:
        args_, fns = _functions(dataset, batch)
        costs = {name: _cost(fn, args_) for name, fn in fns.items()}
        per_round = 5 if dataset == "mnist" else 2
        times = _times(fns, args_, args.rounds, per_round)
        f0, b0 = costs["non-private grad"]
        t0 = times["non-private grad"]
        lines += [
            f"## {dataset} CNN, B = {batch}",
            "",
            "| method | GFLOP | flops ratio | GB accessed | bytes ratio | ms | time ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in fns:
            f, b = costs[name]
            t = times[name]
            lines.append(
                f"| {name} | {f / 1e9:.3f} | {f / f0:.2f}x | {b / 1e9:.3f} | {b / b0:.2f}x "
                f"| {t * 1e3:.1f} | {t / t0:.2f}x |"
            )
        lines += ["", "| layer | T | K | O | mixed rule |", "|---|---|---|---|---|"]
        for layer, t, k, o, ghost in _layers(dataset):
            lines.append(f"| {layer} | {t} | {k} | {o} | {'ghost' if ghost else 'materialise'} |")
        lines.append("")
        print("\n".join(lines[-(len(fns) + 12) :]), flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
