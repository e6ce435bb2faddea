"""The `toolkit` command line: parses arguments and calls library functions, nothing else.

Bad input (a `ToolkitError`) prints one line to stderr and exits 2, with no
traceback and nothing written; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import math
from importlib.metadata import entry_points
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from toolkit.base import ToolkitError
from toolkit.cli._errors import one_line_errors
from toolkit.cli._inputs import given_options, show_defaults, train_defaults

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DP-SGD with tempered sigmoid activations: training, accounting and clipping-bias theory.",
)
console = Console(soft_wrap=True)
PLUGIN_GROUP = "toolkit.commands"

# What `train --resume RUN` may be given besides RUN (the rest is recorded in the run).
_RESUME_KEEPS = ("resume", "quiet", "tensorboard", "config_lib", "train_lib")


@app.command()
@one_line_errors
@show_defaults(train_defaults())
def train(
    dataset: str = typer.Option(None, help="mnist, fashion-mnist or cifar10."),
    data: Path = typer.Option(
        None, help="Your data set instead: a .npz (arrays x, y; optional x_test, y_test) or .csv."
    ),
    model: str = typer.Option(
        None,
        help="paper-cnn, or your factory package.module:fn, called as fn(rngs=nnx.Rngs(seed)).",
    ),
    loss: str = typer.Option(
        None, help="softmax_cross_entropy, sigmoid_binary_cross_entropy, or package.module:fn."
    ),
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
    """Train a model with DP-SGD (or without privacy) and record the run.

    The paper's CNN on a named data set by default; your own with --model and --data."""
    from toolkit import runs as config_lib
    from toolkit import training as train_lib

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
    if data is not None and dataset is not None:
        raise ToolkitError(
            f"--data={data} and --dataset={dataset} both name the training data; give one."
        )
    flags = {
        "dataset": str(data) if data is not None else dataset, "model": model, "loss": loss,
        "epochs": epochs, "batch_size": batch_size,
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
        from toolkit.runs import load_settings

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
    from toolkit.privacy import accounting, calibrate_noise_multiplier, steps_per_epoch
    from toolkit.runs import MAX_EPOCHS, MAX_STEPS, MAX_TRAIN

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
            row.append(f"{calibrate_noise_multiplier(target_epsilon=target_epsilon, **kw):.4f}")
        table.add_row(*row)
    console.print(table)


def _register() -> None:
    from toolkit.cli._audit import audit

    app.command("audit")(audit)
    # Commands of the packages built on the toolkit (analysis, experiments, a user's own),
    # declared as entry points of the group "toolkit.commands": `register(app)` adds them.
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        entry.load()(app)
    for command in app.registered_commands:  # "[default: none]" where no value is implied
        show_defaults({})(command.callback)


_register()
