"""The `toolkit` command group: checks every command's argument list before click parses it.

click keeps the last value of an option given twice and reads `--out ""` as the current
directory; here both are usage errors (`error: ...`, exit 2) for every command, plugins
included:

- an option given twice (`--epochs 2 --epochs 3`), unless it collects values (`multiple`);
- an empty path (`--out ""`, `--data-dir=`, `toolkit table ""`);
- a value given to an on/off flag (`--quiet=1`).

It also shows on/off flags in `--help` without a value type: `--no-privacy`, not
`--no-privacy <bool>` (they take no value).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path

from typer.core import TyperArgument, TyperGroup, TyperOption

try:  # typer >= 0.2x vendors click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click import UsageError


class ToolkitGroup(TyperGroup):
    def resolve_command(self, ctx, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            try:
                check_arguments(command, rest)
            except UsageError as e:
                e.command_path = f"{ctx.command_path} {name}"  # for `toolkit.cli._launch.run`
                raise
        return name, command, rest

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_take_no_value(command.get_params(ctx))
        return command

    def get_params(self, ctx):
        return _flags_take_no_value(super().get_params(ctx))


def _flags_take_no_value(params: list) -> list:
    """No `<bool>` in --help for a flag: it takes no value."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


def check_arguments(command, args: Sequence[str]) -> None:
    """A `UsageError` for an option given twice, an empty path or a flag given a value."""
    by_flag = {
        flag: p
        for p in command.params
        if isinstance(p, TyperOption)
        for flag in (*p.opts, *p.secondary_opts)
    }
    seen: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            break
        flag, eq, value = token.partition("=")
        param = by_flag.get(flag)
        if param is None and token == "" and _path_arguments(command):
            raise UsageError(
                f"{_path_arguments(command)[0].name.upper()}='' is an empty path; give a file "
                "or directory."
            )
        if param is not None:
            if param.is_flag and eq:
                raise UsageError(f"{flag} is a flag and takes no value (got {token}).")
            takes_value = not param.is_flag and not param.count
            if takes_value and not eq:
                i += 1
                value = args[i] if i < len(args) else None
            shown = f"{flag} {value}" if takes_value else flag
            if not (param.multiple or param.count):
                if param.name in seen:
                    raise UsageError(
                        f"{flag} is given twice ({seen[param.name]}, then {shown}); give it once."
                    )
                seen[param.name] = shown
            if takes_value and value == "" and _is_path(param):
                raise UsageError(f"{flag}='' is an empty path; give a file or directory.")
        i += 1


def _is_path(param: TyperOption | TyperArgument) -> bool:
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:  # several paths: `runs: list[Path]`
        (annotation,) = typing.get_args(annotation)
    return isinstance(annotation, type) and issubclass(annotation, Path)


def _path_arguments(command) -> list[TyperArgument]:
    return [p for p in command.params if isinstance(p, TyperArgument) and _is_path(p)]
