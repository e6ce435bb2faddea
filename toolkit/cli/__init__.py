"""The `toolkit` command line: the top layer, thin over the library.

`app` is the typer application; `main` the console entry point. Packages built on the
toolkit add commands through the entry point group "toolkit.commands" (a function
`register(app)`); they use `one_line_errors` (bad input: one line, exit 2) and
`show_defaults`. Only `toolkit.cli._launch` (`main`, `run`, the allocator settings) is
imported with the package: the console script's `from toolkit.cli import main` loads
nothing heavy before `main` re-executes the interpreter. The rest is imported on first
use; `app`'s import loads the plugins, which import the helpers from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit import _lazy
from toolkit.cli._launch import TUNED_MALLOC, allocator_env, main, run

_MODULE_OF = {
    "PLUGIN_GROUP": "toolkit.cli._app",
    "app": "toolkit.cli._app",
    "fail": "toolkit.cli._errors",
    "one_line_errors": "toolkit.cli._errors",
    "flag": "toolkit.cli._inputs",
    "given_options": "toolkit.cli._inputs",
    "show_defaults": "toolkit.cli._inputs",
    "train_defaults": "toolkit.cli._inputs",
}

if TYPE_CHECKING:
    from toolkit.cli._app import PLUGIN_GROUP, app
    from toolkit.cli._errors import fail, one_line_errors
    from toolkit.cli._inputs import flag, given_options, show_defaults, train_defaults

__all__ = [
    "PLUGIN_GROUP",
    "TUNED_MALLOC",
    "allocator_env",
    "app",
    "fail",
    "flag",
    "given_options",
    "main",
    "one_line_errors",
    "run",
    "show_defaults",
    "train_defaults",
]


__getattr__, __dir__ = _lazy.attributes(__name__, _MODULE_OF, __all__)
