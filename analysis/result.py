"""One line of the `bound-check` table: a claim, a measured number, a tolerance, a verdict.

Or a `Skipped` line: a check that does not apply to the run, with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
      name: the claim and the number measured, short enough for an 80-column table,
        e.g. "eq.4: sup ||grad||/(|T| ||z||)".
      measure: the exact definition of `value`, for the JSON record.
      value: the worst ratio or error found.
      tolerance: the pass criterion in words, e.g. "<= 1 + 4 eps".
      passed: whether `value` meets the criterion (and any cross-check agreed).
      finding: one plain-language sentence for the reader (may be empty).
      details: JSON-serialisable extras (witnesses, per-case numbers).
    """

    name: str
    measure: str
    value: float
    tolerance: str
    passed: bool
    finding: str = ""
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measure": self.measure,
            "value": json_safe(self.value),
            "tolerance": self.tolerance,
            "passed": bool(self.passed),
            "finding": self.finding,
            "details": json_safe(dict(self.details)),
        }


def json_safe(obj: Any) -> Any:
    """Plain Python types for `json.dumps`; non-finite floats become strings ("inf", "nan")."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / jax arrays and scalars
        return json_safe(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    return str(obj)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A check that did not run, and why (printed under the table and kept in the record)."""

    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}
