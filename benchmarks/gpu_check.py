"""The pieces of `benchmarks/gpu_check.sh` (issue 14), one subcommand each.

    python -m benchmarks.gpu_check stage   --dest .gpu_stage          # here: wheels + data
    python -m benchmarks.gpu_check install --stage .gpu_stage --target DIR
    python -m benchmarks.gpu_check device  --json F [--expect gpu]
    python -m benchmarks.gpu_check checks  --json F [--quick]       # quick: MNIST CNN only
    python -m benchmarks.gpu_check summary --out DIR

`checks` are the device-specific properties that the CPU suite cannot see:

- precision: book-keeping's per-example norms and clipped sum against the vmap reference
  computed at `highest` matmul precision, and each example's clipped gradient within C.
  On a GPU, float32 matmuls and convolutions default to TF32 (10-bit mantissa); the
  toolkit computes norms and sums at `highest` so that a norm cannot disagree with the
  gradient it scales. The default-precision vmap error is reported beside it, to show
  what TF32 would have done.
- sharding: the accumulate step the loop runs, with the micro-batch's indices and mask
  placed on a `NamedSharding` over a mesh of the local devices (one GPU: a 1-device
  mesh, the path `toolkit.training._parallel` takes with several), against unsharded inputs.

Each check prints one line and the JSON holds the numbers; exit 1 if any fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

# Distributions the GPU image may lack (issue 14: it holds jax, flax, optax, orbax, scipy,
# matplotlib, typer and rich), with the module each provides. Pinned to what the tests
# here run with; dm-tree and wrapt are binary, so one wheel per CPython.
NEEDED = {
    "dp-accounting": "dp_accounting",
    "absl-py": "absl",
    "attrs": "attr",
    "dm-tree": "tree",
    "wrapt": "wrapt",
    "mpmath": "mpmath",
    "platformdirs": "platformdirs",
    "pytest": "pytest",
    "iniconfig": "iniconfig",
    "pluggy": "pluggy",
    "packaging": "packaging",
    "pygments": "pygments",
}
BINARY = {"dm-tree", "wrapt"}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def _installed_version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


# ---------------------------------------------------------------- stage (here)


def stage(args) -> None:
    """Wheels the GPU image lacks and the Fashion-MNIST IDX files, under `args.dest`."""
    from toolkit.data import _files as datafiles

    wheels = args.dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{d}=={_installed_version(d)}" for d in NEEDED]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    pure = [p for p in pins if p.split("==")[0] not in BINARY]
    binary = [p for p in pins if p.split("==")[0] in BINARY]
    subprocess.run([*pip, "-d", str(wheels), *pure], check=True)
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for py in PYTHONS:
        for pin in binary:  # the GPU image's Python is not known here: every CPython
            cmd = [*pip, "-d", str(wheels), "--python-version", py, *plats, pin]
            if subprocess.run(cmd, capture_output=True).returncode and py == here:
                sys.exit(f"stage: pip could not download {pin} for Python {py}")
    files = datafiles.locate("fashion-mnist", download=True)
    data = args.dest / "data" / "fashion-mnist"
    data.mkdir(parents=True, exist_ok=True)
    for f in files.paths:
        (data / f.name).write_bytes(f.read_bytes())
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(
        f"staged {len(list(wheels.glob('*.whl')))} wheels and {len(files.paths)} data files "
        f"in {args.dest} ({size / 2**20:.1f} MiB)"
    )


# ---------------------------------------------------------------- install (GPU machine)


def _compatible(wheel: Path) -> bool:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return "-none-any" in wheel.name or f"-{tag}-" in wheel.name


def install(args) -> None:
    """Install, from the staged wheels only, every distribution whose module is missing."""
    wheels = args.stage / "wheels"
    missing = [d for d, m in NEEDED.items() if args.force or importlib.util.find_spec(m) is None]
    report = {"python": sys.version.split()[0], "present": sorted(set(NEEDED) - set(missing))}
    if missing:
        args.target.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(wheels),
            "--target",
            str(args.target),
            *missing,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            ok = proc.returncode == 0
        except OSError:
            ok = False
        if not ok:  # no pip in the image: a wheel is a zip archive of site-packages
            for d in missing:
                stem = d.replace("-", "_")
                found = [w for w in wheels.glob(f"{stem}-*.whl") if _compatible(w)]
                if not found:
                    sys.exit(
                        f"install: no wheel for {d} in {wheels} for Python "
                        f"{report['python']}; run `make gpu-stage` with internet."
                    )
                with zipfile.ZipFile(found[0]) as z:
                    z.extractall(args.target)
        report["installed"] = missing
        report["how"] = "pip --no-index" if ok else "unzipped"
    print(
        f"python {report['python']}: present {', '.join(report['present']) or 'none'}; "
        f"installed {', '.join(missing) or 'none'} into {args.target}"
    )


# ---------------------------------------------------------------- device


def device(args) -> None:
    import jax

    devs = jax.devices()
    info = {
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devs],
        "jax": jax.__version__,
    }
    _write(args.json, info)
    print(f"jax {info['jax']} backend {info['backend']}: {', '.join(info['devices'])}")
    if args.expect and info["backend"] != args.expect:
        sys.exit(f"device: jax's backend is {info['backend']!r}, expected {args.expect!r}")


# ---------------------------------------------------------------- checks


def _problem(dataset: str, batch: int):
    import jax.numpy as jnp
    import numpy as np

    from toolkit.grads import split_model
    from toolkit.nn import ActivationSpec, build_model

    graphdef, params, state = split_model(build_model(dataset, ActivationSpec("tanh"), seed=0))
    shape = (28, 28, 1) if dataset == "mnist" else (32, 32, 3)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, *shape), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    return graphdef, params, state, x, y


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def _tree_rel(a, b) -> float:
    """||a - b|| / ||b|| over all leaves (float64 on the host)."""
    import jax
    import numpy as np

    da = [np.asarray(x, np.float64) for x in jax.tree.leaves(a)]
    db = [np.asarray(x, np.float64) for x in jax.tree.leaves(b)]
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(da, db, strict=True))
    den = sum(float(np.sum(y**2)) for y in db)
    return (num / den) ** 0.5


def precision_check(dataset: str, batch: int, clip_norm: float = 0.1) -> dict:
    import jax
    import numpy as np

    from toolkit.grads import _per_example as per_example

    graphdef, params, state, x, y = _problem(dataset, batch)
    fast = per_example.clipped_grad(graphdef, clip_norm=clip_norm, implementation="bookkeeping")
    ref = per_example.clipped_grad(graphdef, clip_norm=clip_norm, implementation="vmap")
    got = jax.jit(lambda p, s, a, b: fast(p, s, a, b))(params, state, x, y)
    with jax.default_matmul_precision("highest"):
        want = jax.jit(lambda p, s, a, b: ref(p, s, a, b))(params, state, x, y)
    with jax.default_matmul_precision("default"):
        loose = jax.jit(lambda p, s, a, b: ref(p, s, a, b))(params, state, x, y)
    one = jax.jit(lambda p, s, a, b: fast(p, s, a, b).clipped_sum)
    rows = range(min(16, batch))
    singles = [_tree_norm(one(params, state, x[i : i + 1], y[i : i + 1])) for i in rows]
    out = {
        "dataset": dataset,
        "batch": batch,
        "norm_rel_err": _rel(got.norms, want.norms),
        "sum_rel_err": _tree_rel(got.clipped_sum, want.clipped_sum),
        "default_precision_norm_rel_err": _rel(loose.norms, want.norms),
        "fraction_clipped": float(np.mean(np.asarray(want.norms) > clip_norm)),
        "max_single_clipped_norm_over_C": max(singles) / clip_norm,
    }
    # Tolerances: float32 rounding of sums over ~1e5 terms plus the ghost norms' slack
    # (<= 2e-4 on these CNNs, the pre-training check allows 1e-3); one example's clipped
    # gradient may exceed C only by float32 rounding of its norm.
    out["ok"] = bool(
        out["norm_rel_err"] <= 1e-3
        and out["sum_rel_err"] <= 1e-3
        and out["max_single_clipped_norm_over_C"] <= 1 + 1e-5
    )
    return out


def _tree_norm(tree) -> float:
    import jax
    import numpy as np

    return float(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)) ** 0.5)


def sharding_check(dataset: str, batch: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from toolkit.training import _dpsgd as dpsgd

    graphdef, params, _, x, y = _problem(dataset, batch)
    mech = dpsgd.Mechanism(clip_norm=0.1, noise_multiplier=1.0)
    acc = dpsgd.make_accumulate(graphdef, mech, implementation="bookkeeping")
    zeros = dpsgd.zeros_like(params)
    devices = jax.local_devices()
    n = len(devices) * max(1, batch // len(devices))
    idx, mask = jnp.arange(n, dtype=jnp.int32), jnp.ones(n, bool).at[-3:].set(False)
    plain = acc(params, zeros, x, y, idx, mask)
    mesh = Mesh(np.array(devices), ("data",))
    rep, shard = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    p, z, xs, ys = jax.device_put((params, zeros, x, y), rep)
    i, m = jax.device_put((idx, mask), shard)
    sharded = acc(p, z, xs, ys, i, m)
    out = {
        "dataset": dataset,
        "batch": n,
        "devices": len(devices),
        "sum_rel_diff": _tree_rel(sharded[0], plain[0]),
        "norm_rel_diff": _rel(np.asarray(sharded[1])[:-3], np.asarray(plain[1])[:-3]),
    }
    out["ok"] = bool(out["sum_rel_diff"] <= 1e-5 and out["norm_rel_diff"] <= 1e-5)
    return out


def checks(args) -> None:
    batch = 16 if args.quick else 256
    results = []
    for dataset in ("mnist",) if args.quick else ("mnist", "cifar10"):
        for name, fn in (("precision", precision_check), ("sharding", sharding_check)):
            t0 = time.perf_counter()
            r = {"check": name, **fn(dataset, batch), "seconds": time.perf_counter() - t0}
            results.append(r)
            shown = {k: v for k, v in r.items() if k not in ("check", "dataset", "ok")}
            line = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()
            )
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {name} {dataset}: {line}")
    _write(args.json, results)
    if not all(r["ok"] for r in results):
        sys.exit(1)


# ---------------------------------------------------------------- summary


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(args) -> None:
    """`summary.md` and `summary.json` from what the steps left in `args.out`."""
    from toolkit.runs import rundir

    out = args.out
    steps = []
    for line in (
        (out / "steps.tsv").read_text().splitlines() if (out / "steps.tsv").exists() else []
    ):
        name, rc, secs = line.split("\t")
        steps.append({"step": name, "rc": int(rc), "seconds": float(secs)})
    result: dict = {"steps": steps, "device": _read_json(out / "device.json")}
    lines = ["# GPU check", ""]
    dev = result["device"] or {}
    lines.append(
        f"Device: {', '.join(dev.get('devices', ['unknown']))} "
        f"(jax {dev.get('jax', '?')}, backend {dev.get('backend', '?')})."
    )
    lines += ["", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']:.0f} |" for s in steps]

    run = out / "train"
    try:
        epochs, summ, why = rundir.read_epochs(run), rundir.read_summary(run), "not finished"
    except Exception as e:  # a failed or missing train step: say so, keep the rest
        epochs, summ, why = [], None, f"{type(e).__name__}: {e}"
    if not epochs or summ is None:
        lines += ["", f"Training: no complete run in {run} ({why})."]
    else:
        times = [e.epoch_time_s for e in epochs]
        acc = [e.metrics.get("test_accuracy") for e in epochs]
        eps = summ.epsilon.get(summ.accountant)
        result["train"] = {
            "epochs": len(epochs),
            "test_accuracy": acc,
            "epoch_time_s": times,
            "epsilon": eps,
            "accountant": summ.accountant,
            "per_example_grads": summ.per_example_grads,
        }
        later = (
            f"later epochs average {sum(times[1:]) / len(times[1:]):.2f} s"
            if len(times) > 1
            else "no later epoch"
        )
        lines += [
            "",
            f"Training `{summ.dataset}` ({summ.activation}), {len(epochs)} epochs, "
            f"{summ.num_train} examples, {summ.per_example_grads}: test accuracy "
            f"{acc[-1]:.4f}, eps {eps:.3f} ({summ.privacy}, delta {summ.delta}). "
            f"Epoch times {', '.join(f'{t:.1f}' for t in times)} s; epoch 1 includes "
            f"compilation, {later}.",
        ]

    bench = _read_json(out / "bench" / "results.json")
    if bench:
        result["bench"] = []
        lines += [
            "",
            "| model | B | DP book-keeping flat / non-private | DP ex/s | "
            "non-private ex/s | vmap / non-private |",
            "|---|---|---|---|---|---|",
        ]
        for configs in bench["timing"].values():
            for c in configs:
                m = c["methods"]
                dp, plain = m["toolkit DP bookkeeping, flat"], m["jax non-private"]
                vm = m.get("toolkit DP vmap, flat")
                row = {
                    "dataset": c["dataset"],
                    "batch": c["batch"],
                    "ratio": dp["ratio_median"],
                    "dp_examples_per_s": dp["examples_per_s"],
                    "plain_examples_per_s": plain["examples_per_s"],
                    "vmap_ratio": vm["ratio_median"] if vm else None,
                }
                result["bench"].append(row)
                vtxt = f"{row['vmap_ratio']:.2f}x" if vm else "-"
                lines.append(
                    f"| {c['dataset']} | {c['batch']} | {row['ratio']:.2f}x | "
                    f"{row['dp_examples_per_s']:,.0f} | "
                    f"{row['plain_examples_per_s']:,.0f} | {vtxt} |"
                )
        for r in bench.get("memory", []):
            peak = r.get("device_peak_bytes")
            lines.append(
                f"\nMemory, CIFAR-10 logical batch {r['logical']}, {r['impl']} "
                f"micro-batch {r['micro']}: device peak "
                f"{'n/a' if peak is None else f'{peak / 2**20:,.0f} MiB'}, "
                f"host peak RSS {r['peak_rss'] / 2**20:,.0f} MiB, "
                f"step {r['step_s']:.2f} s."
            )
    chk = _read_json(out / "checks.json")
    if chk:
        result["checks"] = chk
        lines += [""] + [
            f"- {'ok' if c['ok'] else 'FAIL'} {c['check']} {c['dataset']}: "
            + ", ".join(
                f"{k} {v:.3g}" for k, v in c.items() if isinstance(v, float) and k != "seconds"
            )
            for c in chk
        ]
    _write(out / "summary.json", result)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ---------------------------------------------------------------- main


def _write(path: Path | None, obj) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage")
    s.add_argument("--dest", type=Path, default=Path(".gpu_stage"))
    s = sub.add_parser("install")
    s.add_argument("--stage", type=Path, default=Path(".gpu_stage"))
    s.add_argument("--target", type=Path, required=True)
    s.add_argument("--force", action="store_true", help="install even what is importable")
    s = sub.add_parser("device")
    s.add_argument("--json", type=Path)
    s.add_argument("--expect", choices=["gpu", "cpu"])
    s = sub.add_parser("checks")
    s.add_argument("--json", type=Path)
    s.add_argument("--quick", action="store_true")
    s = sub.add_parser("summary")
    s.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    {"stage": stage, "install": install, "device": device, "checks": checks, "summary": summary}[
        args.cmd
    ](args)


if __name__ == "__main__":
    main()
