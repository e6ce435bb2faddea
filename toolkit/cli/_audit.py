"""`toolkit audit`: one training run with canaries, audited eps vs the accountant's eps.

Registered on the `toolkit` app by `toolkit.cli._app._register`. The command only parses
arguments (the run options it shares with `toolkit train`: `toolkit.cli._options`), merges
them over its defaults as `toolkit train` does, and calls `toolkit.studies.run_audit`.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from toolkit.cli._errors import one_line_errors
from toolkit.cli._inputs import show_defaults, train_defaults
from toolkit.cli._options import RUN, run_config, run_options

console = Console()
# The audit's own defaults (short runs); any flag overrides them, as for `toolkit train`.
AUDIT_DEFAULTS = dict(
    dataset="fashion-mnist", activation="tanh", epochs=5, batch_size=256, lr=0.1, momentum=0.9,
    clip_norm=1.0,
)  # fmt: skip


def _audit_defaults() -> dict:
    """What an audit gets for an option it is not given (shown by --help)."""
    return {**train_defaults(), **AUDIT_DEFAULTS}


@one_line_errors
@show_defaults(_audit_defaults())
@run_options
def audit(
    dataset=RUN("mnist, fashion-mnist (default) or cifar10."),
    data=RUN, model=RUN, loss=RUN,
    canaries: int = typer.Option(1000, help="Number m of canaries; each is included w.p. 1/2."),
    activation=RUN("relu, tanh (default), tempered, sigmoid, ..."),
    scale=RUN, inverse_temp=RUN, offset=RUN, epochs=RUN("Epochs."),
    batch_size=RUN("Expected batch size B; q = B/(base+m)."), max_physical_batch=RUN,
    per_example=RUN, optimizer=RUN("sgd (default) or adam."), lr=RUN, momentum=RUN,
    clip_norm=RUN, clipping=RUN("flat (default), automatic, quantile or per-layer."),
    layer_split=RUN, target_quantile=RUN, quantile_lr=RUN, count_noise=RUN,
    noise_multiplier=RUN,
    target_epsilon=RUN, delta=RUN("delta."), accountant=RUN("Headline accountant."),
    sampling=RUN, seed=RUN("Seeds training, canary labels, inclusion."),
    limit_train=RUN("Base set: the first N training examples."), data_dir=RUN,
    no_privacy=RUN,
    confidence: float = typer.Option(0.95, help="Confidence of the audited lower bound."),
    out=RUN("Directory to create with audit.json, canaries.npz."),
    config_file=RUN("TOML settings (keys as `toolkit train --config`); flags win."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON record, not a table."),
    quiet=RUN,
) -> None:  # fmt: skip
    """Audit DP-SGD empirically: train once with canaries, report an eps lower bound.

    Exit 0 if the audited bound is at most every accountant's eps, else exit 1 (a bug).
    """
    values = dict(locals())  # the options (toolkit.cli._options), before anything else
    from toolkit.runs import rundir
    from toolkit.studies import run_audit

    cfg = run_config(values, base=AUDIT_DEFAULTS)
    record = run_audit(
        cfg, canaries=canaries, confidence=confidence, out=out, progress=not (quiet or as_json)
    )
    if as_json:
        print(json.dumps(rundir.record_to_json(record), indent=2, sort_keys=True))
    else:
        _print_table(record, out)
    if not record.consistent:
        print(
            f"BUG: audited eps lower bound {record.epsilon_lower_bound:.3f} exceeds the "
            f"accountant's eps {min(v for v in record.epsilon.values()):.3f}: the mechanism "
            f"or its accounting is wrong (a correct one shows this with probability <= "
            f"{1 - record.confidence:.2g}).",
            file=sys.stderr,
        )
        raise typer.Exit(1)


def _fmt_eps(value) -> str:
    return "inf (no finite bound)" if value is None or value == float("inf") else f"{value:.3f}"


def _print_table(record: dict, out) -> None:
    cfg = record.config
    title = f"audit: {cfg['dataset']}, {record.canaries} canaries ({record.num_included} in)"
    table = Table(title=title, show_header=False)
    table.add_row(
        "training",
        f"{record.num_base} base + {record.canaries} canary slots, "
        f"q={record.sampling_prob:.4g}, {record.steps} steps",
    )
    table.add_row("privacy", record.privacy)
    if record.private:
        table.add_row("noise multiplier", f"{record.noise_multiplier:.4f}, C={cfg['clip_norm']:g}")
        for name, eps in record.epsilon.items():
            mark = " (headline)" if name == record.accountant else ""
            table.add_row(
                f"accountant eps ({name}){mark}", f"{_fmt_eps(eps)} at delta={record.delta:g}"
            )
    a = record.audit
    table.add_row(
        "audited eps lower bound",
        f"{record.epsilon_lower_bound:.3f} at {record.confidence:.0%} confidence",
    )
    table.add_row(
        "guesses",
        f"{a['correct']}/{a['guesses']} correct "
        f"(k+={a['k_pos']}, k-={a['k_neg']}; best of {a['tests']} guess counts)",
    )
    table.add_row("consistent", "yes" if record.consistent else "NO: see the error below")
    table.add_row("test accuracy", f"{record.test_accuracy:.4f}")
    table.add_row("train time", f"{record.train_time_s:.1f} s (epochs and compilation, not set-up)")
    table.add_row(
        "not covered by eps",
        "the canaries' inclusion bits (the 'in' count, canaries.npz), hence the guesses and "
        "the audited bound, and the train time: an audit tests the mechanism, it is not a "
        "DP release",
    )
    if out is not None:
        table.add_row("output", str(out))
    console.print(table)
