"""What differs between settings: the columns of a table, the words of a legend, a dry run.

A setting is a resolved `RunConfig` without its seed (and without `data_dir`: where
the data lives is not a setting). `varying` names the fields whose values differ across
some settings; `describe` writes one field's value the way tables and legends show it;
`distinct_labels` gives every setting a label that names what sets it apart, so two
different settings never share a legend entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Never a setting: the seed is what a band or a +- is taken over; data_dir is a location.
NOT_SETTINGS = ("seed", "data_dir")
# Fields that mean nothing for a non-private run (resolve() sets C = inf, sigma = 0).
PRIVACY_FIELDS = (
    "clip_norm", "clipping", "gamma", "noise_multiplier", "target_epsilon", "delta",
    "accountant", "sampling",
)  # fmt: skip
# Short names, as the paper writes them.
SHORT = {
    "clip_norm": "C", "batch_size": "B", "noise_multiplier": "sigma", "limit_train": "N",
    "target_epsilon": "target eps", "momentum": "momentum", "max_physical_batch": "micro-batch",
    "per_example": "per-example", "lr_schedule": "lr schedule", "warmup_epochs": "warm-up",
    "ema_decay": "EMA", "accountant": "run's accountant",
}  # fmt: skip


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def varying(configs: Sequence[Mapping[str, Any]], *, skip: Sequence[str] = ()) -> list[str]:
    """Fields (in config order) whose value is not the same in every config given."""
    if not configs:
        return []
    names = list(dict.fromkeys(k for c in configs for k in c))
    return [
        k for k in names
        if k not in NOT_SETTINGS and k not in skip
        and len({_key(c.get(k)) for c in configs}) > 1
    ]  # fmt: skip


def describe(field: str, value: Any) -> str:
    """A field's value as a table cell: 'inf' for an unbounded C, '-' for unset."""
    if field == "activation" and isinstance(value, Mapping):
        name = value.get("name", "?")
        if name != "tempered":
            return str(name)
        return "tempered(s={:g},T={:g},o={:g})".format(
            value.get("scale"), value.get("inverse_temp"), value.get("offset")
        )
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def name(field: str) -> str:
    return SHORT.get(field, field)


def label_parts(config: Mapping[str, Any], fields: Sequence[str]) -> list[str]:
    """'C=0.1', 'lr=4' ... for the given fields; privacy fields only for a private run."""
    private = bool(config.get("private", True))
    return [
        f"{name(f)}={describe(f, config.get(f))}"
        for f in fields
        if f not in ("activation", "private") and (private or f not in PRIVACY_FIELDS)
    ]


def distinct_labels(configs: Sequence[Mapping[str, Any]], base: Sequence[str]) -> list[str]:
    """Labels `base[i]` + what sets config i apart; different configs get different labels.

    Non-privacy fields that vary over all configs, and privacy fields that vary over the
    private ones, are named. Configs that still share a label (e.g. non-private runs that
    differ only in an unused privacy field) get the fields that differ among them.
    """
    private = [c for c in configs if c.get("private", True)]
    fields = [f for f in varying(configs) if f not in PRIVACY_FIELDS]
    fields += [f for f in varying(private) if f in PRIVACY_FIELDS]
    labels = [", ".join([b, *label_parts(c, fields)]) for b, c in zip(base, configs)]
    for label in set(labels):
        same = [i for i, lab in enumerate(labels) if lab == label]
        if len(same) < 2:
            continue
        extra = varying([configs[i] for i in same])
        for i in same:
            parts = [f"{name(f)}={describe(f, configs[i].get(f))}" for f in extra]
            labels[i] = ", ".join([label, *parts])
    return labels
