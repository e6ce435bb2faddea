"""Sweeps: a grid of training configs, each a run directory under one root.

A sweep file is TOML:

    [base]                       # TrainConfig fields; `preset` starts from a paper setting
    preset = "fashion-mnist-tanh"
    epochs = 15

    [grid]                       # the cartesian product of these lists
    activation = ["relu", "tanh", {name = "tempered", scale = 1.5, inverse_temp = 2, offset = 0.5}]
    seed = [0, 1]

`scale`, `inverse_temp` and `offset` may also be grid keys (they set the
tempered sigmoid's parameters). Each grid point becomes `ROOT/NAME`, NAME
spelling out the grid values. Finished runs (summary.json present) are
skipped, unfinished ones resumed from their last checkpoint, so a sweep
restarts after a crash without redoing work.

Executors: `local` runs in this process (workers=1) or a spawn-based process
pool; `ray` submits the same function as Ray tasks to an existing cluster
(`address`), each writing its run directory to storage all nodes share.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import multiprocessing
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib

from toolkit import rundir
from toolkit.activations import ActivationSpec
from toolkit.config import TrainConfig, preset
from toolkit.errors import ToolkitError

EXECUTORS = ("local", "ray")
_TEMPERED_KEYS = ("scale", "inverse_temp", "offset")
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _activation(value: Any) -> ActivationSpec:
    if isinstance(value, str):
        return ActivationSpec(value)
    if isinstance(value, dict):
        return ActivationSpec(**value)
    if isinstance(value, ActivationSpec):
        return value
    raise ToolkitError(f"activation={value!r} must be a name or a table of ActivationSpec fields.")


def _settings(point: dict[str, Any]) -> dict[str, Any]:
    settings = preset(point.pop("preset")) if "preset" in point else {}
    tempered = {k: point.pop(k) for k in _TEMPERED_KEYS if k in point}
    unknown = set(point) - _FIELDS
    if unknown:
        raise ToolkitError(f"sweep keys {sorted(unknown)} are not TrainConfig fields.")
    settings.update(point)
    if "activation" in settings:
        settings["activation"] = _activation(settings["activation"])
    if tempered:
        base = settings.get("activation", ActivationSpec("tempered"))
        settings["activation"] = dataclasses.replace(base, name="tempered", **tempered)
    return settings


def _name_part(key: str, value: Any) -> str:
    text = (
        _activation(value).label
        if key == "activation"
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )
    return re.sub(r"[^A-Za-z0-9.=,+-]", "", f"{key}={text}")


def expand(spec: dict[str, Any]) -> list[tuple[str, TrainConfig]]:
    """(name, config) for every grid point of a parsed sweep spec."""
    base = dict(spec.get("base", {}))
    grid = spec.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ToolkitError(f"grid.{key}={values!r} must be a non-empty list.")
    keys = list(grid)
    runs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        point = {**base, **dict(zip(keys, combo))}
        name = "_".join(_name_part(k, v) for k, v in zip(keys, combo)) or "run"
        try:
            runs.append((name, TrainConfig(**_settings(point))))
        except (TypeError, ValueError) as e:
            raise ToolkitError(f"sweep point {name}: {e}") from None
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise ToolkitError("sweep grid produces duplicate run names; make grid values distinct.")
    return runs


def load_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ToolkitError(f"sweep file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as e:
        raise ToolkitError(f"sweep file {path} is not valid TOML ({e}).") from None


def run_one(config: dict[str, Any], out: str) -> str:
    """Train, resume or skip one run; returns 'skipped', 'resumed' or 'trained'.

    A plain module-level function of JSON-able arguments, so process pools and
    Ray can ship it.
    """
    from toolkit import train as train_lib

    cfg, out_path = TrainConfig.from_dict(config), Path(out)
    if (out_path / rundir.SUMMARY).exists():
        return "skipped"
    if (out_path / rundir.CONFIG).exists():
        stored = rundir.read_config(out_path).get("requested")
        if stored is not None and stored != json.loads(json.dumps(cfg.to_dict())):
            raise ToolkitError(
                f"{out_path} holds a run of a different config; move it away or rename the sweep."
            )
        train_lib.resume(out_path)
        return "resumed"
    train_lib.train(cfg, out=out_path)
    return "trained"


def _ray_run_one(config: dict[str, Any], out: str) -> str:
    return run_one(config, out)


def run_sweep(
    runs: Sequence[tuple[str, TrainConfig]],
    root: str | Path,
    *,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    on_done=None,
) -> dict[str, str]:
    """Run every (name, config) into `root/name`; returns name -> status.

    `on_done(name, status)` is called as each run finishes (for progress).
    """
    if executor not in EXECUTORS:
        raise ToolkitError(
            f"executor={executor!r} is unknown; expected one of {', '.join(EXECUTORS)}."
        )
    if workers < 1:
        raise ToolkitError(f"workers={workers} must be >= 1.")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = {name: (cfg.to_dict(), str(root / name)) for name, cfg in runs}
    done = on_done or (lambda name, status: None)
    results: dict[str, str] = {}
    if executor == "ray":
        try:
            import ray
        except ImportError:
            raise ToolkitError("executor='ray' needs Ray: pip install -e '.[ray]'.") from None
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        remote = ray.remote(_ray_run_one)
        refs = {remote.remote(*args): name for name, args in jobs.items()}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            name = refs[ready[0]]
            results[name] = ray.get(ready[0])
            done(name, results[name])
    elif workers == 1:
        for name, args in jobs.items():
            results[name] = run_one(*args)
            done(name, results[name])
    else:
        ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(run_one, *args): name for name, args in jobs.items()}
            for fut in cf.as_completed(futures):
                name = futures[fut]
                results[name] = fut.result()
                done(name, results[name])
    return results
