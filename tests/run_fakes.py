"""Run directories written through `toolkit.runs.rundir`'s own writers, without training.

The readers (tables, figures) are what the tests that use these check, so the numbers
are chosen by the test (accuracies, norms, eps), not produced by a model; every file has
the layout `toolkit train` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.nn import ActivationSpec
from toolkit.runs import EpochRecord, GradNormStats, RunConfig, RunSummary, resolve, rundir

ACCOUNTANTS = ("rdp-classic", "rdp", "pld")


def fake_run(
    out: Path,
    *,
    accs: tuple[float, ...] = (0.5, 0.6, 0.7),
    eps: tuple[float, ...] | None = (1.0, 1.5, 2.0),
    norms: tuple[float, ...] = (1.0, 2.0, 3.0),
    metric: str = "test_accuracy",
    **settings: Any,
) -> Path:
    """A finished run of `len(accs)` epochs; `eps=None`: every eps inf (sigma = 0)."""
    settings = {"noise_multiplier": 1.0, "activation": "tanh", **settings}
    settings["activation"] = ActivationSpec(settings["activation"])
    settings["epochs"] = len(accs)
    cfg = resolve(RunConfig(**settings), num_examples=1000)
    rundir.write_config(out, cfg, {"requested": cfg.to_dict()})
    history = []
    for i, acc in enumerate(accs):
        e = None if eps is None or not cfg.private else eps[i]
        history.append(
            EpochRecord(
                epoch=i + 1, step=10 * (i + 1), train_loss=1.0 / (i + 1),
                nonfinite_loss_fraction=0.0, epsilon=dict.fromkeys(ACCOUNTANTS, e),
                accountant=cfg.accountant, sampling=cfg.sampling,
                privacy="rdp-classic, Poisson sampling" if cfg.private else "non-private",
                grad_norm=GradNormStats(norms[i], norms[i], 2 * norms[i], 0.5, 0.0),
                per_example_grads="vmap", batch_size_mean=float(cfg.batch_size),
                epoch_time_s=1.0,
                metrics={metric: acc, "first_conv_activation_norm": 10.0 + i,
                         "per_class_accuracy_std": 0.1},
            )
        )  # fmt: skip
    rundir.write_epochs(out, history)
    last = history[-1]
    rundir.write_summary(
        out,
        RunSummary(
            dataset=cfg.dataset, activation=cfg.activation.label, epochs=cfg.epochs,
            num_train=1000, private=cfg.private, noise_multiplier=cfg.noise_multiplier,
            epsilon=last.epsilon, delta=cfg.delta if cfg.private else None,
            accountant=cfg.accountant, sampling=cfg.sampling, privacy=last.privacy,
            train_time_s=float(len(accs)), per_example_grads="vmap",
            metrics={metric: accs[-1], "per_class_accuracy_std": 0.1},
        ),
    )  # fmt: skip
    return out


def edit_json(path: Path, change) -> None:
    """Rewrite a JSON file through `change(obj) -> obj`."""
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def replace_config(out: Path, **changes: Any) -> None:
    def apply(record):
        record["config"].update(changes)
        return record

    edit_json(out / rundir.CONFIG, apply)
