"""DP-SGD step time against the non-private step and against other libraries (issue 6).

    python -m benchmarks.step_time            # full table, writes benchmarks/results.{md,json}
    python -m benchmarks.step_time --quick    # MNIST B=256 and CIFAR-10 B=64 only

For each model and batch size, every method runs one full training step (gradient,
clipping, noise, SGD update) on one fixed batch; after warm-up the methods take
turns, round after round, so that load on a shared machine hits them alike, and
each reports the median over rounds. Ratios are against the non-private JAX step
of the same model and batch in the same round; ratios are the claim, not times.

Each allocator setting runs in its own worker process (glibc reads MALLOC_* at
start-up); memory is measured in separate processes (peak RSS is per process).
Optional methods (jax_privacy, PyTorch, Opacus) are skipped with a note when absent.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
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
FULL = [("mnist", 64), ("mnist", 256), ("mnist", 1024), ("cifar10", 64), ("cifar10", 256)]
QUICK = [("mnist", 256), ("cifar10", 64)]
ALLOCATORS = {"glibc default": {}, "glibc tuned": TUNED_MALLOC}
PACKAGES = ["jax", "jaxlib", "flax", "optax", "numpy", "jax-privacy", "torch", "opacus"]


# ---------------------------------------------------------------- JAX steps


def jax_steps(dataset: str, batch: int) -> tuple[dict[str, Callable[[], object]], list[str]]:
    """{method: zero-argument step} for the JAX methods, plus notes on skipped ones."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from toolkit.nn import ActivationSpec, build_model
    from toolkit.training import _dpsgd as dpsgd

    graphdef, params = nnx.split(build_model(dataset, ActivationSpec("tanh"), seed=0), nnx.Param)
    shape = (28, 28, 1) if dataset == "mnist" else (32, 32, 3)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((batch, *shape), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, batch))
    idx, mask = jnp.arange(batch, dtype=jnp.int32), jnp.ones(batch, bool)
    opt = optax.sgd(LR)
    opt_state, key = opt.init(params), jax.random.key(0)

    @jax.jit  # the batch is an argument, as for every other method: no constant folding
    def plain_step(params, opt_state, images, labels):
        def mean_loss(p):
            logits = nnx.merge(graphdef, p)(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        updates, opt_state = opt.update(jax.grad(mean_loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    steps = {"jax non-private": lambda: plain_step(params, opt_state, images, labels)}
    zeros = dpsgd.zeros_like(params)
    for impl, clipping in (("vmap", "flat"), ("bookkeeping", "flat"), ("bookkeeping", "automatic")):
        mech = dpsgd.Mechanism(
            clipping=clipping, clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER
        )
        # The functions toolkit.training._loop runs: accumulate, then the privatized optimizer.
        acc = dpsgd.make_accumulate(graphdef, mech, implementation=impl)
        tx = mech.privatized(opt, expected_batch_size=float(batch), key=key)
        update, tx_state = dpsgd.make_update(tx), tx.init(params)

        def dp_step(acc=acc, update=update, tx_state=tx_state):
            summed, _, _ = acc(params, zeros, images, labels, idx, mask)
            return update(params, tx_state, summed)

        steps[f"toolkit DP {impl}, {clipping}"] = dp_step

    notes = []
    try:
        from jax_privacy import clipping as jp_clipping
    except ImportError as e:
        notes.append(f"jax_privacy skipped: {e}")
    else:
        mech = dpsgd.Mechanism(clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER)
        tx = mech.privatized(opt, expected_batch_size=float(batch), key=key)
        update, tx_state = dpsgd.make_update(tx), tx.init(params)

        def batch_loss(p, x, y):  # one example, kept with a batch axis of 1
            logits = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

        clipped = jax.jit(
            jp_clipping.clipped_grad(batch_loss, l2_clip_norm=CLIP_NORM, batch_argnums=(1, 2))
        )

        def jp_step():
            return update(params, tx_state, clipped(params, images, labels))

        steps["jax_privacy clipped_grad, flat"] = jp_step
    return steps, notes


def torch_steps(dataset: str, batch: int) -> tuple[dict[str, Callable[[], object]], list[str]]:
    try:
        import torch

        from benchmarks.torch_steps import make_steps
    except ImportError as e:
        return {}, [f"PyTorch/Opacus skipped: {e}"]
    torch.set_num_threads(os.cpu_count() or 1)
    warnings.filterwarnings("ignore")
    try:
        steps = make_steps(dataset, batch, clip_norm=CLIP_NORM, noise_multiplier=NOISE_MULTIPLIER)
    except ImportError as e:
        return {}, [f"Opacus skipped: {e}"]
    return steps, []


def _block(out) -> None:
    import jax

    jax.block_until_ready(out)


def time_config(dataset: str, batch: int, repeats: int, with_torch: bool) -> dict:
    """Median step time of every method over interleaved rounds, after two warm-up steps."""
    steps, notes = jax_steps(dataset, batch)
    if with_torch:
        more, more_notes = torch_steps(dataset, batch)
        steps.update(more)
        notes += more_notes
    for step in steps.values():  # compile, then one more warm-up step
        _block(step())
        _block(step())
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
            "examples_per_s": batch / statistics.median(ts),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            # CPU-seconds of all threads: less sensitive to other processes than wall time
            "cpu_s": statistics.median(cpu[name]),
            "cpu_ratio": statistics.median(cpu[name]) / statistics.median(cpu["jax non-private"]),
        }
    return {
        "dataset": dataset,
        "batch": batch,
        "repeats": repeats,
        "methods": rows,
        "notes": notes,
        "loadavg": os.getloadavg(),
    }


def worker(args) -> None:
    """Time every configuration in this process; print one JSON line."""
    out = []
    for cfg in args.configs:
        dataset, batch = cfg.split(":")
        r = time_config(dataset, int(batch), args.repeats, not args.no_torch)
        print(f"  {dataset} B={batch} done, load {r['loadavg'][0]:.1f}", file=sys.stderr)
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


def _cell(r: dict) -> str:
    spread = f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
    return (
        f"**{r['ratio_median']:.2f}x** {spread}, cpu {r['cpu_ratio']:.2f}x, "
        f"{r['median_s'] * 1e3:,.0f} ms, {r['examples_per_s']:,.0f} ex/s"
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def write_report(result: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=1))
    m, v = result["machine"], result["versions"]
    lines = [
        "# DP-SGD step time and memory (issue 6)",
        "",
        f"Run {result['date']} on {m['cpu']}, {m['cores']} cores, {m['platform']}, "
        f"Python {m['python']}.",
        "Versions: " + ", ".join(f"{k} {v[k] or 'absent'}" for k in PACKAGES) + ".",
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
    ]
    for alloc, configs in result["timing"].items():
        env = " ".join(f"{k}={v}" for k, v in ALLOCATORS[alloc].items()) or "(no MALLOC_ variables)"
        lines += ["", f"## Step time, {alloc}: {env}", ""]
        methods = list(configs[0]["methods"])
        header = "| method | " + " | ".join(f"{c['dataset']} B={c['batch']}" for c in configs)
        lines += [header + " |", "|---" * (len(configs) + 1) + "|"]
        for name in methods:
            cells = []
            for c in configs:
                r = c["methods"].get(name)
                cells.append("-" if r is None else _cell(r))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        loads = ", ".join(f"{c['dataset']} B={c['batch']}: {c['loadavg'][0]:.1f}" for c in configs)
        lines += ["", f"1-minute load average after each configuration: {loads}."]
        notes = sorted({n for c in configs for n in c["notes"]})
        lines += [f"Note: {n}" for n in notes]
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
        help="timed configurations instead of the defaults, e.g. mnist:4096 cifar10:1024",
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

    if args.sizes is not None:
        configs = args.sizes
        for c in configs:
            model, _, b = c.partition(":")
            if model not in ("mnist", "cifar10") or not b.isdigit() or int(b) < 1:
                p.error(f"--sizes {c!r}; expected MODEL:B with MODEL mnist or cifar10, B >= 1.")
    else:
        configs = [f"{d}:{b}" for d, b in (QUICK if args.quick else FULL)]
    if args.memory_logical < 1:
        p.error(f"--memory-logical {args.memory_logical}; expected >= 1.")
    if any(m < 1 or args.memory_logical % m for m in args.memory_micro):
        p.error(f"--memory-micro {args.memory_micro}; expected divisors of {args.memory_logical}.")
    allocators = list(ALLOCATORS) if args.allocator == "both" else [args.allocator]
    me = [sys.executable, "-m", "benchmarks.step_time"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.step_time " + " ".join(argv or sys.argv[1:]),
        "machine": _machine(),
        "versions": _versions(),
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
    write_report(result, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
