"""`python -m toolkit ...`: the `toolkit` command, where its script is not installed."""

from toolkit.cli import app

app(prog_name="toolkit")
