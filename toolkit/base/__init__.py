"""The bottom layer: errors, atomic file writes, NumPy/JAX scalars as numbers, quiet logs,
and the names settings take.

Public modules: `choices` (the allowed names of each setting), `outputs` (what a command
may write, overwrite and check), `plotting` (figures as PNG and PDF; imports matplotlib).
"""

from toolkit.base._errors import ToolkitError
from toolkit.base._io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    default_mode,
)
from toolkit.base._logs import NOISY_PREFIXES, AccountingNoiseFilter, quiet_accounting_logs
from toolkit.base._numbers import plain_fields, plain_number

__all__ = [
    "NOISY_PREFIXES",
    "AccountingNoiseFilter",
    "ToolkitError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "default_mode",
    "plain_fields",
    "plain_number",
    "quiet_accounting_logs",
]
