"""The experiments' commands of `toolkit`: sweep, table, pareto, figures, bias.

Registered on the `toolkit` command line through the entry point group
"toolkit.commands" (`register`); each parses its options and calls `experiments` or
`toolkit.studies`, nothing else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from toolkit.base import ToolkitError
from toolkit.cli import one_line_errors

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the commands to the `toolkit` app."""
    for command in (sweep, table, pareto, figures, bias):
        app.command(command.__name__)(command)


@one_line_errors
def sweep(
    spec: Path = typer.Argument(..., help="Sweep file (TOML: \\[base] and \\[grid] tables)."),
    root: Path = typer.Option(..., help="Directory that holds one run directory per grid point."),
    executor: str = typer.Option("local", help="local (process pool) or ray."),
    workers: int = typer.Option(
        1, help="Local processes (--executor local); each run uses all cores it is given."
    ),
    address: str = typer.Option(
        None, help="Ray cluster address (--executor ray; default: start a local one)."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Run the points recorded as failed again."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs, train nothing."),
) -> None:
    """Run a grid of configs; finished runs are skipped and unfinished ones resumed.

    The whole sweep (every grid point, the root, every run directory) is validated
    before the first run starts.

    A point that fails when it runs (it diverges, or its settings or data turn out bad)
    is recorded in ROOT/sweep-failures.json and the sweep goes on; every failure is
    listed at the end. A re-run skips recorded failures unless --retry-failed (a diverged
    point diverges again with the same settings). A point whose run directory another
    process holds is left for the next run of the sweep.

    Exit code: 0 when every point finished, 3 when a point diverged, else 2.
    """
    from experiments import sweep as sweep_lib
    from experiments.sweep_progress import SweepProgress
    from toolkit.base import outputs

    if not 1 <= workers <= 1024:
        raise ToolkitError(f"--workers={workers} must be in [1, 1024].")
    sweep_lib.check_executor(executor, workers, address, prefix="--")
    outputs.check_dir("--root", root)
    runs = sweep_lib.load(spec)
    if dry_run:
        lines = sweep_lib.describe(runs, root, retry_failed=retry_failed)
        console.print("\n".join(lines), markup=False, highlight=False)
        return
    sweep_lib.plan(runs, root, retry_failed=retry_failed)
    with SweepProgress(len(runs), root) as progress:
        results = sweep_lib.run_sweep(
            runs, root, executor=executor, workers=workers, address=address,
            retry_failed=retry_failed, on_done=progress.done,
        )  # fmt: skip
    for line in sweep_lib.report(progress.problems, root, len(runs)):
        print(line, file=sys.stderr)
    code = sweep_lib.exit_code(results)
    if code:
        raise typer.Exit(code)


@one_line_errors
def pareto(
    runs: list[Path] = typer.Argument(..., help="Run directories or directories of runs."),
    accountant: str = typer.Option("rdp-classic", help="Which stored eps is the x axis."),
    out: Path = typer.Option(..., help="Figure path; writes OUT.png and OUT.pdf."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing OUT.png/.pdf."),
) -> None:
    """Figure 3: test accuracy against eps for each setting, with the Pareto frontier."""
    from experiments import plots, records

    _check_figure_out(out, overwrite)

    written = plots.pareto_figure(
        records.find_runs(runs), accountant=records.check_accountant(accountant), out=out
    )
    console.print("wrote " + ", ".join(map(str, written)))


@one_line_errors
def table(
    runs: list[Path] = typer.Argument(..., help="Run directories or directories of runs."),
    accountant: str = typer.Option("rdp-classic", help="Which stored eps to report."),
    out: Path = typer.Option(None, help="Writes OUT.md and OUT.csv."),
    best_lr: bool = typer.Option(False, "--best-lr", help="Table 4: best lr per setting."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT.md/.csv if they exist."),
) -> None:
    """Table 3: final test accuracy (mean +- std over seeds) per setting, with eps."""
    from experiments import records, tables
    from toolkit.base import atomic_write_text, outputs

    files = outputs.file_set(out, (".md", ".csv")) if out is not None else []
    if out is not None:
        outputs.check_files("--out", files, value=out, overwrite=overwrite)

    found = records.find_runs(runs)
    acc = records.check_accountant(accountant)
    rows = (
        tables.best_lr_rows(found, accountant=acc)
        if best_lr
        else tables.accuracy_rows(found, accountant=acc)
    )
    markdown = tables.to_markdown(rows, note=tables.BEST_LR_NOTE if best_lr else None)
    console.print(markdown, markup=False)
    if out is not None:
        with outputs.writing("--out", out):
            files[0].parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(files[0], markdown)
            atomic_write_text(files[1], tables.to_csv(rows))


@one_line_errors
def figures(
    runs: list[Path] = typer.Argument(..., help="Run directories or directories of runs."),
    kind: str = typer.Option(..., help="grad-norms (Fig. 4), act-norms (Fig. 5) or grid (Fig. 2)."),
    accountant: str = typer.Option("rdp-classic", help="eps shown in titles."),
    out: Path = typer.Option(..., help="Figure path; writes OUT.png and OUT.pdf."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing OUT.png/.pdf."),
) -> None:
    """Figures 2, 4 and 5 from run records."""
    from experiments import plots, records

    if kind not in ("grad-norms", "act-norms", "grid"):
        raise ToolkitError(f"--kind={kind!r} is unknown; expected grad-norms, act-norms or grid.")
    _check_figure_out(out, overwrite)

    found = records.find_runs(runs)
    acc = records.check_accountant(accountant)
    if kind in plots.TRACES:
        field, ylabel = plots.TRACES[kind]
        written = plots.trace_figure(found, field=field, ylabel=ylabel, out=out, accountant=acc)
    elif kind == "grid":
        found = records.paper_cnn_runs(found, needs=plots.GRID_NEEDS)
        written = plots.grid_figure(found, accountant=acc, out=out)
        _, best = plots.best_triplets(found)
        console.print(
            f"mean of best 10% triplets: s={best[0]:.3f} T={best[1]:.3f} o={best[2]:.3f} "
            "(chosen by test accuracy among the runs: not covered by one run's eps)"
        )
    else:
        raise ToolkitError(f"kind={kind!r} is unknown; expected grad-norms, act-norms or grid.")
    console.print("wrote " + ", ".join(map(str, written)))


def _check_figure_out(out: Path, overwrite: bool) -> None:
    from toolkit.base import outputs
    from toolkit.base.plotting import figure_files

    outputs.check_files("--out", figure_files(out), value=out, overwrite=overwrite)


@one_line_errors
def bias(
    runs: list[Path] = typer.Argument(
        ...,
        help="Run directories (toolkit train or toolkit.fit, with keep_checkpoints) whose "
        "model and data are named: a registry name, a data file, or package.module:fn; or "
        "OUT.json files of earlier measurements, read and shown with the rest.",
    ),
    sample: int = typer.Option(
        None, help="Training examples to measure on, drawn by --seed (default: all of them)."
    ),
    seed: int = typer.Option(
        0, help="Seed of the sample and of the bootstrap weights (same seed: paired runs)."
    ),
    bootstrap: int = typer.Option(
        100, help="Poisson-bootstrap replicates R for the 95% intervals (0: none)."
    ),
    epochs: str = typer.Option(
        None,
        help="Comma-separated epochs to measure, e.g. 0,20,40 (0: the initialisation; "
        "default: it and every kept checkpoint).",
    ),
    clip_norm: float = typer.Option(
        None,
        help="C to clip at (default: the run's; needed for non-private runs: give the DP run's C).",
    ),
    out: Path = typer.Option(
        ...,
        help="Writes OUT.json, OUT.md (tables), OUT.png/.pdf (over training), "
        "OUT-relation.png/.pdf.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Clipping bias and step noise over training, on the whole training split: fraction
    clipped, cosine, norm ratio and projection of the mean clipped on the mean gradient,
    signal-to-noise of one step, per-layer shares, with bootstrap intervals. Diagnostics on
    private data, not covered by eps."""
    from experiments import bias_plots, bias_tables
    from toolkit import studies as bias_lib
    from toolkit.base import atomic_write_text, outputs
    from toolkit.base.plotting import figure_files

    if sample is not None and not 1 <= sample <= 1_000_000:
        raise ToolkitError(f"--sample={sample} must be in [1, 1000000].")
    if not 0 <= seed < 2**32:
        raise ToolkitError(f"--seed={seed} must be in [0, 2^32).")
    if not 0 <= bootstrap <= bias_lib.MAX_REPLICATES:
        raise ToolkitError(f"--bootstrap={bootstrap} must be in [0, {bias_lib.MAX_REPLICATES}].")
    try:
        wanted = None if epochs is None else [int(e) for e in epochs.split(",")]
    except ValueError:
        wanted = [-1]
    if wanted is not None and min(wanted) < 0:
        raise ToolkitError(
            f"--epochs={epochs!r} must be comma-separated epochs >= 0, e.g. 0,20,40."
        )
    relation = bias_plots.relation_path(out)
    files = [*outputs.file_set(out, (".json", ".md")), *figure_files(out),
             *figure_files(relation)]  # fmt: skip
    outputs.check_files("--out", files, value=out, overwrite=overwrite)
    measured = {r: bias_lib.read_json(r) for r in runs if r.suffix == ".json" and r.is_file()}
    for r in runs:  # every run checked before the first is measured
        if r not in measured:
            bias_lib.check_run(r, clip_norm=clip_norm, epochs=wanted)
    results = [
        result
        for r in runs
        for result in measured.get(r) or [
            bias_lib.run_bias(r, sample_size=sample, seed=seed, bootstrap=bootstrap,
                              epochs=wanted, clip_norm=clip_norm)
        ]
    ]  # fmt: skip
    for r in results:
        console.print(bias_plots.run_line(r), markup=False, highlight=False)
        for p in r.points:
            console.print("  " + bias_plots.point_line(r, p), markup=False, highlight=False)
    table = outputs.file_set(out, (".md",))[0]
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table, bias_tables.report(results))
    written = [
        bias_lib.write_json(results, out),
        table,
        *bias_plots.bias_figure(results, out=out),
        *bias_plots.relation_figure(results, out=relation),
    ]
    console.print(f"{bias_lib.DIAGNOSTIC_LABEL}; wrote " + ", ".join(map(str, written)))
