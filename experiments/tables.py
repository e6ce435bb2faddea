"""Tables from run records: Table 3 (accuracy at fixed eps), Table 4 (best learning rates).

Each row groups the seeds of one setting: mean +- std of the final test
accuracy, the eps of the named accountant, the sampling, and the standard
deviation of per-class accuracy (the paper's fairness note).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from typing import Any

from experiments.records import Run, group_by_setting


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def accuracy_rows(runs: Sequence[Run], *, accountant: str) -> list[dict[str, Any]]:
    """One row per setting (seeds pooled), sorted by dataset, privacy, activation."""
    rows = []
    for group in group_by_setting(runs):
        first = group[0]
        acc = _mean_std([r.summary.metrics["test_accuracy"] for r in group])
        fair = _mean_std([r.summary.metrics["per_class_accuracy_std"] for r in group])
        eps = first.summary.epsilon.get(accountant) if first.config.private else None
        rows.append(
            {
                "dataset": first.config.dataset,
                "activation": first.activation_label,
                "training": "DP-SGD" if first.config.private else "non-private",
                "epochs": first.config.epochs,
                "batch_size": first.config.batch_size,
                "optimizer": first.config.optimizer,
                "lr": first.config.lr,
                "noise_multiplier": first.config.noise_multiplier,
                "epsilon": eps,
                "accountant": accountant if eps is not None else "",
                "sampling": first.config.sampling,
                "seeds": len(group),
                "accuracy_mean": acc[0],
                "accuracy_std": acc[1],
                "per_class_std_mean": fair[0],
            }
        )
    rows.sort(key=lambda r: (r["dataset"], r["training"], r["activation"], r["lr"]))
    return rows


def best_lr_rows(runs: Sequence[Run], *, accountant: str) -> list[dict[str, Any]]:
    """Table 4: the best-accuracy lr for each (dataset, activation, optimizer, mode)."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in accuracy_rows(runs, accountant=accountant):
        key = (row["dataset"], row["activation"], row["optimizer"], row["training"])
        if key not in best or row["accuracy_mean"] > best[key]["accuracy_mean"]:
            best[key] = row
    return [best[k] for k in sorted(best)]


def _fmt(row: dict[str, Any]) -> list[str]:
    eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f} ({row['accountant']})"
    sigma = "-" if row["training"] == "non-private" else f"{row['noise_multiplier']:.3f}"
    return [
        row["dataset"], row["activation"], row["training"], eps, row["sampling"], sigma,
        str(row["epochs"]), str(row["batch_size"]), row["optimizer"], f"{row['lr']:g}",
        str(row["seeds"]),
        f"{100 * row['accuracy_mean']:.2f} +- {100 * row['accuracy_std']:.2f}",
        f"{row['per_class_std_mean']:.3f}",
    ]  # fmt: skip


HEADER = [
    "dataset", "activation", "training", "eps (accountant)", "sampling", "sigma", "epochs",
    "batch", "optimizer", "lr", "seeds", "test acc. % (mean +- std)", "per-class acc. std",
]  # fmt: skip


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_fmt(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()
