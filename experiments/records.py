"""Reading run directories: the only input of every table and plot.

A `Run` is what `toolkit train --out DIR` wrote: the resolved config, one
record per epoch, and the summary (absent while the run is unfinished).
Runs are grouped by their config minus the seed, so seeds of the same
setting become one curve with a band.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from toolkit import accounting, rundir
from toolkit.errors import ToolkitError


@dataclasses.dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def activation_label(self) -> str:
        from toolkit.activations import ActivationSpec

        return ActivationSpec.from_dict(self.config["activation"]).label

    @property
    def label(self) -> str:
        """'tanh, DP-SGD' or 'relu, SGD' style label."""
        return f"{self.activation_label}, {'DP-SGD' if self.config['private'] else 'SGD'}"

    def setting_key(self) -> tuple:
        """The config without the seed (and data location): seeds of one setting share it."""
        d = {k: v for k, v in self.config.items() if k not in ("seed", "data_dir")}
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in d.items()))

    def series(self, field: str) -> list[float | None]:
        """Per-epoch values of a (dotted) field, e.g. 'grad_norm.median' or 'epsilon.pld'."""
        out = []
        for record in self.epochs:
            value: Any = record
            for part in field.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            out.append(value)
        return out


def load_run(path: str | Path) -> Run:
    path = Path(path)
    record = rundir.read_config(path)
    summary_path = path / rundir.SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return Run(path, record["config"], rundir.read_epochs(path), summary)


def find_runs(paths: Iterable[str | Path], *, finished_only: bool = True) -> list[Run]:
    """Runs at or below the given paths (a path may be a run or a directory of runs)."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ToolkitError(f"run path {p} does not exist.")
        candidates = (
            [p]
            if (p / rundir.CONFIG).exists()
            else sorted(c.parent for c in p.rglob(rundir.CONFIG))
        )
        runs += [load_run(c) for c in candidates]
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
