"""Sweeps: a grid of training configs, each a run directory under one root.

A sweep file is TOML:

    [base]                       # RunConfig fields; `preset` starts from a paper setting
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

Nothing runs until the whole sweep is valid: the file's tables and keys (a misspelled
one gets a did-you-mean), every grid point through `toolkit.runs._config.validate` (train's
own checks of types and ranges), the root and every run directory (`plan`).

Executors: `local` runs in this process (workers=1) or a spawn-based process
pool; `ray` submits the same function as Ray tasks to an existing cluster
(`address`), each writing its run directory to storage all nodes share.

Each run's eps covers that run, for its fixed settings. Choosing among a sweep's runs
(the best learning rate, triplet, ...) on anything that depends on the training data,
including accuracy of models trained on it, is hyperparameter search: not covered by
any one run's eps (docs/privacy.md section 4). The run directories carry their own labels
(`not_covered_by_dp` in each record).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import difflib
import itertools
import json
import multiprocessing
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib

from toolkit.base import ToolkitError
from toolkit.nn import ActivationSpec
from toolkit.runs import RunConfig, preset, rundir, validate

EXECUTORS = ("local", "ray")
_TABLES = ("base", "grid")
_TEMPERED_KEYS = ("scale", "inverse_temp", "offset")
_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
_KEYS = sorted(_FIELDS | {"preset", *_TEMPERED_KEYS})


def _did_you_mean(word: str, choices: Sequence[str], fmt: str = "{!r}") -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {fmt.format(close[0])}?" if close else ""


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
    pair = ("noise_multiplier", "target_epsilon")
    if any(k in point for k in pair):  # as on the command line: the pair is replaced together
        settings.update(dict.fromkeys(pair))
    tempered = {k: point.pop(k) for k in _TEMPERED_KEYS if k in point}
    settings.update(point)
    if settings.get("model", "paper-cnn") != "paper-cnn":
        # Your own model, as on the command line: a preset's activation and weight
        # standardisation (the paper CNN's) do not apply; given here, validate refuses them.
        if "activation" not in point and not tempered:
            settings["activation"] = None
        if "weight_standardization" not in point:
            settings["weight_standardization"] = False
    if settings.get("activation") is not None:
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


def check_spec(spec: dict[str, Any]) -> None:
    """The shape of a sweep file: tables [base] and [grid] only, known keys, grid lists."""
    for table in spec:
        if table not in _TABLES:
            kind = "table" if isinstance(spec[table], dict) else "top-level key"
            hint = _did_you_mean(table, _TABLES, "[{}]")
            if kind == "top-level key" and not hint and table in _KEYS:
                hint = "; settings go under [base] (one value) or [grid] (a list)"
            end = "" if hint.endswith("?") else "."
            raise ToolkitError(
                f"{kind} [{table}] is unknown (a sweep file has [base] and [grid]){hint}{end}"
            )
        if not isinstance(spec[table], dict):
            raise ToolkitError(f"[{table}] must be a table, got {spec[table]!r}.")
        for key in spec[table]:
            if key not in _KEYS:
                hint = _did_you_mean(key, _KEYS) or "."
                raise ToolkitError(
                    f"{table}.{key} is not a setting (settings: the RunConfig fields, "
                    f"preset, scale, inverse_temp, offset){hint}"
                )
    for key, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ToolkitError(f"grid.{key}={values!r} must be a non-empty list.")


def expand(spec: dict[str, Any]) -> list[tuple[str, RunConfig]]:
    """(name, config) for every grid point of a parsed sweep spec, each validated.

    Every point goes through `toolkit.runs._config.validate`, train's own checks (types and
    ranges), before anything runs; the first bad point is named, with a count of the
    others. Checks that need the data (batch_size <= N) happen when the run starts.
    """
    check_spec(spec)
    base = dict(spec.get("base", {}))
    grid = spec.get("grid", {})
    keys = list(grid)
    runs, errors = [], []
    for combo in itertools.product(*(grid[k] for k in keys)):
        point = {**base, **dict(zip(keys, combo))}
        try:
            name = "_".join(_name_part(k, v) for k, v in zip(keys, combo)) or "run"
        except (TypeError, ValueError) as e:
            errors.append(f"grid point {dict(zip(keys, combo))}: {e}")
            continue
        try:
            cfg = RunConfig(**_settings(point))
            validate(cfg)
        except (TypeError, ValueError) as e:  # ToolkitError is a ValueError
            errors.append(f"sweep point {name}: {e}" if keys else f"[base]: {e}")
            continue
        runs.append((name, cfg))
    if errors:
        more = f" (and {len(errors) - 1} more bad points)" if len(errors) > 1 else ""
        raise ToolkitError(f"{errors[0].rstrip('.')}{more}; nothing was run.")
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
    except IsADirectoryError:
        raise ToolkitError(f"sweep file {path} is a directory; give a TOML file.") from None
    except UnicodeDecodeError:
        raise ToolkitError(f"sweep file {path} is not a text (UTF-8 TOML) file.") from None
    except OSError as e:
        raise ToolkitError(f"sweep file {path} cannot be read ({e.strerror or e}).") from None
    except tomllib.TOMLDecodeError as e:
        raise ToolkitError(f"sweep file {path} is not valid TOML ({e}).") from None


def load(path: str | Path) -> list[tuple[str, RunConfig]]:
    """Read and validate a sweep file; errors name the file."""
    spec = load_spec(path)
    try:
        return expand(spec)
    except ToolkitError as e:
        raise ToolkitError(f"sweep file {path}: {e}") from None


def status(out: Path, cfg: RunConfig) -> str:
    """What a sweep will do with `out`: 'train', 'resume' or 'skip' (finished).

    ToolkitError if `out` is a file, or a run of another config.
    """
    if out.exists() and not out.is_dir():
        raise ToolkitError(f"{out} is a file; a sweep needs a run directory there.")
    if (out / rundir.CONFIG).exists():
        stored = rundir.read_config(out)
        requested = stored.get("requested") if isinstance(stored, dict) else None
        if requested is not None and requested != json.loads(json.dumps(cfg.to_dict())):
            raise ToolkitError(
                f"{out} holds a run of a different config; move it away or rename the sweep."
            )
        return "skip" if (out / rundir.SUMMARY).exists() else "resume"
    if (out / rundir.SUMMARY).exists():
        raise ToolkitError(f"{out} has a {rundir.SUMMARY} but no {rundir.CONFIG}; move it away.")
    if out.exists() and any(out.iterdir()):
        raise ToolkitError(f"{out} exists, is not empty and holds no run; move it away.")
    return "train"


def check_root(root: str | Path) -> Path:
    """`root` can hold the sweep's run directories: a directory, or creatable and writable."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ToolkitError(f"--root={root} is a file; give a directory for the run directories.")
    anchor = root.absolute()
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise ToolkitError(f"--root={root} is below the file {anchor}; give a directory.")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ToolkitError(f"--root={root} is not writable ({anchor}); choose another directory.")
    return root


def plan(runs: Sequence[tuple[str, RunConfig]], root: str | Path) -> dict[str, str]:
    """name -> 'train' | 'resume' | 'skip' for every run, after checking every run directory.

    Nothing is written: a bad root or run directory stops the sweep before any run starts.
    """
    root = check_root(root)
    return {name: status(root / name, cfg) for name, cfg in runs}


def describe(runs: Sequence[tuple[str, RunConfig]], root: str | Path) -> list[str]:
    """The dry run: the settings all runs share, then each run's directory, what will happen
    to it, and its settings that differ from the others'."""
    todo = plan(runs, root)
    dicts = [cfg.to_dict() for _, cfg in runs]
    differ = [k for k in dicts[0] if len({json.dumps(d[k], sort_keys=True) for d in dicts}) > 1]
    shared = {k: v for k, v in dicts[0].items() if k not in differ}
    counts = {s: sum(v == s for v in todo.values()) for s in ("train", "resume", "skip")}
    lines = [
        f"{len(runs)} runs under {root}: {counts['train']} to train, {counts['resume']} to "
        f"resume, {counts['skip']} finished (skipped)",
        "shared: " + ", ".join(f"{k}={_shown(k, v)}" for k, v in shared.items()),
    ]
    for (name, _), d in zip(runs, dicts):
        own = ", ".join(f"{k}={_shown(k, d[k])}" for k in differ) or "(no differences)"
        lines.append(f"{todo[name]:>6}  {Path(root) / name}: {own}")
    if any(d["private"] and d["noise_multiplier"] is None for d in dicts):
        lines.append(
            "sigma (noise_multiplier=None) is calibrated to target_epsilon when a run starts."
        )
    return lines


def _shown(key: str, value: Any) -> str:
    if key == "activation":
        return ActivationSpec.from_dict(value).label
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_one(config: dict[str, Any], out: str) -> str:
    """Train, resume or skip one run; returns 'skipped', 'resumed' or 'trained'.

    A plain module-level function of JSON-able arguments, so process pools and
    Ray can ship it.
    """
    from toolkit import training as train_lib

    cfg, out_path = RunConfig.from_dict(config), Path(out)
    todo = status(out_path, cfg)
    if todo == "skip":
        return "skipped"
    if todo == "resume":
        train_lib.resume(out_path)
        return "resumed"
    train_lib.train(cfg, out=out_path)
    return "trained"


def _ray_run_one(config: dict[str, Any], out: str) -> str:
    return run_one(config, out)


def check_executor(executor: str, workers: int) -> None:
    if executor not in EXECUTORS:
        raise ToolkitError(
            f"executor={executor!r} is unknown; expected one of {', '.join(EXECUTORS)}."
        )
    if workers < 1:
        raise ToolkitError(f"workers={workers} must be >= 1.")


def run_sweep(
    runs: Sequence[tuple[str, RunConfig]],
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
    check_executor(executor, workers)
    plan(runs, root)  # every run directory checked before the first run starts
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
