"""Reading run directories: the only input of every table and plot.

A `Run` is what `toolkit train --out DIR` wrote: the resolved `TrainConfig`, one
`EpochRecord` per epoch, and the `RunSummary` (None while the run is unfinished), all
read through `toolkit.rundir`, the one place that knows the JSON. Runs are grouped by
their config minus the seed, so seeds of the same setting become one curve with a band.
A run directory that cannot be read is skipped with a warning that names it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from toolkit import accounting, rundir
from toolkit.config import TrainConfig
from toolkit.errors import ToolkitError
from toolkit.records import EpochRecord, RunSummary


@dataclasses.dataclass(frozen=True)
class Run:
    path: Path
    config: TrainConfig
    epochs: list[EpochRecord]
    summary: RunSummary | None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def activation_label(self) -> str:
        return self.config.activation.label

    @property
    def label(self) -> str:
        """'tanh, DP-SGD' or 'relu, SGD' style label."""
        return f"{self.activation_label}, {'DP-SGD' if self.config.private else 'SGD'}"

    def setting_key(self) -> tuple:
        """The config without the seed (and data location): seeds of one setting share it."""
        d = {k: v for k, v in self.config.to_dict().items() if k not in ("seed", "data_dir")}
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in d.items()))

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
        elif isinstance(value, EpochRecord):
            value = value.metrics.get(part)
        else:
            return None
    return value


def load_run(path: str | Path) -> Run:
    """A `toolkit train` run directory; ToolkitError if it is corrupt or of another kind."""
    path = Path(path)
    record = rundir.read_config(path)
    if record.get("kind", "train") != "train":
        raise ToolkitError(f"{path} is a {record.get('kind')} run, not a toolkit train run.")
    try:
        config = TrainConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ToolkitError(f"{path / rundir.CONFIG} is not a valid run config ({e}).") from None
    return Run(path, config, rundir.read_epochs(path), rundir.read_summary(path))


def find_runs(paths: Iterable[str | Path], *, finished_only: bool = True) -> list[Run]:
    """Runs at or below the given paths (a path may be a run or a directory of runs).

    A run that cannot be read is skipped with a warning naming it.
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
                runs.append(load_run(c))
            except ToolkitError as e:
                warnings.warn(f"skipping run {c}: {e}", stacklevel=2)
    if finished_only:
        runs = [r for r in runs if r.finished]
    if not runs:
        raise ToolkitError(f"no finished runs under {', '.join(map(str, paths))}.")
    return runs


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
