"""The `toolkit` command line: the top layer, thin over the library.

`app` is the typer application; `main` the console entry point. Packages built on the
toolkit add commands through the entry point group "toolkit.commands" (a function
`register(app)`); they use `one_line_errors` (bad input: one line, exit 2) and
`show_defaults`. The helpers are imported before `app`, whose import loads those plugins.
"""

from toolkit.cli._errors import fail, one_line_errors
from toolkit.cli._inputs import flag, given_options, show_defaults, train_defaults

from toolkit.cli._app import PLUGIN_GROUP, app  # isort: skip (loads the plugins)
from toolkit.cli._launch import TUNED_MALLOC, allocator_env, main, run  # isort: skip

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
