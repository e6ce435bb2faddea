"""Reading run directories: the only input of every table and plot.

A `Run` is what `toolkit train --out DIR` or `toolkit.fit(out=DIR)` wrote: the resolved
`RunConfig`, one `EpochRecord` per epoch, and the `RunSummary` (None while the run is
unfinished), all read through `toolkit.runs.rundir`, the one place that knows the JSON.
Every kind of config.json is read (`toolkit.runs.config_from_record`: "run", and "train"
and "fit" directories written before runs had one format). A run of your own model is
labelled by the model's name (`RunConfig.label`), a data file by its file name.

Runs are grouped by their config minus the seed, so seeds of the same setting become one
curve with a band. Options that only choose what a run writes or records (`OUTPUT_ONLY`:
extra checkpoint files, TensorBoard events, how often it evaluates) are not settings
either: they neither split seeds nor appear in columns and legends. A run trained on part
of its training split (`limit_train`, or `validation` examples held out) is named so
wherever its data set is (`data_label`: "fashion-mnist (first 1,024)").

A run directory that cannot be read, or lacks what a table or figure needs (a
--validation run has no test accuracy; only the paper CNN records
first_conv_activation_norm), is skipped with a one-line warning that names it, and the
rest are used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.settings import NOT_SETTINGS
from toolkit.base import ToolkitError, specs
from toolkit.privacy import accounting
from toolkit.runs import EpochRecord, RunConfig, RunSummary, config_from_record, rundir

# Options that change only what a run writes or records, not what it trains:
# `keep_checkpoints` keeps extra checkpoint files, `tensorboard` (a `toolkit train` flag,
# listed should a config record it) writes a copy of the scalars, `eval_every` evaluates
# the held-out split less often (always after the last epoch). None is a setting.
OUTPUT_ONLY = ("keep_checkpoints", "tensorboard", "eval_every")


@dataclasses.dataclass(frozen=True)
class Run:
    path: Path
    config: RunConfig
    epochs: list[EpochRecord]
    summary: RunSummary | None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def activation_label(self) -> str:
        """The paper CNN's activation ('tanh'), or the name of your own model ('MLP')."""
        return self.config.label

    @property
    def dataset_label(self) -> str:
        """The data set's name, a data file's name, or 'arrays' (given in Python), with the
        part of its training split used ('fashion-mnist (first 1,024)', `data_label`)."""
        return data_label(self.config, None if self.summary is None else self.summary.num_train)

    @property
    def training(self) -> str:
        """'DP-SGD', 'SGD', or, for a private run with sigma = 0, what that run really is."""
        if not self.config.private:
            return "SGD"
        if self.config.noise_multiplier == 0:
            return "DP-SGD, sigma=0 (no DP guarantee)"
        return "DP-SGD"

    @property
    def label(self) -> str:
        """'tanh, DP-SGD' or 'relu, SGD' style label."""
        return f"{self.activation_label}, {self.training}"

    @property
    def setting(self) -> dict[str, Any]:
        """The config as JSON without the seed, the data location and the output-only
        options (`OUTPUT_ONLY`)."""
        return {
            k: v
            for k, v in self.config.to_dict().items()
            if k not in NOT_SETTINGS and k not in OUTPUT_ONLY
        }

    def setting_key(self) -> tuple:
        """The config without the seed (and data location): seeds of one setting share it."""
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in self.setting.items()))

    def series(self, field: str) -> list[Any]:
        """Per-epoch values of a (dotted) field, e.g. 'grad_norm.median' or 'epsilon.pld'.

        A name is a record field or else one of its metrics ('test_accuracy').
        """
        return [_lookup(record, field) for record in self.epochs]


def _lookup(record: Any, field: str) -> Any:
    value: Any = record
    for part in field.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif dataclasses.is_dataclass(value) and hasattr(value, part):
            value = getattr(value, part)
        elif isinstance(value, EpochRecord | RunSummary):
            value = value.metrics.get(part)
        else:
            return None
    return value


def dataset_label(dataset: str) -> str:
    """How tables and figures name a run's `dataset`: a registry name as it is, a data
    file by its name ('train.npz'), arrays given in Python as 'arrays'."""
    if dataset.startswith(specs.PYTHON):
        return dataset.removeprefix(specs.PYTHON)
    return Path(dataset).name


def data_label(config: RunConfig, num_train: int | None = None) -> str:
    """`dataset_label` plus the part of the training split trained on, if not all of it.

    `num_train` is the number of examples the run trained on (its summary's), when known:
    'fashion-mnist (first 1,024)' (`limit_train`), 'fashion-mnist (first 59,000, last 1,000
    held out)' (`validation`: the last V examples are evaluated on, not trained on). A
    `limit_train` above the examples there were (num_train < limit_train) trained on all.
    """
    parts = []
    limit = config.limit_train
    if limit is not None and (num_train is None or num_train >= limit):
        parts.append(f"first {limit:,}")
    if config.validation:
        if not parts and num_train is not None:
            parts.append(f"first {num_train:,}")
        parts.append(f"last {config.validation:,} held out")
    name = dataset_label(config.dataset)
    return f"{name} ({', '.join(parts)})" if parts else name


def load_run(path: str | Path) -> Run:
    """A run directory of any kind; ToolkitError if it is corrupt or incomplete."""
    path = Path(path)
    config = config_from_record(rundir.read_config(path), where=str(path / rundir.CONFIG))
    try:
        epochs, summary = rundir.read_epochs(path), rundir.read_summary(path)
    except (TypeError, ValueError, AttributeError) as e:  # RecordError is a ValueError
        raise ToolkitError(str(e) if isinstance(e, ToolkitError) else f"{path}: {e}") from None
    return Run(path, config, epochs, summary)


def find_runs(paths: Iterable[str | Path], *, finished_only: bool = True) -> list[Run]:
    """Runs at or below the given paths (a path may be a run or a directory of runs).

    A run that cannot be read is skipped with a one-line warning naming it; so is an
    unfinished one when `finished_only`.
    """
    paths = list(paths)
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ToolkitError(f"run path {p} does not exist.")
        candidates = (
            [p]
            if (p / rundir.CONFIG).exists()
            else sorted(c.parent for c in p.rglob(rundir.CONFIG))
        )
        for c in candidates:
            try:
                run = load_run(c)
            except ToolkitError as e:
                skip(c, str(e))
                continue
            if finished_only and not run.finished:
                skip(c, f"unfinished ({len(run.epochs)}/{run.config.epochs} epochs, no summary)")
                continue
            runs.append(run)
    if not runs:
        raise ToolkitError(f"no usable finished runs under {', '.join(map(str, paths))}.")
    return runs


def skip(path: str | Path, reason: str) -> None:
    """Warn, on one line, that the run at `path` is left out and why."""
    reason = " ".join(str(reason).split())  # one line, whatever the cause says
    warnings.warn(f"skipping run {path}: {reason}", RunSkipped, stacklevel=3)


# The metric of Figure 5 (`toolkit figures --kind act-norms`): the norm of the paper CNN's
# first convolution's activations on held-out images; a model of your own has none.
PAPER_CNN_METRIC = "first_conv_activation_norm"


class RunSkipped(UserWarning):
    """A run directory that a table or figure leaves out (corrupt, partial, incompatible)."""


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def with_metric(runs: Sequence[Run], field: str, *, per_epoch: bool = False) -> list[Run]:
    """The runs that recorded `field` as a number (in the summary, or in every epoch).

    Others are skipped with a warning: e.g. a --validation run has `val_accuracy`, not
    `test_accuracy`, and pooling it with test numbers would mix two quantities.
    ToolkitError if none is left.
    """
    kept = []
    for r in runs:
        if per_epoch:
            values = r.series(field)
            bad = not values or not all(_number(v) for v in values)
        else:
            bad = r.summary is None or not _number(_lookup(r.summary, field))
        if bad:
            hint = ""
            if field.endswith("test_accuracy") and r.config.validation:
                hint = f" (a --validation {r.config.validation} run: it reports val_accuracy)"
            elif field == PAPER_CNN_METRIC and not r.config.paper_model:
                hint = (
                    f" (act-norms, Figure 5, needs the paper CNN's {PAPER_CNN_METRIC}; "
                    f"model={r.config.model} is your own model)"
                )
            where = "every epoch" if per_epoch else "its summary"
            skip(r.path, f"no numeric {field} in {where}{hint}")
        else:
            kept.append(r)
    if not kept:
        raise ToolkitError(f"none of the {len(runs)} runs recorded {field}; nothing to show.")
    return kept


def paper_cnn_runs(runs: Sequence[Run], *, needs: str) -> list[Run]:
    """The runs of the paper CNN; each run of a model of your own is skipped with a warning
    that says what `needs` it. ToolkitError if none is left."""
    kept = []
    for r in runs:
        if r.config.paper_model:
            kept.append(r)
        else:
            skip(r.path, f"{needs}; model={r.config.model} is your own")
    if not kept:
        raise ToolkitError(f"none of the {len(runs)} runs trains the paper CNN: {needs}.")
    return kept


def with_epsilon(runs: Sequence[Run], accountant: str, *, per_epoch: bool = False) -> list[Run]:
    """Drop (with a warning) private runs whose records lack `accountant`'s eps."""
    kept = []
    for r in runs:
        records = r.epochs if per_epoch else [r.summary]
        if r.config.private and any(
            rec is None or accountant not in rec.epsilon for rec in records
        ):
            skip(r.path, f"no eps recorded under accountant {accountant}")
        else:
            kept.append(r)
    if not kept:
        raise ToolkitError(f"none of the {len(runs)} runs recorded eps under {accountant}.")
    return kept


def epsilon_value(run: Run, eps: Mapping[str, float | None], accountant: str) -> float | None:
    """eps under `accountant`: None for a non-private run, inf for a private run whose
    records hold no finite eps (sigma = 0: no DP guarantee)."""
    if not run.config.private:
        return None
    value = eps.get(accountant)
    return math.inf if value is None else float(value)


def seeds(group: Sequence[Run]) -> list[int]:
    """The distinct seeds of a group (two run directories of one seed are one sample)."""
    return sorted({r.config.seed for r in group})


def group_by_setting(runs: Sequence[Run]) -> list[list[Run]]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.setting_key(), []).append(r)
    return list(groups.values())


def check_accountant(name: str) -> str:
    if name not in accounting.ACCOUNTANTS:
        raise ToolkitError(
            f"accountant={name!r} is unknown; expected one of {', '.join(accounting.ACCOUNTANTS)}."
        )
    return name
