"""The `bound-check` report: one rich table, plain-language findings, and the JSON record."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from analysis.result import json_safe
from analysis.suite import SuiteResult
from toolkit.base import atomic_write_json


def _number(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.4g}"
    return f"{x:.2e}"


def table(result: SuiteResult) -> Table:
    """One row per check: the claim and its measure, the worst value, tolerance, verdict."""
    verdict = "[green]all checks pass[/]" if result.passed else "[red]some checks FAIL[/]"
    t = Table(title=f"bound-check: {verdict}", title_justify="left")
    t.add_column("check (what is measured)")
    t.add_column("worst", justify="right")
    t.add_column("tolerance")
    t.add_column("result")
    for c in result.checks:
        t.add_row(
            c.name,
            _number(c.value),
            c.tolerance,
            "[green]pass[/]" if c.passed else "[bold red]FAIL[/]",
        )
    for s in result.skipped:
        t.add_row(s.name, "-", "-", "[yellow]skipped[/]")
    return t


def data_lines(result: SuiteResult) -> list[str]:
    """One line per dataset of your own: file, n, d, scaling and label mapping."""
    lines = []
    for d in result.config.data:
        info = d.describe()
        line = f"{info['name']}: {info['source']}, n={info['n']}, d={info['d']}"
        if "scale" in info:
            labels = ", ".join(f"{k} -> {v:+d}" for k, v in info["label_map"].items())
            line += (
                f" (examples {tuple(info['example_shape'])} flattened); z = x / "
                f"{info['scale']:.6g} (the largest ||x_i||), so max ||z_i|| = 1; labels {labels}"
            )
            if info["ignored"]:
                line += f"; not used: {', '.join(info['ignored'])}"
        counts = info["class_counts"]
        lines.append(f"{line}; {counts['-1']} examples at -1, {counts['+1']} at +1")
    return lines


def findings(result: SuiteResult) -> list[str]:
    """The plain-language sentences attached to the checks, in table order."""
    return [c.finding for c in result.checks if c.finding]


def print_report(result: SuiteResult, console: Console) -> None:
    if result.config.data:
        console.print("[bold]Data[/] (the checks on datasets run on these, not on synthetic ones)")
        for line in data_lines(result):
            console.print(f"- {line}", highlight=False)
    console.print(table(result))
    console.print("[bold]Findings[/]")
    for line in findings(result):
        console.print(f"- {line}", highlight=False)
    if result.skipped:
        console.print("[bold]Skipped[/]")
        for s in result.skipped:
            console.print(f"- {s.name}: {s.reason}.", highlight=False)
    total = sum(result.seconds.values())
    console.print(f"(checks took {total:.1f} s)", style="dim")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def to_json(result: SuiteResult) -> dict[str, Any]:
    """The whole run: configuration (with each dataset of your own: file, n, d, scaling,
    label mapping), verdicts, skipped checks and why, every grid cell and tightness witness."""
    cells = []
    for c in result.cells:
        d = dataclasses.asdict(c)
        d.update(ratio=c.ratio, paper_no_bias=c.paper_no_bias, sharp_no_bias=c.sharp_no_bias)
        cells.append(d)
    found = []
    for r in result.tightness:
        d = dataclasses.asdict(r)
        d.update(ceiling_ratio=r.ceiling_ratio, verified=r.verified)
        found.append(d)
    return json_safe(
        {
            "command": "bound-check",
            "config": result.config.to_dict(),
            "passed": result.passed,
            "checks": [c.to_dict() for c in result.checks],
            "skipped": [s.to_dict() for s in result.skipped],
            "findings": findings(result),
            "theorem1_grid": cells,
            "tightness": found,
            "seconds": result.seconds,
            "versions": {p: _version(p) for p in ("jax", "numpy", "scipy", "tempered-dp-toolkit")},
        }
    )


def write_json(result: SuiteResult, path: str | os.PathLike) -> None:
    atomic_write_json(path, to_json(result))
