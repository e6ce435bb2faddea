"""DP-SGD step time against the non-private step and against other libraries (issues 6, 23).

    python -m benchmarks.step_time            # full table, writes benchmarks/results.{md,json}
    python -m benchmarks.step_time --quick    # MNIST B=256 and CIFAR-10 B=64 only
    python -m benchmarks.step_time --sizes mnist:256 ws:256 norm:256 augmult4:256

A configuration is MODEL:B, B the batch size, MODEL one of:

    mnist, cifar10  the paper's CNNs (tanh; toolkit.nn.build_model);
    ws              the model of the recipe `fashion-mnist-tempered-ws-pld-ema`: the MNIST
                    CNN with weight-standardised convolutions and the recipe's tempered
                    sigmoid (`build_model(..., weight_standardization=True)`);
    norm            the MNIST CNN with a GroupNorm after each convolution and a LayerNorm
                    before the classifier (`NormCNN` below; tanh);
    augmultK        the MNIST CNN with augmentation multiplicity K (toolkit.grads.Augmult):
                    each example's gradient is the mean over its K random views. Every
                    method, the non-private step too, trains on the B K views of the step.

For each configuration, every method runs one full training step (gradient, clipping,
noise, SGD update) on one fixed batch; after warm-up the methods take turns, round after
round, so that load on a shared machine hits them alike, and each reports the median over
rounds. Ratios are against the non-private JAX step of the same model and batch in the
same round. A method that fails to build or run (book-keeping asked of a toolkit that has
no rule for a layer) is reported as not available, with its error. Each configuration also
records the path `implementation="auto"` picks after the pre-training check
(`ClippedGradFn.checked`): what `toolkit train` runs.

The script runs against older checkouts of the toolkit too (only public names that
existed before the book-keeping layers); `--before FILE` adds an earlier run's
results.json to the report beside this one.

Each allocator setting runs in its own worker process (glibc reads MALLOC_* at
start-up); memory is measured in separate processes (peak RSS is per process).
Optional methods (jax_privacy, PyTorch, Opacus) are skipped with a note when absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# glibc returns freed blocks >= 32 MiB to the OS, so XLA's per-step buffers are
# page-faulted in afresh every step; `toolkit train` sets these to keep them in the heap.
from toolkit.cli import TUNED_MALLOC

HERE = Path(__file__).resolve().parent
CLIP_NORM, NOISE_MULTIPLIER, LR = 0.1, 1.0, 0.05
FULL = [
    "mnist:64", "mnist:256", "mnist:1024", "cifar10:64", "cifar10:256",
    "ws:256", "ws:1024", "norm:256", "augmult4:256",
]  # fmt: skip
QUICK = ["mnist:256", "cifar10:64"]
ALLOCATORS = {"glibc default": {}, "glibc tuned": TUNED_MALLOC}
PACKAGES = ["jax", "jaxlib", "flax", "optax", "numpy", "jax-privacy", "torch", "opacus"]
RECIPE = "fashion-mnist-tempered-ws-pld-ema"  # the `ws` configuration's model
# Issue 23's goals for the DP step (the path `auto` picks, flat clipping) / non-private.
RATIO_GOALS = {"mnist": 1.15, "cifar10": 1.15, "ws": 1.3}


@dataclasses.dataclass(frozen=True)
class Config:
    """One timed configuration, `MODEL:B` on the command line."""

    model: str  # mnist, cifar10, ws, norm, augmultK
    batch: int

    @classmethod
    def parse(cls, text: str) -> Config:
        model, _, b = text.partition(":")
        ok = model in ("mnist", "cifar10", "ws", "norm") or re.fullmatch(r"augmult[1-9]\d*", model)
        if not ok or not b.isdigit() or int(b) < 1:
            raise ValueError(
                f"{text!r}; expected MODEL:B with MODEL mnist, cifar10, ws, norm or augmultK "
                "(K >= 1), B >= 1."
            )
        return cls(model, int(b))

    @property
    def name(self) -> str:
        return f"{self.model}:{self.batch}"

    @property
    def base(self) -> str:
        """The paper CNN it starts from."""
        return "cifar10" if self.model == "cifar10" else "mnist"

    @property
    def augmult(self) -> int:
        """K, or 0 without augmentation multiplicity."""
        return int(self.model[len("augmult") :]) if self.model.startswith("augmult") else 0

    @property
    def label(self) -> str:
        base = {"mnist": "MNIST CNN", "cifar10": "CIFAR-10 CNN"}[self.base]
        if self.model == "ws":
            base = "WS recipe model"
        elif self.model == "norm":
            base = "GroupNorm/LayerNorm CNN"
        elif self.augmult:
            base = f"MNIST CNN, augmult K={self.augmult}"
        return f"{base} B={self.batch}"


# ---------------------------------------------------------------- JAX steps


def _norm_cnn(seed: int):
    """The MNIST CNN (toolkit.nn._models.MnistCNN) with a GroupNorm after each convolution
    (4 and 8 groups) and a LayerNorm before the classifier; tanh. 26,170 parameters."""
    import jax.numpy as jnp
    from flax import nnx

    class NormCNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            eps = 1e-5  # PyTorch's, as in the torch twin
            self.conv1 = nnx.Conv(1, 16, (8, 8), strides=2, padding="SAME", rngs=rngs)
            self.gn1 = nnx.GroupNorm(16, num_groups=4, epsilon=eps, rngs=rngs)
            self.conv2 = nnx.Conv(16, 32, (4, 4), strides=2, padding="VALID", rngs=rngs)
            self.gn2 = nnx.GroupNorm(32, num_groups=8, epsilon=eps, rngs=rngs)
            self.fc1 = nnx.Linear(4 * 4 * 32, 32, rngs=rngs)
            self.ln = nnx.LayerNorm(32, epsilon=eps, rngs=rngs)
            self.fc2 = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            x = jnp.tanh(self.gn1(self.conv1(x)))
            x = nnx.max_pool(x, (2, 2), strides=(1, 1), padding="VALID")
            x = jnp.tanh(self.gn2(self.conv2(x)))
            x = nnx.max_pool(x, (2, 2), strides=(1, 1), padding="VALID")
            x = jnp.tanh(self.fc1(x.reshape(x.shape[0], -1)))
            return self.fc2(self.ln(x))

    return NormCNN(nnx.Rngs(params=seed))


def _recipe_activation():
    from toolkit.runs import preset

    return preset(RECIPE)["activation"]


def jax_model(cfg: Config):
    from toolkit.nn import ActivationSpec, build_model

    if cfg.model == "norm":
        return _norm_cnn(seed=0)
    if cfg.model == "ws":
        return build_model("mnist", _recipe_activation(), seed=0, weight_standardization=True)
    return build_model(cfg.base, ActivationSpec("tanh"), seed=0)


def _why(e: BaseException) -> str:
    """The first line of an error, for a table note."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def jax_steps(
    cfg: Config,
) -> tuple[dict[str, Callable[[], object]], dict[str, str], list[str], str, int]:
    """{method: zero-argument step} for the JAX methods, {method: error} for those that
    cannot be built, notes on skipped ones, the path `implementation="auto"` picks after the
    pre-training check, and the parameter count."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from toolkit.grads import Augmult
    from toolkit.privacy import randomness
    from toolkit.training import _dpsgd as dpsgd

    graphdef, params = nnx.split(jax_model(cfg), nnx.Param)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    shape = (28, 28, 1) if cfg.base == "mnist" else (32, 32, 3)
    batch = cfg.batch
    rng = np.random.default_rng(0)
    x_np = rng.random((batch, *shape), dtype=np.float32)
    y_np = rng.integers(0, 10, batch)
    images, labels = jnp.asarray(x_np), jnp.asarray(y_np)
    idx, mask = jnp.arange(batch, dtype=jnp.int32), jnp.ones(batch, bool)
    opt = optax.sgd(LR)
    opt_state, key = opt.init(params), jax.random.key(0)
    augment = Augmult(cfg.augmult) if cfg.augmult else None
    # Each example's own key (its views), as the training loop derives it: (stream, step, id).
    stream = randomness.example_stream(jax.random.key(1))
    ids = jnp.asarray(randomness.example_ids(x_np, y_np))
    keyed = () if augment is None else (None, stream, 0, ids)  # state, stream, step, ids

    def rows(images, labels, stream, ids):
        """The step's rows: the batch, or each example's K views (example-major)."""
        if augment is None:
            return images, labels
        views = jax.vmap(augment.views)(images, randomness.example_keys(stream, 0, ids))
        return views.reshape(-1, *images.shape[1:]), jnp.repeat(labels, augment.k)

    @jax.jit  # the batch is an argument, as for every other method: no constant folding
    def plain_step(params, opt_state, images, labels, stream, ids):
        images, labels = rows(images, labels, stream, ids)

        def mean_loss(p):
            logits = nnx.merge(graphdef, p)(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        updates, opt_state = opt.update(jax.grad(mean_loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    steps = {"jax non-private": lambda: plain_step(params, opt_state, images, labels, stream, ids)}
    zeros = dpsgd.zeros_like(params)
    unavailable = {}
    for impl, clipping in (("vmap", "flat"), ("bookkeeping", "flat"), ("bookkeeping", "automatic")):
        mech = dpsgd.Mechanism(
            clipping=clipping, clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER
        )
        # The functions toolkit.training._loop runs: accumulate, then the privatized optimizer.
        try:
            acc = dpsgd.make_accumulate(graphdef, mech, implementation=impl, augment=augment)
        except Exception as e:  # an older toolkit refuses book-keeping with augmult
            unavailable[f"toolkit DP {impl}, {clipping}"] = _why(e)
            continue
        tx = mech.privatized(opt, expected_batch_size=float(batch), key=key)
        update, tx_state = dpsgd.make_update(tx), tx.init(params)

        def dp_step(acc=acc, update=update, tx_state=tx_state):
            summed, _, _ = acc(params, zeros, images, labels, idx, mask, *keyed)
            return update(params, tx_state, summed)

        steps[f"toolkit DP {impl}, {clipping}"] = dp_step

    mech = dpsgd.Mechanism(clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER)
    try:  # what `toolkit train` runs: the pre-training check on (here, random) examples
        fn = mech.clipped_grad(graphdef, implementation="auto", augment=augment)
        auto = fn.checked(params, None, images, labels, rows=min(8, batch // 2)).implementation
    except Exception as e:  # reported, not fatal: the timings stand without it
        auto = f"check failed ({_why(e)})"

    notes = []
    try:
        from jax_privacy import clipping as jp_clipping
    except ImportError as e:
        notes.append(f"jax_privacy skipped: {e}")
    else:
        tx = mech.privatized(opt, expected_batch_size=float(batch), key=key)
        update, tx_state = dpsgd.make_update(tx), tx.init(params)

        def example_loss(p, x, y, *keys):  # one example, kept with a batch axis of 1
            if augment is not None:  # the mean over its K views
                x = jax.vmap(augment.views)(x, keys[0]).reshape(-1, *x.shape[1:])
                y = jnp.repeat(y, augment.k)
            logits = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        argnums = (1, 2) if augment is None else (1, 2, 3)
        clipped = jp_clipping.clipped_grad(
            example_loss, l2_clip_norm=CLIP_NORM, batch_argnums=argnums
        )

        @jax.jit
        def jp_grad(params, images, labels, stream, ids):
            if augment is None:
                return clipped(params, images, labels)
            return clipped(params, images, labels, randomness.example_keys(stream, 0, ids))

        def jp_step():
            return update(params, tx_state, jp_grad(params, images, labels, stream, ids))

        steps["jax_privacy clipped_grad, flat"] = jp_step
    return steps, unavailable, notes, auto, n_params


def torch_steps(cfg: Config) -> tuple[dict[str, Callable[[], object]], list[str], int | None]:
    try:
        import torch

        from benchmarks.torch_steps import make_steps
    except ImportError as e:
        return {}, [f"PyTorch/Opacus skipped: {e}"], None
    torch.set_num_threads(os.cpu_count() or 1)
    warnings.filterwarnings("ignore")
    activation = None
    if cfg.model == "ws":
        a = _recipe_activation()
        activation = (a.scale, a.inverse_temp, a.offset)
    steps, notes, params = make_steps(
        cfg.base, cfg.batch, clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER,
        activation=activation, ws=cfg.model == "ws", norm=cfg.model == "norm",
        augmult=cfg.augmult,
    )  # fmt: skip
    return steps, notes, params


def _block(out) -> None:
    import jax

    jax.block_until_ready(out)


def time_config(cfg: Config, repeats: int, with_torch: bool) -> dict:
    """Median step time of every method over interleaved rounds, after two warm-up steps."""
    steps, unavailable, notes, auto, jax_params = jax_steps(cfg)
    torch_params = None
    if with_torch:
        more, more_notes, torch_params = torch_steps(cfg)
        steps.update(more)
        notes += more_notes
    if torch_params is not None and torch_params != jax_params:
        notes.append(f"{cfg.name}: {jax_params} parameters in JAX, {torch_params} in PyTorch.")
    for name, step in list(steps.items()):  # compile, then one more warm-up step
        try:
            _block(step())
            _block(step())
        except Exception as e:  # book-keeping refused by an older toolkit, say
            if name == "jax non-private":
                raise
            del steps[name]
            unavailable[name] = _why(e)
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            _block(step())
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base = times["jax non-private"]
    rows = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]  # same round, same load
        rows[name] = {
            "median_s": statistics.median(ts),
            "examples_per_s": cfg.batch / statistics.median(ts),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            # CPU-seconds of all threads: less sensitive to other processes than wall time
            "cpu_s": statistics.median(cpu[name]),
            "cpu_ratio": statistics.median(cpu[name]) / statistics.median(cpu["jax non-private"]),
        }
    return {
        "config": cfg.name,
        "dataset": cfg.model,  # the model (named dataset for benchmarks.gpu_check)
        "batch": cfg.batch,
        "label": cfg.label,
        "repeats": repeats,
        "auto": auto,
        "params": jax_params,
        "methods": rows,
        "unavailable": unavailable,
        "notes": notes,
        "loadavg": os.getloadavg(),
    }


def worker(args) -> None:
    """Time every configuration in this process; print one JSON line."""
    out = []
    for text in args.configs:
        r = time_config(Config.parse(text), args.repeats, not args.no_torch)
        print(f"  {text} done, load {r['loadavg'][0]:.1f}", file=sys.stderr)
        out.append(r)
    print(json.dumps(out))


# ---------------------------------------------------------------- memory


def memory_worker(args) -> None:
    """One logical batch (4096) of CIFAR-10 examples in micro-batches; print peak memory JSON."""
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from toolkit.nn import ActivationSpec, build_model
    from toolkit.training import _dpsgd as dpsgd

    logical, micro, impl = args.logical, args.micro, args.impl
    graphdef, params = nnx.split(build_model("cifar10", ActivationSpec("tanh"), seed=0), nnx.Param)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((logical, 32, 32, 3), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, logical))
    mech = dpsgd.Mechanism(clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER)
    acc_fn = dpsgd.make_accumulate(graphdef, mech, implementation=impl)
    opt = optax.sgd(LR)
    tx = mech.privatized(opt, expected_batch_size=float(logical), key=jax.random.key(0))
    update = dpsgd.make_update(tx)
    zeros = dpsgd.zeros_like(params)

    def xla_bytes(m: int) -> dict[str, int]:  # compile only: what one accumulate call needs
        idx, mask = jnp.arange(m, dtype=jnp.int32), jnp.ones(m, bool)
        stats = acc_fn.lower(params, zeros, images, labels, idx, mask).compile().memory_analysis()
        return {"temp": int(stats.temp_size_in_bytes), "args": int(stats.argument_size_in_bytes)}

    compiled = {m: xla_bytes(m) for m in sorted({micro, logical})}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    acc = zeros
    for start in range(0, logical, micro):
        idx = jnp.arange(start, start + micro, dtype=jnp.int32)
        acc, _, _ = acc_fn(params, acc, images, labels, idx, jnp.ones(micro, bool))
    new_params, _ = update(params, tx.init(params), acc)
    jax.block_until_ready(new_params)
    device_stats = jax.local_devices()[0].memory_stats() or {}  # GPU: the allocator's peak
    print(
        json.dumps(
            {
                "impl": impl,
                "logical": logical,
                "micro": micro,
                "step_s": time.perf_counter() - t0,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "rss_before_step": rss_before,
                "device_peak_bytes": device_stats.get("peak_bytes_in_use"),
                "xla_accumulate_bytes": {str(m): v for m, v in compiled.items()},
            }
        )
    )


# ---------------------------------------------------------------- driver and report


def _run(cmd: list[str], env_extra: dict[str, str], timeout: int) -> dict | list:
    # PyTorch's OpenMP threads spin after each parallel region by default, stealing the
    # cores from whichever step runs next in the round; passive waiting keeps rounds fair.
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **env_extra)
    proc = subprocess.run(
        cmd, env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout
    )
    sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _tree() -> dict:
    """Where the toolkit under test was imported from, its commit, and its uncommitted files."""
    import toolkit

    root = Path(toolkit.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "toolkit").splitlines()
    return {"path": str(root), "commit": git("rev-parse", "--short", "HEAD") or None,
            "uncommitted": [line[3:] for line in changed]}  # fmt: skip


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# (method, column) of the summary table, in order
SUMMARY = [
    ("jax non-private", "JAX non-private"),
    ("toolkit DP bookkeeping, flat", "toolkit book-keeping"),
    ("toolkit DP vmap, flat", "toolkit vmap"),
    ("opacus hooks", "Opacus hooks"),
    ("opacus ghost", "Opacus ghost"),
    ("torch plain", "torch plain"),
    ("jax_privacy clipped_grad, flat", "jax_privacy"),
]


def _cell(r: dict) -> str:
    spread = f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
    return (
        f"**{r['ratio_median']:.2f}x** {spread}, cpu {r['cpu_ratio']:.2f}x, "
        f"{r['median_s'] * 1e3:,.0f} ms, {r['examples_per_s']:,.0f} ex/s"
    )


def _ms(r: dict) -> str:
    return f"{r['median_s'] * 1e3:,.0f} ms"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _dp_method(c: dict) -> str | None:
    """The toolkit DP step users get: the path `auto` picked, flat clipping."""
    if c.get("auto") in ("bookkeeping", "vmap"):
        return f"toolkit DP {c['auto']}, flat"
    return None


def goals(configs: list[dict]) -> dict[str, list[tuple[str, float, float, bool]]]:
    """{config: [(goal, measured, limit, met)]}: issue 23's goals for the DP step `auto` picks:
    its ratio to the non-private step (paper CNNs, WS model) and its time against Opacus hooks."""
    out = {}
    for c in configs:
        m = c["methods"].get(_dp_method(c) or "")
        if m is None:
            continue
        rows = []
        limit = RATIO_GOALS.get(c["dataset"])
        if limit is not None:
            rows.append((f"DP / non-private <= {limit}x", m["ratio_median"], limit))
        hooks = c["methods"].get("opacus hooks")
        if hooks is not None:
            rows.append(("DP ms <= Opacus hooks ms", m["median_s"], hooks["median_s"]))
        out[c.get("config", f"{c['dataset']}:{c['batch']}")] = [
            (g, v, lim, v <= lim) for g, v, lim in rows
        ]
    return out


def _goal_text(goal: str, value: float, limit: float, met: bool) -> str:
    if goal.startswith("DP ms"):
        return f"{'met' if met else 'missed'}: {value * 1e3:,.0f} vs {limit * 1e3:,.0f} ms"
    return f"{'met' if met else 'missed'}: {value:.2f}x"


def _tables(result: dict, heading: str) -> list[str]:
    """The summary and detailed tables of one run, each allocator setting in its section."""
    lines = []
    for alloc, configs in result["timing"].items():
        env = " ".join(f"{k}={v}" for k, v in ALLOCATORS[alloc].items()) or "(no MALLOC_ variables)"
        lines += ["", f"{heading} {alloc}: {env}", ""]
        head = "| config | `auto` picks | " + " | ".join(col for _, col in SUMMARY) + " |"
        lines += [head, "|---" * (len(SUMMARY) + 2) + "|"]
        for c in configs:
            cells = []
            for name, _ in SUMMARY:
                r = c["methods"].get(name)
                if r is None:
                    cells.append("n/a" if name in c.get("unavailable", {}) else "-")
                elif name == "jax non-private":
                    cells.append(_ms(r))
                else:
                    cells.append(f"{_ms(r)}, **{r['ratio_median']:.2f}x**")
            label = c.get("label", f"{c['dataset']} B={c['batch']}")
            lines.append(f"| {label} | {c.get('auto', '-')} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Median step time, and its ratio to the non-private JAX step of the same round "
            "(median over rounds). n/a: not available (below); -: not run.",
            "",
        ]
        methods = list(dict.fromkeys(n for c in configs for n in c["methods"]))
        names = [c.get("config", f"{c['dataset']}:{c['batch']}") for c in configs]
        lines += ["| method | " + " | ".join(names) + " |", "|---" * (len(configs) + 1) + "|"]
        for name in methods:
            cells = []
            for c in configs:
                r = c["methods"].get(name)
                cells.append(("n/a" if name in c.get("unavailable", {}) else "-") if r is None
                             else _cell(r))  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        loads = ", ".join(f"{n}: {c['loadavg'][0]:.1f}" for n, c in zip(names, configs))
        lines += ["", f"1-minute load average after each configuration: {loads}."]
        for n, c in zip(names, configs):
            for method, why in c.get("unavailable", {}).items():
                lines.append(f"Not available, {n}, {method}: {why}")
        notes = sorted({n for c in configs for n in c["notes"]})
        lines += [f"Note: {n}" for n in notes]
    return lines


def _goal_lines(result: dict, before: dict | None) -> list[str]:
    lines = []
    for alloc, configs in result["timing"].items():
        now = goals(configs)
        then = goals(before["timing"].get(alloc, [])) if before else {}
        labels = {c.get("config"): c.get("label", c.get("config")) for c in configs}
        lines += ["", f"## Issue 23's goals, {alloc}", ""]
        lines += [
            "The DP step is the path `auto` picked (flat clipping). Goals: at most 1.15x the "
            "non-private step for the paper CNNs, 1.3x for the WS recipe model, and no slower "
            "than Opacus hooks at every configuration.",
            "",
        ]
        if before:
            lines += ["| config | goal | after | before |", "|---|---|---|---|"]
        else:
            lines += ["| config | goal | measured |", "|---|---|---|"]
        for name, rows in now.items():
            old = {g: (v, lim, met) for g, v, lim, met in then.get(name, [])}
            for g, v, lim, met in rows:
                cells = [labels.get(name, name), g, _goal_text(g, v, lim, met)]
                if before:
                    cells.append(_goal_text(g, *old[g]) if g in old else "-")
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _describe(result: dict) -> str:
    t = result.get("tree") or {}
    dirty = t.get("uncommitted") or []
    more = f" with {len(dirty)} uncommitted files under toolkit/" if dirty else ""
    return f"toolkit from `{t.get('path', '?')}` at {t.get('commit', '?')}{more}"


def write_report(result: dict, out: Path, before: dict | None = None) -> None:
    (out / "results.json").write_text(
        json.dumps(dict(result, before=before) if before else result, indent=1)
    )
    m, v = result["machine"], result["versions"]
    loads = result.get("loadavg_start"), result.get("loadavg_end")
    lines = [
        "# DP-SGD step time and memory (issues 6 and 23)",
        "",
        f"Run {result['date']} on {m['cpu']}, {m['cores']} cores, {m['platform']}, "
        f"Python {m['python']}; {_describe(result)}.",
        "Versions: " + ", ".join(f"{k} {v[k] or 'absent'}" for k in PACKAGES) + ".",
        "1-, 5-, 15-minute load average at the start: "
        + (", ".join(f"{x:.1f}" for x in loads[0]) if loads[0] else "-")
        + "; at the end: "
        + (", ".join(f"{x:.1f}" for x in loads[1]) if loads[1] else "-")
        + ".",
        "",
        f"Reproduce: `{result['command'].strip()}` from the repository root (`make bench` runs",
        "it with no flags; `--quick` for MNIST B=256 and CIFAR-10 B=64 only). Optional methods",
        "need `pip install -e '.[bench]'`.",
        "",
        "Ratio = step time / non-private JAX step time of the same model and batch, taken in",
        "the same round (median over rounds; min-max in brackets); `cpu` is the same ratio in",
        "CPU-seconds of all threads (medians). A step is the full training",
        f"step: gradient, clipping (C = {CLIP_NORM}), noise (sigma = {NOISE_MULTIPLIER}) and the",
        "SGD update. Times are medians; the machine is shared, so trust ratios, not times.",
        "Configurations: mnist and cifar10 are the paper's CNNs (tanh); ws the recipe",
        f"`{RECIPE}`'s model (weight-standardised convolutions, tempered sigmoid); norm",
        "the MNIST CNN with a GroupNorm after each convolution and a LayerNorm before the",
        "classifier; augmultK the MNIST CNN with K views per example (every method, the",
        "non-private step too, trains on the K B views). `auto` picks: the path",
        '`implementation="auto"` takes after the pre-training check, what `toolkit train` runs.',
    ]
    lines += _tables(result, "## Step time,")
    if before:
        lines += _goal_lines(result, before)
        lines += [
            "",
            f"## {before.get('label') or 'Before'}",
            "",
            f"Run {before['date']}, {_describe(before)}: `{before['command'].strip()}`.",
        ]
        lines += _tables(before, "### Step time,")
    else:
        lines += _goal_lines(result, None)
    if result.get("memory"):
        logical = result["memory"][0]["logical"]
        lines += [
            "",
            f"## Memory: CIFAR-10 CNN, one logical batch of {logical}",
            "",
            "| implementation | micro-batch | peak RSS MiB | RSS before the step MiB | "
            f"XLA temp MiB, one micro-batch | XLA temp MiB, all {logical} at once | "
            "device peak MiB | step s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result["memory"]:
            b = r["xla_accumulate_bytes"]
            peak = r.get("device_peak_bytes")  # None on the CPU (no allocator statistics)
            lines.append(
                f"| {r['impl']} | {r['micro']} | {_mib(r['peak_rss'])} | "
                f"{_mib(r['rss_before_step'])} | {_mib(b[str(r['micro'])]['temp'])} | "
                f"{_mib(b[str(r['logical'])]['temp'])} | {'-' if peak is None else _mib(peak)} | "
                f"{r['step_s']:.1f} |"
            )
        lines += [
            "",
            "XLA temp is `compiled.memory_analysis().temp_size_in_bytes` of one "
            f"accumulate call (compiled, not run, for {logical}). Peak RSS includes the "
            f"{logical}-image data set on device, params, and both compilations; device "
            "peak is the GPU allocator's `peak_bytes_in_use`.",
        ]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="MNIST B=256 and CIFAR-10 B=64 only")
    p.add_argument("--repeats", type=int, default=None, help="rounds per configuration")
    p.add_argument("--allocator", choices=[*ALLOCATORS, "both"], default="both")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch and Opacus")
    p.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    p.add_argument(
        "--sizes", nargs="+", default=None, metavar="MODEL:B",
        help="timed configurations instead of the defaults, e.g. mnist:4096 cifar10:1024 "
        "ws:256 norm:256 augmult4:256 (MODEL: mnist, cifar10, ws, norm, augmultK)",
    )  # fmt: skip
    p.add_argument(
        "--memory-micro", type=int, nargs="+", default=[64, 256], metavar="M",
        help="book-keeping micro-batch sizes for the memory runs (vmap runs 256)",
    )  # fmt: skip
    p.add_argument(
        "--memory-logical", type=int, default=4096, metavar="N",
        help="the logical batch of the memory runs",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=HERE, help="folder for results.md/json")
    p.add_argument("--label", default=None, help="a title for this run (shown by --before)")
    p.add_argument(
        "--before", type=Path, default=None, metavar="FILE",
        help="an earlier run's results.json, reported beside this one (same configurations)",
    )  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--configs", nargs="*", default=None, help=argparse.SUPPRESS)
    p.add_argument("--impl", default="bookkeeping", help=argparse.SUPPRESS)
    p.add_argument("--micro", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--logical", type=int, default=4096, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 7
    if args.repeats < 1:
        p.error(f"--repeats={args.repeats}; expected >= 1.")
    if args.worker:
        return worker(args)
    if args.memory_worker:
        return memory_worker(args)

    configs = args.sizes if args.sizes is not None else (QUICK if args.quick else FULL)
    for c in configs:
        try:
            Config.parse(c)
        except ValueError as e:
            p.error(f"--sizes {e}")
    if args.memory_logical < 1:
        p.error(f"--memory-logical {args.memory_logical}; expected >= 1.")
    if any(m < 1 or args.memory_logical % m for m in args.memory_micro):
        p.error(f"--memory-micro {args.memory_micro}; expected divisors of {args.memory_logical}.")
    before = None
    if args.before is not None:
        try:
            before = json.loads(args.before.read_text())
        except (OSError, ValueError) as e:
            p.error(f"--before {args.before}: {e}")
    allocators = list(ALLOCATORS) if args.allocator == "both" else [args.allocator]
    me = [sys.executable, "-m", "benchmarks.step_time"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.step_time", *(argv or sys.argv[1:])]),
        "label": args.label,
        "machine": _machine(),
        "versions": _versions(),
        "tree": _tree(),
        "loadavg_start": os.getloadavg(),
        "timing": {},
        "memory": [],
    }
    for alloc in allocators:
        print(f"timing, {alloc} ...", file=sys.stderr)
        cmd = [*me, "--worker", "--repeats", str(args.repeats), "--configs", *configs]
        result["timing"][alloc] = _run(
            cmd + (["--no-torch"] if args.no_torch else []), ALLOCATORS[alloc], timeout=3600
        )
    if not args.no_memory:
        vmap_micro = min(256, args.memory_logical)
        runs = [("bookkeeping", m) for m in args.memory_micro] + [("vmap", vmap_micro)]
        for impl, micro in runs:
            print(f"memory, {impl} micro-batch {micro} ...", file=sys.stderr)
            cmd = [*me, "--memory-worker", "--impl", impl, "--micro", str(micro),
                   "--logical", str(args.memory_logical)]  # fmt: skip
            result["memory"].append(_run(cmd, {}, timeout=1800))  # default glibc
    result["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(result, args.out, before)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
