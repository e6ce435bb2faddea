"""toolkit.studies."""

from toolkit.studies._audit import (
    CANARY_NOT_COVERED,
    Canaries,
    make_canaries,
    run_audit,
    train_with_canaries,
)
from toolkit.studies._audit_stats import (
    AuditResult,
    audit_scores,
    check_confidence,
    epsilon_lower_bound,
    guess_grid,
    p_value,
)
from toolkit.studies._bias import (
    DIAGNOSTIC_LABEL,
    BiasPoint,
    LayerBias,
    RunBias,
    check_run,
    measure,
    run_bias,
    write_json,
)

__all__ = [
    "AuditResult",
    "BiasPoint",
    "CANARY_NOT_COVERED",
    "Canaries",
    "DIAGNOSTIC_LABEL",
    "LayerBias",
    "RunBias",
    "audit_scores",
    "check_confidence",
    "check_run",
    "epsilon_lower_bound",
    "guess_grid",
    "make_canaries",
    "measure",
    "p_value",
    "run_audit",
    "run_bias",
    "train_with_canaries",
    "write_json",
]
