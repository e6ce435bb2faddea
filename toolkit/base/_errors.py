"""The one exception type for bad user input and bad files.

The CLI turns a `ToolkitError` into a one-line message and exit code 2; any
other exception is a bug and keeps its traceback.
"""


class ToolkitError(ValueError):
    """Bad input: the message names the argument or file, the value, and what is allowed."""
