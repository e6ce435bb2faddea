"""Run directories written through `toolkit.runs.rundir`'s own writers, without training.

The readers (tables, figures) are what the tests that use these check, so the numbers
are chosen by the test (accuracies, norms, eps), not produced by a model; every file has
the layout `toolkit train` and `toolkit.fit` write (`fake_run`: kind "run", of the paper
CNN or of a model of your own), or that `toolkit.fit` wrote before runs had one format
(`fake_old_fit_run`: kind "fit").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.base import atomic_write_json
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
    """A finished run of `len(accs)` epochs; `eps=None`: every eps inf (sigma = 0).

    With `model` other than "paper-cnn" (your own model) the run has no activation and
    records no first_conv_activation_norm, as such a run of `toolkit.fit` does.
    """
    settings = {"noise_multiplier": 1.0 if settings.get("private", True) else None, **settings}
    paper = settings.get("model", "paper-cnn") == "paper-cnn"
    settings["activation"] = ActivationSpec(settings.get("activation", "tanh")) if paper else None
    settings["epochs"] = len(accs)
    cfg = resolve(RunConfig(**settings), num_examples=1000)
    rundir.write_config(out, cfg, {"requested": cfg.to_dict()})
    history = _history(cfg, accs=accs, eps=eps, norms=norms, metric=metric)
    rundir.write_epochs(out, history)
    _summary(out, history, dataset=cfg.dataset, label=cfg.label, private=cfg.private,
             noise_multiplier=cfg.noise_multiplier, delta=cfg.delta)  # fmt: skip
    return out


def _history(cfg, *, accs, eps, norms, metric) -> list[EpochRecord]:
    paper = cfg.paper_model
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
                metrics={metric: acc, "per_class_accuracy_std": 0.1,
                         **({"first_conv_activation_norm": 10.0 + i} if paper else {})},
            )
        )  # fmt: skip
    return history


def _summary(out: Path, history: list[EpochRecord], *, dataset, label, private,
             noise_multiplier, delta) -> None:  # fmt: skip
    last = history[-1]
    metric = next(k for k in last.metrics if k.endswith("accuracy"))
    rundir.write_summary(
        out,
        RunSummary(
            dataset=dataset, activation=label, epochs=len(history), num_train=1000,
            private=private, noise_multiplier=noise_multiplier, epsilon=last.epsilon,
            delta=delta if private else None, accountant=last.accountant,
            sampling=last.sampling, privacy=last.privacy,
            train_time_s=float(len(history)), per_example_grads="vmap",
            metrics={metric: last.metrics[metric], "per_class_accuracy_std": 0.1},
        ),
    )  # fmt: skip


# config.json of a `toolkit.fit` run written before runs had one format (kind "fit"): the
# fields of its FitConfig; the model, loss and optimizer by name only, no data set.
OLD_FIT_CONFIG = {
    "num_train": 1000, "batch_size": 100, "epochs": 3, "clip_norm": 1.0, "clipping": "flat",
    "gamma": 0.01, "noise_multiplier": 1.0, "target_epsilon": None, "delta": 1e-5,
    "accountant": "rdp-classic", "sampling": "poisson", "seed": 0, "per_example": "auto",
    "max_physical_batch": 512, "model": "MLP", "loss": "softmax_cross_entropy",
    "optimizer": "sgd", "ema_decay": None, "augment": None,
}  # fmt: skip


def fake_old_fit_run(
    out: Path, *, accs: tuple[float, ...] = (0.5, 0.6, 0.7), **fields: Any
) -> Path:
    """A finished `toolkit.fit` run as the library wrote it before kind "run" (summary
    without data set or activation); `fields` replace entries of `OLD_FIT_CONFIG`."""
    config = {**OLD_FIT_CONFIG, **fields, "epochs": len(accs)}
    out.mkdir(parents=True)
    atomic_write_json(
        out / rundir.CONFIG,
        {"config": config, "config_hash": "0123456789abcdef", "kind": "fit", "format": 2,
         "privacy": "rdp-classic, Poisson sampling"},
    )  # fmt: skip
    history = _history(
        RunConfig(activation=None, model="python:" + config["model"], optimizer="python:sgd",
                  lr=None, dataset="python:arrays", batch_size=config["batch_size"]),
        accs=accs, eps=(1.0, 1.5, 2.0), norms=(1.0, 2.0, 3.0), metric="test_accuracy",
    )  # fmt: skip
    rundir.write_epochs(out, history)
    _summary(out, history, dataset=None, label=None, private=True,
             noise_multiplier=config["noise_multiplier"], delta=config["delta"])  # fmt: skip
    return out


def edit_json(path: Path, change) -> None:
    """Rewrite a JSON file through `change(obj) -> obj`."""
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def replace_config(out: Path, **changes: Any) -> None:
    def apply(record):
        record["config"].update(changes)
        return record

    edit_json(out / rundir.CONFIG, apply)
