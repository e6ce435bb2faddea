"""Shared input handling of the `toolkit` commands: which options were given, their defaults.

- `given_options(values)`: the `--flag` names of the options a command was given (not
  None, not False), for "cannot be combined" errors.
- `show_defaults(defaults)`: a decorator that makes `--help` print each option's real
  default. The options of `train` and `audit` (declared once, `toolkit.cli._options`)
  default to None in the signature (None = "not given", so that flags override presets
  and files); the value a run gets when the option is absent comes from `RunConfig` (or
  the audit's own defaults) and is shown.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from typer.models import OptionInfo


def flag(name: str) -> str:
    """The command-line spelling of a parameter: `noise_multiplier` -> `--noise-multiplier`."""
    return "--" + name.replace("_", "-")


def given_options(values: Mapping[str, Any]) -> list[str]:
    """The flags among `values` that were given: neither None nor False."""
    return [flag(k) for k, v in values.items() if v is not None and v is not False]


def show_defaults(defaults: Mapping[str, Any]) -> Callable[[Callable], Callable]:
    """Show `defaults[name]` as the default of each None-default option in `--help`."""

    def decorate(fn: Callable) -> Callable:
        for name, param in inspect.signature(fn).parameters.items():
            info = param.default
            if not isinstance(info, OptionInfo) or info.default is not None:
                continue
            if isinstance(info.show_default, str):  # set by an earlier, specific call
                continue
            value = defaults.get(name)
            info.show_default = "none" if value is None else _shown(value)
        return fn

    return decorate


def train_defaults() -> dict[str, Any]:
    """What a `toolkit train` run gets for an option it is not given."""
    import dataclasses

    from toolkit.nn import ActivationSpec
    from toolkit.runs import RunConfig

    spec = ActivationSpec("tempered")
    return {
        **{f.name: getattr(RunConfig, f.name, None) for f in dataclasses.fields(RunConfig)},
        "activation": RunConfig.activation.name, "scale": spec.scale,
        "inverse_temp": spec.inverse_temp, "offset": spec.offset,
    }  # fmt: skip


def _shown(value: Any) -> str:
    label = getattr(value, "label", None)  # an ActivationSpec
    return str(label if label is not None else value)
