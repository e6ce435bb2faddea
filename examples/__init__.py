"""Runnable examples of the toolkit's Python API, and `examples.models` for the README."""
