"""The options of the commands that make a run (`toolkit train`, `toolkit audit`), each
declared once.

A command takes an option of `OPTIONS` by naming it as a parameter whose default is
`RUN`, or `RUN("...")` where the command words its help its own way, in the order its
--help lists them; `@run_options` then gives each such parameter its type and a fresh
`typer.Option` (one per command, so that `show_defaults` can show each command's own
default). Its other parameters are its own options, declared as usual.

`run_config(values)` turns the values a command was given into a `RunConfig` (through
`toolkit.runs.from_flags`): the one place that knows how the options map to settings.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer
from typer.models import OptionInfo

from toolkit.base import ToolkitError


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its Python type, its help, and its flag (default `--name`).

    The default is None ("not given", so that flags override a preset and a settings
    file), or False for an on/off flag; `--help` shows the value a run gets instead
    (`toolkit.cli._inputs.show_defaults`).
    """

    kind: type
    help: str | None = None
    flag: str | None = None
    default: Any = None

    def info(self, help: str | None = None) -> OptionInfo:
        decls = (self.flag,) if self.flag else ()
        return typer.Option(self.default, *decls, help=self.help if help is None else help)


# Every option that sets what a run does, with `toolkit train`'s help.
OPTIONS: dict[str, Option] = {
    "dataset": Option(str, "mnist, fashion-mnist or cifar10."),
    "data": Option(
        Path, "Your data set instead: a .npz (arrays x, y; optional x_test, y_test) or .csv."
    ),
    "model": Option(
        str, "paper-cnn, or your factory package.module:fn, called as fn(rngs=nnx.Rngs(seed))."
    ),
    "loss": Option(
        str, "softmax_cross_entropy, sigmoid_binary_cross_entropy, or package.module:fn."
    ),
    "activation": Option(str, "relu, tanh, tempered, sigmoid, elu, gelu."),
    "scale": Option(float, "Tempered sigmoid scale s."),
    "inverse_temp": Option(float, "Tempered sigmoid inverse temperature T."),
    "offset": Option(float, "Tempered sigmoid offset o."),
    "epochs": Option(int),
    "batch_size": Option(int, "Expected logical batch size B (q = B/N)."),
    "max_physical_batch": Option(int, "Micro-batch cap (speed/memory only)."),
    "per_example": Option(str, "Per-example gradients: auto, bookkeeping or vmap (speed only)."),
    "optimizer": Option(str, "sgd or adam."),
    "lr": Option(float, "Learning rate."),
    "momentum": Option(float, "Heavy-ball momentum for sgd."),
    "clip_norm": Option(
        float, "Per-example clipping norm C (quantile: its start C_0; per-layer: the total)."
    ),
    "clipping": Option(
        str,
        "flat (min(1, C/||g||)), automatic (Bu et al.), quantile (C follows a quantile of "
        "the norms; Andrew et al.) or per-layer (C_l per layer, sum C_l^2 = C^2).",
    ),
    "layer_split": Option(
        str, "per-layer clipping's C_l: equal (C/sqrt(L)) or size (C sqrt(d_l/d))."
    ),
    "target_quantile": Option(float, "quantile clipping: share of examples left unclipped."),
    "quantile_lr": Option(float, "quantile clipping: rate of C's geometric update."),
    "count_noise": Option(
        float, "quantile clipping: the count's noise std (unset: B/20); sigma stays the total."
    ),
    "noise_multiplier": Option(float, "sigma; noise std is sigma*C on the sum."),
    "target_epsilon": Option(float, "Calibrate sigma to this eps instead."),
    "delta": Option(float),
    "accountant": Option(str, "rdp-classic, rdp or pld (calibration/headline)."),
    "sampling": Option(str, "poisson (accounted) or shuffle (labelled)."),
    "seed": Option(int),
    "limit_train": Option(int, "Use only the first N training examples."),
    "data_dir": Option(Path, "Directory holding the dataset files."),
    "validation": Option(
        int, "Hold out the last V training examples; evaluate on them, not on test."
    ),
    "ema_decay": Option(
        float, "Also evaluate an EMA of the iterates (post-processing, no privacy cost)."
    ),
    "lr_schedule": Option(str, "constant or cosine (decay to 0 at the end)."),
    "warmup_epochs": Option(int, "Linear lr warm-up from 0 over these epochs."),
    "augmult": Option(
        int, "K augmented views per example (shift, flip), averaged before clipping."
    ),
    "weight_standardization": Option(
        bool, "Scaled weight standardisation of conv kernels.", "--weight-standardization"
    ),
    "keep_checkpoints": Option(
        int, "Also keep checkpoint-epoch{E}.npz every K epochs (for toolkit bias)."
    ),
    "eval_every": Option(
        int, "Evaluate the held-out split after every K-th epoch (and the last) only."
    ),
    "no_privacy": Option(bool, "C=inf, sigma=0, same path.", "--no-privacy", default=False),
    "preset": Option(str, "Start from a paper setting; flags override it."),
    "out": Option(Path, "Run directory to create (config, epochs, summary)."),
    "config_file": Option(
        Path, "TOML settings, or a run's config.json to re-run it; flags win.", "--config"
    ),
    "quiet": Option(bool, "No progress bar.", "--quiet", default=False),
}
# Options that are not a `RunConfig` field of their name (the rest are, flag for flag).
_NOT_FIELDS = ("data", "activation", "scale", "inverse_temp", "offset", "no_privacy",
               "preset", "out", "config_file", "quiet")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Take:
    """The default of a parameter that takes its declaration from `OPTIONS`."""

    help: str | None = None

    def __call__(self, help: str) -> _Take:
        """The same option with this command's own help text."""
        return _Take(help)


RUN = _Take()


def run_options(fn: Callable) -> Callable:
    """Give each parameter of `fn` whose default is `RUN` its declaration in `OPTIONS`."""
    signature = inspect.signature(fn)
    params = []
    for p in signature.parameters.values():
        if isinstance(p.default, _Take):
            if p.name not in OPTIONS:
                raise TypeError(f"{fn.__name__}: {p.name} is not one of the run options.")
            option = OPTIONS[p.name]
            p = p.replace(default=option.info(p.default.help), annotation=option.kind)
            fn.__annotations__[p.name] = option.kind  # typer reads the type hints too
        params.append(p)
    fn.__signature__ = signature.replace(parameters=params)
    return fn


def run_config(values: Mapping[str, Any], *, base: Mapping[str, Any] | None = None):
    """The `RunConfig` that a command's option values ask for: `base` < `--preset` <
    the `--config` file < the flags given (`toolkit.runs.from_flags`)."""
    from toolkit.runs import RunConfig, from_flags, load_settings

    fields = {f.name for f in dataclasses.fields(RunConfig)} - set(_NOT_FIELDS)
    flags = {k: v for k, v in values.items() if k in fields}
    if values.get("data") is not None:
        if values.get("dataset") is not None:
            raise ToolkitError(
                f"--data={values['data']} and --dataset={values['dataset']} both name the "
                "training data; give one."
            )
        flags["dataset"] = str(values["data"])
    if flags.get("data_dir") is not None:
        flags["data_dir"] = str(flags["data_dir"])
    config_file = values.get("config_file")
    return from_flags(
        flags, preset_name=values.get("preset"), base=dict(base or {}),
        file=None if config_file is None else load_settings(config_file),
        activation=values.get("activation"), scale=values.get("scale"),
        inverse_temp=values.get("inverse_temp"), offset=values.get("offset"),
        no_privacy=bool(values.get("no_privacy")),
    )  # fmt: skip
