"""The `toolkit` command line: parses arguments and calls library functions, nothing else.

Bad input (a `ToolkitError`) prints one line to stderr and exits 2, with no
traceback and nothing written; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from toolkit.cli_errors import one_line_errors
from toolkit.cli_inputs import given_options, show_defaults, train_defaults
from toolkit.errors import ToolkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DP-SGD with tempered sigmoid activations: training, accounting and clipping-bias theory.",
)
console = Console(soft_wrap=True)

# What `train --resume RUN` may be given besides RUN (the rest is recorded in the run).
_RESUME_KEEPS = ("resume", "quiet", "tensorboard", "config_lib", "train_lib")


@app.command()
@one_line_errors
@show_defaults(train_defaults())
def train(
    dataset: str = typer.Option(None, help="mnist, fashion-mnist or cifar10."),
    activation: str = typer.Option(None, help="relu, tanh, tempered, sigmoid, elu, gelu."),
    scale: float = typer.Option(None, help="Tempered sigmoid scale s."),
    inverse_temp: float = typer.Option(None, help="Tempered sigmoid inverse temperature T."),
    offset: float = typer.Option(None, help="Tempered sigmoid offset o."),
    epochs: int = typer.Option(None),
    batch_size: int = typer.Option(None, help="Expected logical batch size B (q = B/N)."),
    max_physical_batch: int = typer.Option(None, help="Micro-batch cap (speed/memory only)."),
    per_example: str = typer.Option(
        None, help="Per-example gradients: auto, bookkeeping or vmap (speed only)."
    ),
    optimizer: str = typer.Option(None, help="sgd or adam."),
    lr: float = typer.Option(None, help="Learning rate."),
    momentum: float = typer.Option(None, help="Heavy-ball momentum for sgd."),
    clip_norm: float = typer.Option(None, help="Per-example clipping norm C."),
    clipping: str = typer.Option(None, help="flat (min(1, C/||g||)) or automatic (Bu et al.)."),
    noise_multiplier: float = typer.Option(None, help="sigma; noise std is sigma*C on the sum."),
    target_epsilon: float = typer.Option(None, help="Calibrate sigma to this eps instead."),
    delta: float = typer.Option(None),
    accountant: str = typer.Option(None, help="rdp-classic, rdp or pld (calibration/headline)."),
    sampling: str = typer.Option(None, help="poisson (accounted) or shuffle (labelled)."),
    seed: int = typer.Option(None),
    limit_train: int = typer.Option(None, help="Use only the first N training examples."),
    data_dir: Path = typer.Option(None, help="Directory holding the dataset files."),
    validation: int = typer.Option(
        None, help="Hold out the last V training examples; evaluate on them, not on test."
    ),
    ema_decay: float = typer.Option(
        None, help="Also evaluate an EMA of the iterates (post-processing, no privacy cost)."
    ),
    lr_schedule: str = typer.Option(None, help="constant or cosine (decay to 0 at the end)."),
    warmup_epochs: int = typer.Option(None, help="Linear lr warm-up from 0 over these epochs."),
    augmult: int = typer.Option(
        None, help="K augmented views per example (shift, flip), averaged before clipping."
    ),
    weight_standardization: bool = typer.Option(
        None, "--weight-standardization", help="Scaled weight standardisation of conv kernels."
    ),
    keep_checkpoints: int = typer.Option(
        None, help="Also keep checkpoint-epoch{E}.npz every K epochs (for toolkit bias)."
    ),
    no_privacy: bool = typer.Option(False, "--no-privacy", help="C=inf, sigma=0, same path."),
    preset: str = typer.Option(None, help="Start from a paper setting; flags override it."),
    out: Path = typer.Option(None, help="Run directory to create (config, epochs, summary)."),
    resume: Path = typer.Option(None, help="Continue the run in this directory (no other flag)."),
    config_file: Path = typer.Option(
        None, "--config", help="TOML settings, or a run's config.json to re-run it; flags win."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    tensorboard: Path = typer.Option(
        None, help="Also write per-epoch scalars as TensorBoard events here (extra: tensorboard)."
    ),
) -> None:
    """Train a paper CNN with DP-SGD (or without privacy) and record the run."""
    from toolkit import config as config_lib
    from toolkit import train as train_lib

    if resume is not None:
        others = {k: v for k, v in locals().items() if k not in _RESUME_KEEPS}
        others["config"] = others.pop("config_file")  # its flag is --config
        if given := given_options(others):
            raise ToolkitError(
                f"--resume cannot be combined with {', '.join(given)}: a run continues with "
                "its recorded settings; start a new run (--out) to change them."
            )
        result = train_lib.resume(resume, progress=not quiet, tensorboard=tensorboard)
        _print_summary(result.summary, resume)
        return
    flags = {
        "dataset": dataset, "epochs": epochs, "batch_size": batch_size,
        "max_physical_batch": max_physical_batch, "per_example": per_example,
        "optimizer": optimizer, "lr": lr,
        "momentum": momentum, "clip_norm": clip_norm, "clipping": clipping,
        "noise_multiplier": noise_multiplier, "target_epsilon": target_epsilon,
        "delta": delta, "accountant": accountant, "sampling": sampling, "seed": seed,
        "limit_train": limit_train, "data_dir": str(data_dir) if data_dir else None,
        "validation": validation, "ema_decay": ema_decay, "lr_schedule": lr_schedule,
        "warmup_epochs": warmup_epochs, "augmult": augmult, "keep_checkpoints": keep_checkpoints,
        "weight_standardization": weight_standardization,
    }  # fmt: skip
    file = None
    if config_file is not None:
        from toolkit.config_file import load_settings

        file = load_settings(config_file)
    cfg = config_lib.from_flags(
        flags, preset_name=preset, file=file, activation=activation, scale=scale,
        inverse_temp=inverse_temp, offset=offset, no_privacy=no_privacy,
    )  # fmt: skip
    result = train_lib.train(cfg, out=out, progress=not quiet, tensorboard=tensorboard)
    _print_summary(result.summary, out)


def _in_range(option: str, value, lo, hi, *, upper: str = "", note: str = "") -> None:
    """`lo <= value <= hi` (False for NaN), else a one-line error with the range."""
    if not lo <= value <= hi:
        hi_text = f"{upper}={_num(hi)}" if upper else _num(hi)
        raise ToolkitError(f"{option}={_num(value)} must be in [{_num(lo)}, {hi_text}]{note}.")


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _print_summary(summary, out: Path | None) -> None:
    table = Table(title=f"{summary.dataset} / {summary.activation}", show_header=False)
    for key in ("test_accuracy", "val_accuracy", "ema_test_accuracy", "ema_val_accuracy"):
        if key in summary.metrics:
            table.add_row(key.replace("_", " ").replace("val ", "validation "),
                          f"{summary.metrics[key]:.4f}")  # fmt: skip
    if summary.private:
        table.add_row("noise multiplier", f"{summary.noise_multiplier:.4f}")
        for name, eps in summary.epsilon.items():
            shown = (
                "inf (sigma = 0: no DP guarantee)"
                if eps is None or eps == float("inf")
                else f"{eps:.3f}"
            )
            table.add_row(f"eps ({name})", f"{shown} at delta={summary.delta:g}")
    table.add_row("privacy", summary.privacy)
    table.add_row("per-class acc. std", f"{summary.metrics['per_class_accuracy_std']:.4f}")
    table.add_row("train time", f"{summary.train_time_s:.1f} s (wall time: not covered by eps)")
    if out is not None:
        table.add_row("run directory", str(out))
    console.print(table)


@app.command()
@one_line_errors
def account(
    num_examples: int = typer.Option(60000, "--n", help="Training set size N."),
    batch_size: int = typer.Option(256, help="Expected batch size B; q = B/N."),
    noise_multiplier: float = typer.Option(None, help="sigma."),
    epochs: float = typer.Option(60, help="Epochs; steps = epochs * (N // B)."),
    delta: float = typer.Option(1e-5),
    target_epsilon: float = typer.Option(None, help="Also print the sigma reaching this eps."),
) -> None:
    """Print eps for the Poisson-subsampled Gaussian under every accountant (and sigma for a target)."""  # noqa: E501
    from toolkit import accounting
    from toolkit.config import MAX_EPOCHS, MAX_STEPS, MAX_TRAIN
    from toolkit.sampling import steps_per_epoch

    _in_range("--n", num_examples, 1, MAX_TRAIN)
    _in_range("--batch-size", batch_size, 1, num_examples, upper="N")
    if not (math.isfinite(epochs) and 0 < epochs <= MAX_EPOCHS):
        raise ToolkitError(f"--epochs={epochs} must be finite and in (0, {MAX_EPOCHS}].")
    if noise_multiplier is None and target_epsilon is None:
        raise ToolkitError("give --noise-multiplier, --target-epsilon, or both.")
    if noise_multiplier is not None:
        _in_range("--noise-multiplier", noise_multiplier, 0, 1e6, note=" (0: eps = inf)")
    if target_epsilon is not None and not 0 < target_epsilon <= 1000:
        raise ToolkitError(f"--target-epsilon={target_epsilon} must be in (0, 1000].")
    if not 0 < delta < 1:
        raise ToolkitError(f"--delta={delta} must be in (0, 1).")
    q = batch_size / num_examples
    per_epoch = steps_per_epoch(num_examples, batch_size)
    steps = int(epochs * per_epoch)  # as `toolkit train` runs them
    if not 1 <= steps <= MAX_STEPS:
        raise ToolkitError(
            f"--epochs={epochs:g} gives {steps} steps (epochs * (N // B) = {epochs:g} * "
            f"{per_epoch}); allowed: 1 to {MAX_STEPS} steps."
        )
    table = Table(title=f"Poisson sampling, q={q:.5g}, steps={steps}, delta={delta:g}")
    table.add_column("accountant")
    if noise_multiplier is not None:
        table.add_column(f"eps at sigma={noise_multiplier:g}")
    if target_epsilon is not None:
        table.add_column(f"sigma for eps<={target_epsilon:g}")
    for name in accounting.ACCOUNTANTS:
        row = [name]
        kw = dict(accountant=name, sampling_prob=q, steps=steps, delta=delta)
        if noise_multiplier is not None:
            eps = accounting.epsilon(noise_multiplier=noise_multiplier, **kw)
            row.append(f"{eps:.4f}" if math.isfinite(eps) else "inf (sigma = 0: no DP guarantee)")
        if target_epsilon is not None:
            row.append(
                f"{accounting.calibrate_noise_multiplier(target_epsilon=target_epsilon, **kw):.4f}"
            )
        table.add_row(*row)
    console.print(table)


@app.command()
@one_line_errors
def sweep(
    spec: Path = typer.Argument(..., help="Sweep file (TOML: \\[base] and \\[grid] tables)."),
    root: Path = typer.Option(..., help="Directory that holds one run directory per grid point."),
    executor: str = typer.Option("local", help="local (process pool) or ray."),
    workers: int = typer.Option(1, help="Local processes; each run uses all cores it is given."),
    address: str = typer.Option(None, help="Ray cluster address (default: start a local one)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs, train nothing."),
) -> None:
    """Run a grid of configs; finished runs are skipped and unfinished ones resumed.

    The whole sweep (every grid point, the root, every run directory) is validated
    before the first run starts.
    """
    from experiments import sweep as sweep_lib
    from experiments.sweep_progress import SweepProgress
    from toolkit import outputs

    if not 1 <= workers <= 1024:
        raise ToolkitError(f"--workers={workers} must be in [1, 1024].")
    outputs.check_dir("--root", root)
    runs = sweep_lib.load(spec)
    if dry_run:
        console.print("\n".join(sweep_lib.describe(runs, root)), markup=False, highlight=False)
        return
    sweep_lib.check_executor(executor, workers)
    sweep_lib.plan(runs, root)
    with SweepProgress(len(runs), root) as progress:
        sweep_lib.run_sweep(
            runs, root, executor=executor, workers=workers, address=address, on_done=progress.done
        )


@app.command()
@one_line_errors
def pareto(
    runs: list[Path] = typer.Argument(..., help="Run directories or directories of runs."),
    accountant: str = typer.Option("rdp-classic", help="Which stored eps is the x axis."),
    out: Path = typer.Option(..., help="Figure path; writes OUT.png and OUT.pdf."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing OUT.png/.pdf."),
) -> None:
    """Figure 3: test accuracy against eps for each setting, with the Pareto frontier."""
    from experiments import plots, records

    _check_figure_out(out, overwrite)

    written = plots.pareto_figure(
        records.find_runs(runs), accountant=records.check_accountant(accountant), out=out
    )
    console.print("wrote " + ", ".join(map(str, written)))


@app.command()
@one_line_errors
def table(
    runs: list[Path] = typer.Argument(..., help="Run directories or directories of runs."),
    accountant: str = typer.Option("rdp-classic", help="Which stored eps to report."),
    out: Path = typer.Option(None, help="Writes OUT.md and OUT.csv."),
    best_lr: bool = typer.Option(False, "--best-lr", help="Table 4: best lr per setting."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT.md/.csv if they exist."),
) -> None:
    """Table 3: final test accuracy (mean +- std over seeds) per setting, with eps."""
    from experiments import records, tables
    from toolkit import outputs
    from toolkit.io import atomic_write_text

    files = outputs.file_set(out, (".md", ".csv")) if out is not None else []
    if out is not None:
        outputs.check_files("--out", files, value=out, overwrite=overwrite)

    found = records.find_runs(runs)
    acc = records.check_accountant(accountant)
    rows = (
        tables.best_lr_rows(found, accountant=acc)
        if best_lr
        else tables.accuracy_rows(found, accountant=acc)
    )
    markdown = tables.to_markdown(rows, note=tables.BEST_LR_NOTE if best_lr else None)
    console.print(markdown, markup=False)
    if out is not None:
        with outputs.writing("--out", out):
            files[0].parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(files[0], markdown)
            atomic_write_text(files[1], tables.to_csv(rows))


@app.command()
@one_line_errors
def figures(
    runs: list[Path] = typer.Argument(..., help="Run directories or directories of runs."),
    kind: str = typer.Option(..., help="grad-norms (Fig. 4), act-norms (Fig. 5) or grid (Fig. 2)."),
    accountant: str = typer.Option("rdp-classic", help="eps shown in titles."),
    out: Path = typer.Option(..., help="Figure path; writes OUT.png and OUT.pdf."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing OUT.png/.pdf."),
) -> None:
    """Figures 2, 4 and 5 from run records."""
    from experiments import plots, records

    if kind not in ("grad-norms", "act-norms", "grid"):
        raise ToolkitError(f"--kind={kind!r} is unknown; expected grad-norms, act-norms or grid.")
    _check_figure_out(out, overwrite)

    found = records.find_runs(runs)
    acc = records.check_accountant(accountant)
    if kind == "grad-norms":
        written = plots.trace_figure(
            found, field="grad_norm.mean", ylabel="mean pre-clip per-example grad norm",
            out=out, accountant=acc,
        )  # fmt: skip
    elif kind == "act-norms":
        written = plots.trace_figure(
            found, field="first_conv_activation_norm", ylabel="L2 norm of conv1 activations",
            out=out, accountant=acc,
        )  # fmt: skip
    elif kind == "grid":
        written = plots.grid_figure(found, accountant=acc, out=out)
        _, best = plots.best_triplets(found)
        console.print(
            f"mean of best 10% triplets: s={best[0]:.3f} T={best[1]:.3f} o={best[2]:.3f} "
            "(chosen by test accuracy among the runs: not covered by one run's eps)"
        )
    else:
        raise ToolkitError(f"kind={kind!r} is unknown; expected grad-norms, act-norms or grid.")
    console.print("wrote " + ", ".join(map(str, written)))


def _check_figure_out(out: Path, overwrite: bool) -> None:
    from toolkit import outputs
    from toolkit.plotting import figure_files

    outputs.check_files("--out", figure_files(out), value=out, overwrite=overwrite)


@app.command()
@one_line_errors
def bias(
    runs: list[Path] = typer.Argument(
        ..., help="toolkit train run directories (--keep-checkpoints)."
    ),
    sample: int = typer.Option(1000, help="Training examples to measure on (fixed by --seed)."),
    seed: int = typer.Option(0, help="Seed of the sample."),
    clip_norm: float = typer.Option(
        None,
        help="C to clip at (default: the run's; needed for non-private runs: give the DP run's C).",
    ),
    out: Path = typer.Option(..., help="Writes OUT.json, OUT.png and OUT.pdf."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Clipping bias over training: cosine and norm ratio of mean clipped vs mean gradient,
    fraction clipped, per-layer shares. Diagnostics on private data, not covered by eps."""
    from experiments.bias_plots import bias_figure
    from toolkit import bias as bias_lib
    from toolkit import outputs
    from toolkit.plotting import figure_files

    if not 1 <= sample <= 1_000_000:
        raise ToolkitError(f"--sample={sample} must be in [1, 1000000].")
    if not 0 <= seed < 2**32:
        raise ToolkitError(f"--seed={seed} must be in [0, 2^32).")
    files = [*outputs.file_set(out, (".json",)), *figure_files(out)]
    outputs.check_files("--out", files, value=out, overwrite=overwrite)
    for r in runs:  # every run checked before the first is measured
        bias_lib.check_run(r, clip_norm=clip_norm)
    results = [
        bias_lib.run_bias(r, sample_size=sample, seed=seed, clip_norm=clip_norm) for r in runs
    ]
    for r in results:
        shown = ", ".join(f"e{p.epoch}: cos {p.cosine:.4f} ratio {p.norm_ratio:.3f} "
                          f"clipped {p.fraction_clipped:.3f}" for p in r.points)  # fmt: skip
        console.print(f"{r.run} ({r.label}, C={r.clip_norm:g}): {shown}", markup=False)
    written = [bias_lib.write_json(results, out), *bias_figure(results, out=out)]
    console.print(f"{bias_lib.DIAGNOSTIC_LABEL}; wrote " + ", ".join(map(str, written)))


def _register() -> None:
    from toolkit.cli_audit import audit

    app.command("audit")(audit)
    from analysis.cli import bound_check

    app.command("bound-check")(bound_check)
    for command in app.registered_commands:  # "[default: none]" where no value is implied
        show_defaults({})(command.callback)


_register()
