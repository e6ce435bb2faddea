"""`toolkit bound-check`: parse the options, run `analysis.suite`, report. No logic here.

Exit codes: 0 all checks pass, 1 some check fails (the table says which),
2 invalid options (one `error: ...` line on stderr, nothing written).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from toolkit.base import ToolkitError, outputs

_DEFAULT_T = "0.5,1,2,4,8"
_DEFAULT_C = "0.1,0.5,1,2"


def bound_check(
    temperatures: str = typer.Option(_DEFAULT_T, help="Inverse temperatures T, comma-separated."),
    clip_norms: str = typer.Option(_DEFAULT_C, help="Clipping norms C, comma-separated."),
    radius: float = typer.Option(1.0, help="Radius R of the parameter ball (diameter 2R)."),
    n: int = typer.Option(
        None,
        "--n",
        help="Points per synthetic dataset and tightness witness; not with --data.",
        show_default="64",  # suite.DEFAULT_N (suite is imported only when run)
    ),
    dim: int = typer.Option(
        None,
        help="Dimension of the synthetic data; not with --data.",
        show_default="5",  # suite.DEFAULT_DIM
    ),
    data: Path = typer.Option(
        None,
        help="Your binary data set (.npz with arrays x, y; or .csv, label last), checked "
        "instead of the synthetic ones: eqs. (4), (5) and Theorem 1 at its examples. Labels "
        "{0, 1} or {-1, +1} (0 -> -1). Each example is flattened to a float64 vector and all "
        "are divided by the largest example norm, so max ||z_i|| = 1 as Theorem 1 needs "
        "(angles and norm ratios kept). Checks about all datasets or synthetic ones are "
        "listed as skipped, with the reason.",
    ),
    seed: int = typer.Option(0, help="Seed of every random draw."),
    quick: bool = typer.Option(False, "--quick", help="Smaller samples and searches (seconds)."),
    json_path: Path = typer.Option(None, "--json", help="Write the full record as JSON here."),
    plot: Path = typer.Option(
        None, help="Write PATH.png/.pdf (Theorem 1) and PATH-tightness.png/.pdf."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --json / --plot files that exist."
    ),
) -> None:
    """Check the paper's theory numerically: eqs. (3)-(5), Theorem 1, its tightness, Lemma 3.1.

    With --data, on your own binary data set instead of the synthetic ones.
    """
    from analysis import datasets, report, suite

    try:
        own = () if data is None else (datasets.from_file(data),)
        config = suite.BoundCheckConfig(
            temperatures=suite.parse_floats(temperatures, name="temperatures"),
            clip_norms=suite.parse_floats(clip_norms, name="clip-norms"),
            radius=radius,
            n=n,
            dim=dim,
            seed=seed,
            quick=quick,
            data=own,
        )
        for option, path in (("--json", json_path), ("--plot", plot)):
            if path is not None and not path.absolute().parent.is_dir():
                what = "is a file, not a directory" if path.parent.exists() else "does not exist"
                raise ToolkitError(f"{option}={path}: {path.parent} {what}.")
        if json_path is not None:
            outputs.check_files("--json", [json_path], overwrite=overwrite)
        if plot is not None:
            from analysis import plots

            outputs.check_files("--plot", plots.figure_paths(plot), value=plot,
                                overwrite=overwrite)  # fmt: skip
    except ToolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None

    result = suite.run(config)
    console = Console()
    report.print_report(result, console)
    try:
        if json_path is not None:
            with outputs.writing("--json", json_path):
                report.write_json(result, json_path)
            console.print(f"wrote {json_path}", style="dim")
        if plot is not None:
            with outputs.writing("--plot", plot):
                written = plots.write_figures(result, plot)
            for p in written:
                console.print(f"wrote {p}", style="dim")
    except ToolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    if not result.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `bound-check` to the `toolkit` app (entry point group "toolkit.commands")."""
    app.command("bound-check")(bound_check)
