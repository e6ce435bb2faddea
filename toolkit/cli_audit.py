"""`toolkit audit`: one training run with canaries, audited eps vs the accountant's eps.

Registered on the `toolkit` app by `toolkit.cli._register`. The command only parses
arguments and calls `toolkit.audit.run_audit`; `toolkit.cli.one_line_errors` is applied
at call time (imported lazily, so importing either module first works).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def audit(
    dataset: str = typer.Option("fashion-mnist", help="mnist, fashion-mnist or cifar10."),
    canaries: int = typer.Option(1000, help="Number m of canaries; each is included w.p. 1/2."),
    activation: str = typer.Option("tanh", help="relu, tanh, sigmoid, elu, gelu."),
    epochs: int = typer.Option(5),
    batch_size: int = typer.Option(256, help="Expected batch size B; q = B / (base + m)."),
    max_physical_batch: int = typer.Option(512, help="Micro-batch cap (speed/memory only)."),
    optimizer: str = typer.Option("sgd", help="sgd or adam."),
    lr: float = typer.Option(0.1, help="Learning rate."),
    momentum: float = typer.Option(0.9, help="Heavy-ball momentum for sgd."),
    clip_norm: float = typer.Option(1.0, help="Per-example clipping norm C."),
    clipping: str = typer.Option("flat", help="flat or automatic."),
    noise_multiplier: float = typer.Option(None, help="sigma; noise std is sigma*C on the sum."),
    target_epsilon: float = typer.Option(None, help="Calibrate sigma to this eps instead."),
    delta: float = typer.Option(1e-5),
    accountant: str = typer.Option("rdp-classic", help="Headline accountant (all three shown)."),
    sampling: str = typer.Option("poisson", help="poisson (accounted) or shuffle (labelled)."),
    seed: int = typer.Option(0, help="Seeds training, the canary labels and the inclusion draw."),
    limit_train: int = typer.Option(None, help="Base set: the first N training examples."),
    data_dir: Path = typer.Option(None, help="Directory holding the dataset files."),
    no_privacy: bool = typer.Option(False, "--no-privacy", help="C=inf, sigma=0, same path."),
    confidence: float = typer.Option(0.95, help="Confidence of the audited lower bound."),
    out: Path = typer.Option(None, help="Directory to create with audit.json, canaries.npz."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON record, not a table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Audit DP-SGD empirically: train once with canaries, report an eps lower bound.

    Exit 0 if the audited bound is at most every accountant's eps, else exit 1 (a bug).
    """
    from toolkit.cli import one_line_errors

    settings = dict(
        dataset=dataset, activation=activation, epochs=epochs, batch_size=batch_size,
        max_physical_batch=max_physical_batch, optimizer=optimizer, lr=lr, momentum=momentum,
        clip_norm=clip_norm, clipping=clipping, noise_multiplier=noise_multiplier,
        target_epsilon=target_epsilon, delta=delta, accountant=accountant, sampling=sampling,
        seed=seed, limit_train=limit_train, data_dir=str(data_dir) if data_dir else None,
        private=not no_privacy,
    )  # fmt: skip
    one_line_errors(_audit)(settings, canaries, confidence, out, as_json, quiet)


def _audit(settings: dict, canaries: int, confidence: float, out, as_json: bool, quiet: bool):
    from toolkit.activations import ActivationSpec
    from toolkit.audit import run_audit
    from toolkit.config import TrainConfig
    from toolkit.errors import ToolkitError

    try:
        settings = {**settings, "activation": ActivationSpec(settings["activation"])}
    except ValueError as e:  # ActivationSpec validates with ValueError
        raise ToolkitError(str(e)) from None
    if not settings["private"]:
        settings.update(noise_multiplier=None, target_epsilon=None)
    record = run_audit(
        TrainConfig(**settings), canaries=canaries, confidence=confidence, out=out,
        progress=not (quiet or as_json),
    )  # fmt: skip
    if as_json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        _print_table(record, out)
    if not record["consistent"]:
        print(
            f"BUG: audited eps lower bound {record['epsilon_lower_bound']:.3f} exceeds the "
            f"accountant's eps {min(v for v in record['epsilon'].values()):.3f}: the mechanism "
            f"or its accounting is wrong (a correct one shows this with probability <= "
            f"{1 - record['confidence']:.2g}).",
            file=sys.stderr,
        )
        raise typer.Exit(1)


def _fmt_eps(value) -> str:
    return "inf (no finite bound)" if value is None else f"{value:.3f}"


def _print_table(record: dict, out) -> None:
    cfg = record["config"]
    title = f"audit: {cfg['dataset']}, {record['canaries']} canaries ({record['num_included']} in)"
    table = Table(title=title, show_header=False)
    table.add_row(
        "training",
        f"{record['num_base']} base + {record['canaries']} canary slots, "
        f"q={record['sampling_prob']:.4g}, {record['steps']} steps",
    )
    table.add_row("privacy", record["privacy"])
    if record["private"]:
        table.add_row(
            "noise multiplier", f"{record['noise_multiplier']:.4f}, C={cfg['clip_norm']:g}"
        )
        for name, eps in record["epsilon"].items():
            mark = " (headline)" if name == record["accountant"] else ""
            table.add_row(
                f"accountant eps ({name}){mark}", f"{_fmt_eps(eps)} at delta={record['delta']:g}"
            )
    a = record["audit"]
    table.add_row(
        "audited eps lower bound",
        f"{record['epsilon_lower_bound']:.3f} at {record['confidence']:.0%} confidence",
    )
    table.add_row(
        "guesses",
        f"{a['correct']}/{a['guesses']} correct "
        f"(k+={a['k_pos']}, k-={a['k_neg']}; best of {a['tests']} guess counts)",
    )
    table.add_row("consistent", "yes" if record["consistent"] else "NO: see the error below")
    table.add_row("test accuracy", f"{record['test_accuracy']:.4f}")
    table.add_row("train time", f"{record['train_time_s']:.1f} s")
    if out is not None:
        table.add_row("output", str(out))
    console.print(table)
