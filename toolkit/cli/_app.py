"""The `toolkit` command line: parses arguments and calls library functions, nothing else.

Bad input (a `ToolkitError`) prints one line to stderr and exits 2, with no
traceback and nothing written; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import math
import sys
from importlib.metadata import entry_points
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from toolkit.base import ToolkitError
from toolkit.cli._errors import one_line_errors
from toolkit.cli._group import ToolkitGroup
from toolkit.cli._inputs import flag, given_options, show_defaults, train_defaults
from toolkit.cli._options import RUN, run_config, run_options

app = typer.Typer(
    cls=ToolkitGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DP-SGD with tempered sigmoid activations: training, accounting and clipping-bias theory.",
)
console = Console(soft_wrap=True)
PLUGIN_GROUP = "toolkit.commands"

# What `train --resume RUN` may be given besides RUN (the rest is recorded in the run).
_RESUME_KEEPS = ("resume", "quiet", "tensorboard")


@app.command()
@one_line_errors
@show_defaults(train_defaults())
@run_options
def train(
    dataset=RUN, data=RUN, model=RUN, loss=RUN, activation=RUN, scale=RUN, inverse_temp=RUN,
    offset=RUN, epochs=RUN, batch_size=RUN, max_physical_batch=RUN, per_example=RUN,
    optimizer=RUN, lr=RUN, momentum=RUN, clip_norm=RUN, clipping=RUN, layer_split=RUN,
    target_quantile=RUN, quantile_lr=RUN, count_noise=RUN, noise_multiplier=RUN,
    target_epsilon=RUN, delta=RUN, accountant=RUN, sampling=RUN, seed=RUN, limit_train=RUN,
    data_dir=RUN, validation=RUN, ema_decay=RUN, lr_schedule=RUN, warmup_epochs=RUN,
    augmult=RUN, weight_standardization=RUN, keep_checkpoints=RUN, eval_every=RUN, no_privacy=RUN,
    preset=RUN, out=RUN,
    resume: Path = typer.Option(None, help="Continue the run in this directory (no other flag)."),
    config_file=RUN, quiet=RUN,
    tensorboard: Path = typer.Option(
        None, help="Also write per-epoch scalars as TensorBoard events here (extra: tensorboard)."
    ),
    coordinator: str = typer.Option(
        None, help="HOST:PORT of process 0: train one run with several processes (hosts)."
    ),
    num_processes: int = typer.Option(None, help="With --coordinator: how many processes."),
    process_id: int = typer.Option(
        None, help="With --coordinator: this process, 0 to N-1 (0 writes --out)."
    ),
) -> None:  # fmt: skip
    """Train a model with DP-SGD (or without privacy) and record the run.

    The paper's CNN on a named data set by default; your own with --model and --data."""
    values = dict(locals())  # the options (toolkit.cli._options), before anything else
    from toolkit import training as train_lib

    launch = {"coordinator": coordinator, "num_processes": num_processes,
              "process_id": process_id}  # fmt: skip
    distributed = _distributed(launch, resume=resume)
    if resume is not None:
        others = {k: v for k, v in values.items() if k not in _RESUME_KEEPS}
        others["config"] = others.pop("config_file")  # its flag is --config
        if given := given_options(others):
            raise ToolkitError(
                f"--resume cannot be combined with {', '.join(given)}: a run continues with "
                "its recorded settings; start a new run (--out) to change them."
            )
        with _says_how_to_continue(resume):
            result = train_lib.resume(resume, progress=not quiet, tensorboard=tensorboard)
        _print_summary(result.summary, resume)
        return
    cfg = run_config(values)
    with _says_how_to_continue(out):
        result = train_lib.train(
            cfg, out=out, progress=not quiet, tensorboard=tensorboard, distributed=distributed
        )
    _print_summary(result.summary, out if not process_id else None)  # process 0 writes --out


def _distributed(launch: dict, *, resume: Path | None) -> dict | None:
    """train's `distributed=` from --coordinator, --num-processes, --process-id: all or none."""
    given = given_options(launch)
    if not given:
        return None
    if len(given) < len(launch):
        missing = [f for f in map(flag, launch) if f not in given]
        raise ToolkitError(
            f"{', '.join(given)} without {', '.join(missing)}: a run over several processes "
            "needs --coordinator, --num-processes and --process-id in every process."
        )
    if resume is not None:
        raise ToolkitError(
            f"--resume={resume} runs in one process; it cannot be combined with {', '.join(given)}."
        )
    return launch


@contextlib.contextmanager
def _says_how_to_continue(out: Path | None):
    """On Ctrl-C or SIGTERM, one line: what the run directory keeps and how to go on."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        from toolkit.runs import rundir

        if out is not None and (out / rundir.CONFIG).exists():
            done = len(rundir.read_epochs(out)) if (out / rundir.CHECKPOINT).exists() else 0
            print(
                f"interrupted: {out} keeps {done} finished epoch(s); continue with "
                f"toolkit train --resume {out}",
                file=sys.stderr,
            )
        raise


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
    if "per_class_accuracy_std" in summary.metrics:  # none without held-out data
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
