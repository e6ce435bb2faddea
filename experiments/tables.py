"""Tables from run records: Table 3 (accuracy at fixed eps), Table 4 (best learning rates).

Each row groups the seeds of one setting: mean +- std of the final test accuracy over
the distinct seeds (two run directories of one seed are one sample; +- only from two
seeds on), the eps of the named accountant (inf for a private run with sigma = 0: no
DP guarantee), the sampling, and the standard deviation of per-class accuracy (the
paper's fairness note). Besides the fixed columns, every other setting that varies
across the runs shown gets a column (C, delta, momentum, clipping, ...), so two rows
never look alike while being different settings. The part of the training split a run
used is in its data set's cell ("fashion-mnist (first 1,024)", `records.data_label`),
not in a column of its own.

What eps covers: each row's eps is that of one run with fixed settings, and test
accuracy is computed on the test set from the trained parameters. Table 4 (`best_lr_rows`)
picks each row's learning rate by test accuracy among several runs: that choice is
hyperparameter search, not covered by the eps shown, and its markdown says so
(`BEST_LR_NOTE`; docs/privacy.md section 4).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from experiments import settings
from experiments.records import (
    Run,
    epsilon_value,
    group_by_setting,
    seeds,
    with_epsilon,
    with_metric,
)

# Settings with a column of their own in every table (in markdown, `model` only where a
# row trains a model of your own: tables of the paper's CNN read as they always did).
_FIXED_SETTINGS = (
    "dataset", "model", "activation", "private", "epochs", "batch_size", "optimizer", "lr",
    "noise_multiplier", "sampling",
)  # fmt: skip
# Settings the dataset cell shows (`records.data_label`): no column of their own.
_IN_DATASET = ("limit_train", "validation")
PAPER_CNN = "paper-cnn"
_RESULTS = ("seeds", "accuracy_mean", "accuracy_std", "per_class_std_mean", "epsilon")
# The run's own accountant (calibration, headline) is not the table's eps accountant.
_RENAMED = {"accountant": "run_accountant"}


def _column(field: str) -> str:
    return _RENAMED.get(field, field)


def _field(column: str) -> str:
    return {v: k for k, v in _RENAMED.items()}.get(column, column)


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std; std None for a single value (no spread to report)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _per_seed(group: Sequence[Run], field: str) -> list[float]:
    """One value per distinct seed (the mean of that seed's runs, normally identical)."""
    out = []
    for seed in seeds(group):
        values = [r.summary.metrics.get(field) for r in group if r.config.seed == seed]
        values = [v for v in values if isinstance(v, int | float)]
        if values:
            out.append(statistics.fmean(values))
    return out


def accuracy_rows(runs: Sequence[Run], *, accountant: str) -> list[dict[str, Any]]:
    """One row per setting (seeds pooled), sorted by dataset, privacy, activation, lr.

    Runs without a final test accuracy (e.g. --validation runs) or without eps under
    `accountant` are left out with a warning naming them.
    """
    runs = with_epsilon(with_metric(runs, "test_accuracy"), accountant)
    extra = [
        f
        for f in settings.varying([r.setting for r in runs])
        if f not in _FIXED_SETTINGS and f not in _IN_DATASET
    ]
    rows = []
    for group in group_by_setting(runs):
        first = group[0]
        acc = _mean_std(_per_seed(group, "test_accuracy"))
        fair = _per_seed(group, "per_class_accuracy_std")
        eps = epsilon_value(first, first.summary.epsilon, accountant)
        row = {
            "dataset": first.dataset_label,
            "model": first.config.model,  # "paper-cnn", package.module:factory, python:Class
            "activation": first.config.activation.label if first.config.paper_model else None,
            "training": first.training if first.config.private else "non-private",
            "epochs": first.config.epochs,
            "batch_size": first.config.batch_size,
            "optimizer": first.config.optimizer,
            "lr": first.config.lr,
            "noise_multiplier": first.config.noise_multiplier,
            "epsilon": eps,
            "accountant": accountant if eps is not None else "",
            "sampling": first.config.sampling,
        }
        row.update({_column(f): first.setting.get(f) for f in extra})
        row.update(
            seeds=len(seeds(group)),
            accuracy_mean=acc[0],
            accuracy_std=acc[1],
            per_class_std_mean=statistics.fmean(fair) if fair else None,
        )
        rows.append(row)
    rows.sort(
        key=lambda r: (
            r["dataset"], r["model"], r["training"], r["activation"] or "", r["epochs"],
            (r["lr"] is not None, r["lr"] or 0.0),  # None: an optimizer given in Python
            json.dumps({f: r[_column(f)] for f in extra}, sort_keys=True, default=str),
        )
    )  # fmt: skip
    return rows


def best_lr_rows(runs: Sequence[Run], *, accountant: str) -> list[dict[str, Any]]:
    """Table 4: the best-accuracy lr for each setting that differs in anything but lr."""
    best: dict[str, dict[str, Any]] = {}
    for row in accuracy_rows(runs, accountant=accountant):
        key = json.dumps({k: v for k, v in row.items() if k not in (*_RESULTS, "lr")}, default=str)
        if key not in best or row["accuracy_mean"] > best[key]["accuracy_mean"]:
            best[key] = row
    return [best[k] for k in sorted(best)]


def _eps(row: dict[str, Any]) -> str:
    if row["epsilon"] is None:
        return "-"
    if math.isinf(row["epsilon"]):
        return f"inf ({row['accountant']}; no DP guarantee)"
    return f"{row['epsilon']:.2f} ({row['accountant']})"


def _accuracy(row: dict[str, Any]) -> str:
    mean = f"{100 * row['accuracy_mean']:.2f}"
    return mean if row["accuracy_std"] is None else f"{mean} +- {100 * row['accuracy_std']:.2f}"


def _extra(row: dict[str, Any]) -> list[str]:
    return [k for k in row if k not in _BASE_KEYS]


_BASE_KEYS = (
    "dataset", "model", "activation", "training", "epochs", "batch_size", "optimizer", "lr",
    "noise_multiplier", "epsilon", "accountant", "sampling", *_RESULTS,
)  # fmt: skip


def _own_models(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether a row trains a model of your own: the markdown then has a model column."""
    return any(r["model"] != PAPER_CNN for r in rows)


def _fmt(row: dict[str, Any], *, models: bool) -> list[str]:
    private = row["training"] != "non-private"
    sigma = f"{row['noise_multiplier']:.3f}" if private else "-"
    extra = [
        settings.describe(_field(k), row[k])
        if private or _field(k) not in settings.PRIVACY_FIELDS
        else "-"
        for k in _extra(row)
    ]
    fair = "-" if row["per_class_std_mean"] is None else f"{row['per_class_std_mean']:.3f}"
    lr = "-" if row["lr"] is None else f"{row['lr']:g}"  # None: an optax object's own
    model = [row["model"]] if models else []
    return [
        row["dataset"], *model, row["activation"] or "-", row["training"], _eps(row),
        row["sampling"] if private else "-", sigma, str(row["epochs"]), str(row["batch_size"]),
        row["optimizer"], lr, *extra, str(row["seeds"]), _accuracy(row), fair,
    ]  # fmt: skip


HEADER = [
    "dataset", "activation", "training", "eps (accountant)", "sampling", "sigma", "epochs",
    "batch", "optimizer", "lr", "seeds", "test acc. % (mean +- std)", "per-class acc. std",
]  # fmt: skip


def header(rows: Sequence[dict[str, Any]]) -> list[str]:
    """HEADER with a column for each varying setting, before 'seeds', and a model column
    after the data set's where a row trains a model of your own (its activation is '-')."""
    extra = [settings.name(_field(k)) for k in _extra(rows[0])] if rows else []
    at = HEADER.index("seeds")
    model = ["model"] if _own_models(rows) else []
    return [HEADER[0], *model, *HEADER[1:at], *extra, *HEADER[at:]]


BEST_LR_NOTE = (
    "Each row's learning rate is the best of several runs by test accuracy: the eps shown "
    "is one run's, and the choice among runs (hyperparameter search on the test set) is not "
    "covered by it (docs/privacy.md section 4)."
)


def to_markdown(rows: Sequence[dict[str, Any]], *, note: str | None = None) -> str:
    """The rows as a markdown table; `note`, if given, is a paragraph after it."""
    cols, models = header(rows), _own_models(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r, models=models)) + " |" for r in rows]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """All row fields; an activation as its label, an unset std (one seed) as empty."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if v is None else json.dumps(v) if isinstance(v, dict) else v
                    for k, v in row.items()
                }
            )
    return buf.getvalue()
