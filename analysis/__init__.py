"""The paper's theory checked numerically in float64 (`toolkit bound-check`).

On your own binary data:

    mine = analysis.from_arrays(x, y, name="mine")  # flattened, / max ||x_i||, labels -> -1, +1
    result = analysis.check_datasets([mine])        # eqs. (4), (5) and Theorem 1 on it
    result.passed, result.cells, result.skipped

The names below are imported on first use (PEP 562), so `import analysis`, which the
toolkit CLI does, loads no JAX code.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it.
_EXPORTS = {
    "Dataset": "analysis.datasets",
    "from_arrays": "analysis.datasets",
    "from_file": "analysis.datasets",
    "make_datasets": "analysis.datasets",
    "BoundCheckConfig": "analysis.suite",
    "SuiteResult": "analysis.suite",
    "check_datasets": "analysis.suite",
    "CheckResult": "analysis.result",
    "Skipped": "analysis.result",
    "Theorem1Cell": "analysis.theorem1",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
