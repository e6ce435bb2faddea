"""Why is the non-private JAX step of the paper's CNNs slower than PyTorch's on the CPU?
(issue 23, part 3; findings in docs/xla_cpu.md)

    python -m benchmarks.xla_cpu                       # every variant, interleaved rounds
    python -m benchmarks.xla_cpu --variants default slice-maxpool onednn --rounds 9
    python -m benchmarks.xla_cpu --census              # how each variant lowers the convs
    python -m benchmarks.xla_cpu --profile default     # where a step's time goes, by op kind
    python -m benchmarks.xla_cpu --list                # the variants

The step is the benchmark's "jax non-private" step: `value_and_grad` of the mean softmax
cross-entropy of `build_model(dataset, ActivationSpec("tanh"), seed=0)` and an
`optax.sgd` update, jitted, on one fixed batch passed as arguments.

Each variant (XLA_FLAGS, an allocator setting, a CPU mask, or a rewrite of the model's
forward pass) runs in its own worker process, since XLA and glibc read their settings at
start-up. The workers compile once, then wait; the parent asks them in turn, round after
round (the order rotated each round), to time a few steps of each size, so load on this
shared machine hits every variant alike. Each variant's time is divided by the default's
of the same round and size; the report is the median of those ratios over rounds (with
min-max), the load average before and after, and whether the variant computes the same
step: the loss and the updated parameters after one step from the same start, against the
default's (max abs difference).

"default" is this process's environment as it is: without the flag `toolkit train` adds
(`toolkit.cli._launch.TUNED_XLA_FLAGS`, the variant "no-ynn-conv") and with glibc's
default allocator (`TUNED_MALLOC` is the variant "malloc-tuned").
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = ["mnist:256", "mnist:1024", "cifar10:256"]
LR = 0.05
# Steps timed per size in one round (a round of every variant takes about 1-2 s per variant).
STEPS = {"mnist": 6, "cifar10": 2}


def _flags(*flags: str) -> dict[str, str]:
    return {"XLA_FLAGS": " ".join(flags)}


# name -> (environment, model options, CPU list for taskset or None)
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str], str | None]] = {
    "default": ({}, {}, None),
    "default-again": ({}, {}, None),  # an A/A control: the noise of the measurement
    # XLA:CPU flags of jaxlib 0.10.2 (the list: an invalid value prints them, see the doc)
    "no-thunk-runtime": (_flags("--xla_cpu_use_thunk_runtime=false"), {}, None),  # deprecated
    "eigen-1-thread": (_flags("--xla_cpu_multi_thread_eigen=false"), {}, None),
    "fast-math": (_flags("--xla_cpu_enable_fast_math=true"), {}, None),
    "no-xnnpack": (_flags("--xla_cpu_use_xnnpack=false"), {}, None),
    "xnn-graph-greedy": (
        _flags("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
        {},
        None,
    ),
    "xnn-fusions": (_flags("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce"), {}, None),
    "no-ynn-conv": (
        _flags("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"),
        {},
        None,
    ),
    "onednn": (_flags("--xla_cpu_use_onednn=true"), {}, None),
    "onednn-custom-call": (
        _flags("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true"),
        {},
        None,
    ),
    "onednn-fusions": (
        _flags("--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce"),
        {},
        None,
    ),
    "onednn-dots": (  # oneDNN takes the dense layers only once YNNPACK lets go of them
        _flags(
            "--xla_cpu_experimental_onednn_fusion_type=dot",
            "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
        ),
        {},
        None,
    ),
    "eigen-convs-dots": (
        _flags("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"),
        {},
        None,
    ),
    "no-fusion-emitters": (_flags("--xla_cpu_use_fusion_emitters=false"), {}, None),
    "vector-width-512": (_flags("--xla_cpu_prefer_vector_width=512"), {}, None),
    "opt-fast-runtime": (_flags("--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME"), {}, None),
    "sched-concurrency": (
        _flags("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"),
        {},
        None,
    ),
    # the process
    "malloc-tuned": ({}, {}, None),  # TUNED_MALLOC, filled in below
    "one-core": ({}, {}, "0"),  # taskset -c 0: one intra-op thread's worth of CPU
    # the model's forward pass, rewritten for a test only (same parameters)
    "functional": ({}, {"impl": "functional"}, None),  # the rewrite itself, NHWC
    "nchw": ({}, {"impl": "functional", "layout": "NCHW"}, None),
    "slice-maxpool": ({}, {"impl": "functional", "pool": "slices"}, None),
    "select-maxpool": ({}, {"impl": "functional", "pool": "select"}, None),
    "reshape-avgpool": ({}, {"impl": "functional", "avgpool": "reshape"}, None),
    "precision-highest": ({}, {"precision": "highest"}, None),
    # another jax: the step without flax and optax (plain SGD, log-softmax loss), on this jax
    # and on jax/jaxlib 0.4.30 (before the thunk runtime and YNNPACK; its own venv, see
    # docs/xla_cpu.md; the interpreter is $OLD_JAX_PYTHON, default /tmp/jaxold/bin/python)
    "pure": ({}, {"impl": "pure"}, None),
    "pure-jax-0.4.30": ({}, {"impl": "pure", "python": "old"}, None),
    # PyTorch, benchmarks/torch_steps.py (needs the bench extra)
    "torch": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"impl": "torch"}, None),
}


def _tuned_malloc() -> dict[str, str]:
    from toolkit.cli import TUNED_MALLOC

    return dict(TUNED_MALLOC)


# ---------------------------------------------------------------- the steps (worker side)


def _batch(dataset: str, batch: int):
    """A fixed batch (NHWC images, labels). MNIST-like images are mostly zeros with a zero
    border, so the max-pools see ties, as on the real data."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (28, 28, 1) if dataset == "mnist" else (32, 32, 3)
    images = rng.random((batch, *shape), dtype=np.float32)
    if dataset == "mnist":
        images[images < 0.7] = 0.0
        images[:, :4], images[:, -4:], images[:, :, :4], images[:, :, -4:] = 0, 0, 0, 0
    return images, rng.integers(0, 10, batch)


def _maxpool_slices(x):
    """2x2, stride 1, VALID max-pool of NHWC `x` as the max of four shifted slices: the
    gradient is elementwise selects instead of reduce-window's argmax and a scatter."""
    import jax.numpy as jnp

    top = jnp.maximum(x[:, :-1, :-1], x[:, :-1, 1:])
    bottom = jnp.maximum(x[:, 1:, :-1], x[:, 1:, 1:])
    return jnp.maximum(top, bottom)


def _maxpool_select(x):
    """The same pool as a chain of selects that keeps the first maximum in row-major window
    order, as XLA's select-and-scatter does: the gradient goes where reduce-window's goes,
    ties included (zero backgrounds make ties), with no argmax or scatter."""
    import jax.numpy as jnp

    window = [x[:, :-1, :-1], x[:, :-1, 1:], x[:, 1:, :-1], x[:, 1:, 1:]]
    out = window[0]
    for v in window[1:]:
        out = jnp.where(v > out, v, out)
    return out


def _functional_forward(dataset: str, opts: dict[str, str]):
    """forward(params: pure dict, images NHWC) -> logits, the same network as
    toolkit.nn's model, in the layout and with the pooling `opts` ask for."""
    import jax
    import jax.numpy as jnp

    nchw = opts.get("layout", "NHWC") == "NCHW"
    spatial = (2, 3) if nchw else (1, 2)
    window = (1, 1, 2, 2) if nchw else (1, 2, 2, 1)  # flax's max_pool and avg_pool, in lax

    def conv(p, x, stride, padding):
        kernel = p["kernel"]  # HWIO
        if nchw:
            dims, kernel = ("NCHW", "OIHW", "NCHW"), jnp.transpose(kernel, (3, 2, 0, 1))
        else:
            dims = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), padding, dimension_numbers=dims
        )
        return y + (p["bias"][:, None, None] if nchw else p["bias"])

    def maxpool(x):
        if opts.get("pool") in ("slices", "select"):
            pool = _maxpool_slices if opts["pool"] == "slices" else _maxpool_select
            if nchw:
                return jnp.transpose(pool(jnp.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))
            return pool(x)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, (1, 1, 1, 1), "VALID")

    def avgpool(x):
        if opts.get("avgpool") == "reshape":
            if nchw:
                b, c, h, w = x.shape
                return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
            b, h, w, c = x.shape
            return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID") / 4.0

    def mnist(p, x):
        if nchw:
            x = jnp.transpose(x, (0, 3, 1, 2))
        x = maxpool(jnp.tanh(conv(p["conv1"], x, 2, "SAME")))
        x = maxpool(jnp.tanh(conv(p["conv2"], x, 2, "VALID")))
        if nchw:
            x = jnp.transpose(x, (0, 2, 3, 1))  # flatten in NHWC order, as fc1 expects
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
        return x @ p["fc2"]["kernel"] + p["fc2"]["bias"]

    def cifar(p, x):
        if nchw:
            x = jnp.transpose(x, (0, 3, 1, 2))
        for i in range(7):
            x = jnp.tanh(conv(p["convs"][i], x, 1, "SAME"))
            if i in (1, 3, 5):
                x = avgpool(x)
        return jnp.mean(conv(p["head"], x, 1, "SAME"), axis=spatial)

    return mnist if dataset == "mnist" else cifar


def _params_file(folder: str, dataset: str) -> Path:
    return Path(folder) / f"params_{dataset}.npz"


def dump_params(folder: str) -> None:
    """The models' initial parameters, for workers that run without flax (an older jax)."""
    import numpy as np
    from flax import nnx

    from toolkit.nn import ActivationSpec, build_model

    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    for dataset in ("mnist", "cifar10"):
        model = build_model(dataset, ActivationSpec("tanh"), seed=0)
        pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        arrays = {k: np.asarray(v) for k, v in flat(pure).items()}
        np.savez(_params_file(folder, dataset), **arrays)


def _load_params(folder: str, dataset: str) -> dict:
    import jax.numpy as jnp
    import numpy as np

    tree: dict = {}
    with np.load(_params_file(folder, dataset)) as data:
        for key in data.files:
            *path, leaf = (int(k) if k.isdigit() else k for k in key.split("/"))
            node = tree
            for k in path:
                node = node.setdefault(k, {})
            node[leaf] = jnp.asarray(data[key])
    return tree


def _jax_step(dataset: str, batch: int, opts: dict[str, str]):
    """(run, check, compiled): `run()` runs one jitted training step and blocks; `check()`
    returns (loss, flat updated parameters) of one step from the start, in a fixed order."""
    import jax
    import jax.numpy as jnp

    if opts.get("precision"):
        jax.config.update("jax_default_matmul_precision", opts["precision"])
    images, labels = map(jnp.asarray, _batch(dataset, batch))

    if opts.get("impl") == "pure":  # no flax, no optax: the same step on an older jax too
        state, opt_state = _load_params(opts["params"], dataset), ()
        forward = _functional_forward(dataset, opts)

        @jax.jit
        def step(p, opt_state, images, labels):
            def mean_loss(p):
                logp = jax.nn.log_softmax(forward(p, images))
                return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

            loss, grads = jax.value_and_grad(mean_loss)(p)
            return jax.tree.map(lambda a, g: a - LR * g, p, grads), opt_state, loss

        args = (state, opt_state, images, labels)
        compiled = step.lower(*args).compile()
        return _runners(compiled, args)

    import optax
    from flax import nnx

    from toolkit.nn import ActivationSpec, build_model

    graphdef, params = nnx.split(build_model(dataset, ActivationSpec("tanh"), seed=0), nnx.Param)
    opt = optax.sgd(LR)
    if opts.get("impl") == "functional":
        forward, state = _functional_forward(dataset, opts), nnx.to_pure_dict(params)
    else:

        def forward(p, x):
            return nnx.merge(graphdef, p)(x)

        state = params

    @jax.jit
    def step(p, opt_state, images, labels):
        def mean_loss(p):
            logits = forward(p, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(mean_loss)(p)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    args = (state, opt.init(state), images, labels)
    compiled = step.lower(*args).compile()
    return _runners(compiled, args)


def _runners(compiled, args):
    import jax
    import numpy as np

    def run():
        jax.block_until_ready(compiled(*args))

    def check():
        new, _, loss = compiled(*args)
        if not isinstance(new, dict):  # an nnx.State
            from flax import nnx

            new = nnx.to_pure_dict(new)
        flat = jax.tree.leaves(new)  # sorted keys: the same order for every variant
        return float(loss), np.concatenate([np.ravel(np.asarray(a)) for a in flat])

    return run, check, compiled


def _torch_step(dataset: str, batch: int):
    import numpy as np
    import torch
    from torch import nn

    from benchmarks.torch_steps import cifar10_cnn, mnist_cnn

    torch.set_num_threads(os.cpu_count() or 1)
    build = mnist_cnn if dataset == "mnist" else cifar10_cnn
    images, labels = _batch(dataset, batch)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()

    def run():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return run, model, x, y, loss_fn


def _fingerprint(hlo: str) -> str:
    """A hash of the program without instruction names and metadata."""
    text = re.sub(r"metadata=\{[^}]*\}|%[\w.\-]+|HloModule [^\n]*|stack_frame_id=\d+", "", hlo)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _census(hlo: str) -> dict[str, int]:
    """How the optimised HLO computes the step: the entry instructions that call a library
    (YNNPACK, XNNPACK, oneDNN), the convolutions XLA emits itself, and the scatters and
    while loops (the max-pool's gradient)."""
    count: collections.Counter = collections.Counter()
    for _name, _shape, op, line, body, _meta in _entry_ops(hlo):
        lib = next((k for k in ("ynn", "xnn", "onednn") if f"__{k}" in line), None)
        conv = "convolution(" in body
        if lib:
            count[f"{lib} {'convs' if conv else 'other'}"] += 1
        elif conv:
            count["XLA convs"] += 1
        elif re.search(r"\bscatter\(", body):
            count["scatters"] += 1
        elif op == "while":
            count["while loops"] += 1
    return dict(sorted(count.items()))


def worker(args) -> None:
    """Build every size for one variant, then answer `time SIZE K` lines on stdin."""
    opts = json.loads(args.opts)
    steps, info = {}, {}
    for size in args.sizes:
        dataset, batch = size.split(":")
        t0 = time.perf_counter()
        if opts.get("impl") == "torch":
            run = _torch_step(dataset, int(batch))[0]
        else:
            run, check, compiled = _jax_step(dataset, int(batch), opts)
            loss, flat = (float("nan"), None) if args.compile_only else check()
            path = Path(args.out) / f"{args.name}_{dataset}_{batch}.npy"
            import numpy as np

            if flat is not None:
                np.save(path, flat)
            text = compiled.as_text()
            info[size] = {"loss": loss, "params": str(path), "census": _census(text)}
            # the program without its names: equal for two variants = the same program
            info[size]["hlo"] = _fingerprint(text)
        if args.compile_only:
            info[size]["setup_s"] = time.perf_counter() - t0
            continue
        run()
        run()
        info.setdefault(size, {})["setup_s"] = time.perf_counter() - t0
        steps[size] = run
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        size, k = cmd[1], int(cmd[2])
        times = []
        for _ in range(k):
            t0 = time.perf_counter()
            steps[size]()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"t": statistics.median(times)}), flush=True)


# ---------------------------------------------------------------- profile


def _entry_ops(hlo: str):
    """(name, shape, op, line, line + called computation, op_name metadata) for each
    instruction of the entry computation."""
    comps: dict[str, str] = {}
    for block in re.split(r"\n(?=%|ENTRY)", hlo):
        head = re.match(r"(?:ENTRY )?%?([\w.\-]+)", block)
        if head:
            comps[head.group(1)] = block
    for line in hlo[hlo.index("ENTRY") :].splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+(?: \S+)*?) (\w[\w\-]*)\(", line)
        if not m:
            continue
        name, shape, op = m.groups()
        called = re.search(r"calls=%([\w.\-]+)", line)
        body = line + (comps.get(called.group(1), "") if called else "")
        meta = re.search(r'op_name="([^"]*)"', line)
        yield name, shape, op, line, body, meta.group(1) if meta else ""


def _classify(hlo: str, batch: int) -> dict[str, str]:
    """{entry instruction name: kind of op}."""
    kinds = {}
    for name, shape, _op, _line, body, meta in _entry_ops(hlo):
        if "convolution(" in body:
            first = re.match(r"\(?f32\[(\d+)", shape)
            out_batch = int(first.group(1)) if first else -1
            if meta and "transpose(" not in meta:
                kind = "conv forward"
            elif out_batch == batch:
                kind = "conv backward-input"
            else:
                kind = "conv backward-filter"
        elif re.search(r"\bdot\(", body):
            kind = "dot (dense layers)"
        elif re.search(r"reduce-window\(|scatter\(|iota\(", body) or shape.startswith("s32"):
            kind = "pooling (reduce-window, argmax, scatter)"
        elif "transpose" in name or "copy" in name:
            kind = "layout copies (transpose)"
        else:
            kind = "elementwise, reductions, other"
        kinds[name] = kind
    return kinds


def profile(args) -> None:
    """Trace a few steps of one variant (this process: run it with the variant's XLA_FLAGS)
    and print the time per op kind, from the compiled HLO's instruction names."""
    import glob

    opts = json.loads(args.opts)
    for size in args.sizes:
        dataset, batch = size.split(":")
        if opts.get("impl") == "torch":
            _profile_torch(dataset, int(batch), args.profile_steps)
            continue
        import jax
        from jax.profiler import ProfileData

        run, _, compiled = _jax_step(dataset, int(batch), opts)
        kinds = _classify(compiled.as_text(), int(batch))
        for _ in range(3):
            run()
        wall = []
        for _ in range(args.profile_steps):
            t0 = time.perf_counter()
            run()
            wall.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as d:
            jax.profiler.start_trace(d)
            for _ in range(args.profile_steps):
                run()
            jax.profiler.stop_trace()
            trace = sorted(glob.glob(f"{d}/**/*.xplane.pb", recursive=True))[-1]
            data = ProfileData.from_file(trace)
            per_kind: collections.Counter = collections.Counter()
            per_op: collections.Counter = collections.Counter()
            for plane in data.planes:
                for line in plane.lines:
                    for ev in line.events:
                        if ev.name in kinds:
                            per_kind[kinds[ev.name]] += ev.duration_ns / 1e6 / args.profile_steps
                            per_op[ev.name] += ev.duration_ns / 1e6 / args.profile_steps
        total = sum(per_kind.values())
        print(
            f"\n{args.name} {size}: step {statistics.median(wall) * 1e3:.1f} ms (untraced "
            f"median of {len(wall)}); op time summed over threads {total:.1f} ms"
        )
        for kind, ms in per_kind.most_common():
            print(f"  {kind:42s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
        print(
            "  top ops:", ", ".join(f"{n} {ms:.1f} ({kinds[n]})" for n, ms in per_op.most_common(8))
        )


def _profile_torch(dataset: str, batch: int, n: int) -> None:
    import torch

    run = _torch_step(dataset, batch)[0]
    for _ in range(3):
        run()
    wall = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        wall.append(time.perf_counter() - t0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            run()
    rows = [(e.key, e.self_cpu_time_total / 1e3 / n) for e in prof.key_averages()]
    rows.sort(key=lambda r: -r[1])
    total = sum(ms for _, ms in rows)
    print(
        f"\ntorch {dataset}:{batch}: step {statistics.median(wall) * 1e3:.1f} ms; "
        f"self CPU time {total:.1f} ms"
    )
    for key, ms in rows[:12]:
        print(f"  {key:42s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")


# ---------------------------------------------------------------- driver


def _spawn(name: str, sizes: list[str], out: str, mode: list[str]) -> subprocess.Popen:
    env_extra, opts, cpus = VARIANTS[name]
    if name == "malloc-tuned":
        env_extra = _tuned_malloc()
    env = dict(os.environ)
    for k, v in env_extra.items():
        env[k] = f"{env[k]} {v}" if k == "XLA_FLAGS" and env.get(k) else v
    python = sys.executable
    if opts.get("python") == "old":
        python = os.environ.get("OLD_JAX_PYTHON", "/tmp/jaxold/bin/python")
    if opts.get("impl") == "pure":
        opts = {**opts, "params": out}
        if not _params_file(out, "cifar10").exists():
            dump = [sys.executable, "-m", "benchmarks.xla_cpu", "--dump-params", out]
            subprocess.run(dump, check=True)
    cmd = [python, "-m", "benchmarks.xla_cpu", "--worker", name, "--out", out,
           "--opts", json.dumps(opts), "--sizes", *sizes, *mode]  # fmt: skip
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _ask(proc: subprocess.Popen, line: str | None = None) -> dict:
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    reply = proc.stdout.readline()
    if not reply:
        raise RuntimeError(f"worker exited (rc {proc.wait()})")
    return json.loads(reply)


def compare(args) -> None:
    import numpy as np

    names = list(dict.fromkeys(["default", *args.variants]))
    load0 = os.getloadavg()
    out = tempfile.mkdtemp(prefix="xla_cpu_")
    ready, workers = {}, {}
    for name in names:  # one at a time: compilation is not timed, but keeps the CPUs busy
        proc = _spawn(name, args.sizes, out, [])
        try:
            ready[name] = _ask(proc)["ready"]
            workers[name] = proc
        except (RuntimeError, json.JSONDecodeError) as e:
            print(f"{name}: skipped ({e})", file=sys.stderr)
            proc.kill()
    names = [n for n in names if n in workers]
    times = {(n, s): [] for n in names for s in args.sizes}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for size in args.sizes:
            k = STEPS[size.split(":")[0]]
            for name in order:
                times[name, size].append(_ask(workers[name], f"time {size} {k}")["t"])
        print(f"round {r + 1}/{args.rounds} load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    for proc in workers.values():
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait()
    load1 = os.getloadavg()

    result = {"rounds": args.rounds, "load_before": load0, "load_after": load1, "rows": []}
    print(
        f"\n{args.rounds} interleaved rounds; load average {load0[0]:.1f} before, "
        f"{load1[0]:.1f} after; ratio = variant / default, same round and size (median, min-max)"
    )
    print(f"{'variant':20s}" + "".join(f"{s:>30s}" for s in args.sizes) + "   same step?")
    for name in names:
        cells, same = [], []
        row = {"variant": name, "sizes": {}}
        for size in args.sizes:
            ratios = [t / b for t, b in zip(times[name, size], times["default", size])]
            med_ms = statistics.median(times[name, size]) * 1e3
            cells.append(
                f"{statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
                f"{med_ms:7.1f} ms"
            )
            row["sizes"][size] = {"ratio": statistics.median(ratios), "min": min(ratios),
                                  "max": max(ratios), "median_ms": med_ms}  # fmt: skip
            mine, base = ready[name].get(size, {}), ready["default"][size]
            if "params" in mine:
                d = float(np.max(np.abs(np.load(mine["params"]) - np.load(base["params"]))))
                same.append(f"{abs(mine['loss'] - base['loss']):.0e}/{d:.0e}")
                row["sizes"][size]["loss_diff"] = abs(mine["loss"] - base["loss"])
                row["sizes"][size]["param_diff"] = d
                row["sizes"][size]["census"] = mine["census"]
        result["rows"].append(row)
        print(f"{name:20s}" + "".join(f"{c:>30s}" for c in cells) + "   " + " ".join(same))
    print("same step? = |loss - default's| / max |updated params - default's|, per size")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def census(args) -> None:
    names = list(dict.fromkeys(["default", *args.variants]))
    out = tempfile.mkdtemp(prefix="xla_cpu_")
    for name in names:
        if VARIANTS[name][1].get("impl") == "torch":
            continue
        proc = _spawn(name, args.sizes, out, ["--compile-only"])
        try:
            info = _ask(proc)["ready"]
        except (RuntimeError, json.JSONDecodeError) as e:
            print(f"{name}: failed ({e})")
            continue
        finally:
            proc.kill()
        for size, i in info.items():
            c = ", ".join(f"{k} {v}" for k, v in i["census"].items() if v)
            print(f"{name:20s} {size:12s} HLO {i['hlo']}  setup {i['setup_s']:5.1f} s  {c}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "default"])
    p.add_argument("--sizes", nargs="+", default=SIZES)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--census", action="store_true", help="compile only: how convs are lowered")
    p.add_argument("--profile", metavar="VARIANT", help="op-kind breakdown of one variant")
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument("--list", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dump-params", help=argparse.SUPPRESS)
    args = p.parse_args()
    unknown = [
        v for v in args.variants + ([args.profile] if args.profile else []) if v not in VARIANTS
    ]
    if unknown:
        p.error(f"unknown variants {unknown}; --list shows them")
    if args.dump_params:
        dump_params(args.dump_params)
    elif args.list:
        for name, (env, opts, cpus) in VARIANTS.items():
            print(f"{name:20s} {env or ''} {opts or ''} {'taskset -c ' + cpus if cpus else ''}")
    elif args.profile_worker:
        args.name = args.worker
        profile(args)
    elif args.worker:
        args.name = args.worker
        worker(args)
    elif args.profile:
        proc = _spawn(args.profile, args.sizes, tempfile.mkdtemp(),
                      ["--profile-worker", "--profile-steps", str(args.profile_steps)])  # fmt: skip
        proc.stdin.close()
        sys.stdout.write(proc.stdout.read())
        proc.wait()
    elif args.census:
        census(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
