"""Log messages of dependencies that users should not see.

dp-accounting's RDP accountant logs (through absl, at WARNING) "_compute_log_a_frac failed
to converge ... Excluding this order from the epsilon computation." for orders whose
series does not converge in float64 (small q, large alpha). Excluding an order leaves eps
the minimum over the other orders, still a valid upper bound, so the message says nothing
about the result; a 2048-example run printed 48 of them. `AccountingNoiseFilter` drops
exactly that message from the absl logger; every other warning (e.g. "Negative Renyi
divergence") still shows.
"""

from __future__ import annotations

import logging

NOISY_PREFIXES = ("_compute_log_a_frac failed to converge",)


class AccountingNoiseFilter(logging.Filter):
    """Drops dp-accounting's non-convergence message for single RDP orders, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(NOISY_PREFIXES))


def quiet_accounting_logs() -> None:
    """Install the filter on absl's logger once (idempotent)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, AccountingNoiseFilter) for f in logger.filters):
        logger.addFilter(AccountingNoiseFilter())
