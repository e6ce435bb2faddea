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

A point that fails when it runs (a `ToolkitError`: it diverged, or a setting or the data
turned out bad when the run started) does not stop the sweep: it is recorded in
ROOT/sweep-failures.json (`FAILURES`) and the other points run. A re-run skips the
recorded failures of the same config unless `retry_failed`; a point that finishes drops
its record. A point whose run directory another process holds (`toolkit.runs.RunDirBusy`)
is 'busy': not recorded, run again by the next sweep. Any other exception is a bug and
propagates.

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
import datetime
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

from toolkit.base import ToolkitError, atomic_write_json
from toolkit.nn import ActivationSpec
from toolkit.runs import RunConfig, preset, rundir, validate

EXECUTORS = ("local", "ray")
_TABLES = ("base", "grid")
_TEMPERED_KEYS = ("scale", "inverse_temp", "offset")
_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
_KEYS = sorted(_FIELDS | {"preset", *_TEMPERED_KEYS})
FAILURES = "sweep-failures.json"  # in the root: name -> the failure of that grid point
FINISHED = ("trained", "resumed", "skipped")  # the statuses of a point that finished
# A run directory holding only the lock file of `toolkit.runs.claim` holds no run yet: its
# run is starting in another process, or failed before it wrote its config.json.
_LOCK = ".lock"


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
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
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
    if out.exists() and any(p.name != _LOCK for p in out.iterdir()):
        raise ToolkitError(f"{out} exists, is not empty and holds no run; move it away.")
    return "train"


def read_failures(root: str | Path) -> dict[str, dict[str, Any]]:
    """ROOT/sweep-failures.json: name -> {"kind": "diverged" | "error", "error": the one-line
    message, "config": the point's requested config, "time": when it failed (UTC)}."""
    path = Path(root) / FAILURES
    try:
        failures = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ToolkitError(f"{path} cannot be read ({e}); move it away.") from None
    keys = {"kind", "error", "config", "time"}
    if not isinstance(failures, dict) or not all(
        isinstance(r, dict) and keys <= set(r) for r in failures.values()
    ):
        raise ToolkitError(f"{path} is not a record of sweep failures; move it away.")
    return failures


def _failed_before(
    failures: dict[str, dict[str, Any]], name: str, cfg: RunConfig
) -> dict[str, Any] | None:
    """The recorded failure of `name`, if it was a run of `cfg` (another config under the
    same name, from an edited [base], is a new point)."""
    record = failures.get(name)
    if record is None or record["config"] != json.loads(json.dumps(cfg.to_dict())):
        return None
    return record


def _update_failures(root: Path, name: str, record: dict[str, Any] | None) -> None:
    """Record (or, with None, forget) the failure of `name`; the file goes with its last record.

    Read again just before each write, so the window in which another sweep on the same
    root could write in between is one small file's read and write.
    """
    failures = read_failures(root)
    if record is None and name not in failures:
        return
    if record is None:
        del failures[name]
    else:
        failures[name] = record
    path = root / FAILURES
    try:
        if failures:
            atomic_write_json(path, failures)
        else:
            path.unlink(missing_ok=True)
    except OSError as e:
        raise ToolkitError(f"{path} cannot be written ({e.strerror or e}).") from None


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


def plan(
    runs: Sequence[tuple[str, RunConfig]], root: str | Path, *, retry_failed: bool = False
) -> dict[str, str]:
    """name -> 'train' | 'resume' | 'skip' | 'failed' for every run, after checking every run
    directory. 'failed': recorded as failed (`read_failures`) and not `retry_failed`; a
    finished run is 'skip' whatever was recorded.

    Nothing is written: a bad root or run directory stops the sweep before any run starts.
    """
    root = check_root(root)
    todo = {name: status(root / name, cfg) for name, cfg in runs}
    if not retry_failed:
        failures = read_failures(root)
        for name, cfg in runs:
            if todo[name] != "skip" and _failed_before(failures, name, cfg):
                todo[name] = "failed"
    return todo


def failure_hint(kind: str) -> str:
    """What to do about a recorded failure of this kind."""
    if kind == "diverged":
        return (
            "a diverged point diverges again with the same settings (its seed fixes every "
            "step), so --retry-failed only repeats it: change its settings in the sweep file "
            "and move its run directory away"
        )
    return "--retry-failed runs such a point again once the cause is fixed"


def describe(
    runs: Sequence[tuple[str, RunConfig]], root: str | Path, *, retry_failed: bool = False
) -> list[str]:
    """The dry run: the settings all runs share, then each run's directory, what will happen
    to it, and its settings that differ from the others'; under a point recorded as failed,
    its message."""
    todo = plan(runs, root, retry_failed=retry_failed)
    failures = read_failures(root)
    dicts = [cfg.to_dict() for _, cfg in runs]
    differ = [k for k in dicts[0] if len({json.dumps(d[k], sort_keys=True) for d in dicts}) > 1]
    shared = {k: v for k, v in dicts[0].items() if k not in differ}
    counts = {s: sum(v == s for v in todo.values()) for s in ("train", "resume", "skip", "failed")}
    failed = (
        f", {counts['failed']} failed earlier (skipped; --retry-failed runs them)"
        if counts["failed"]
        else ""
    )
    lines = [
        f"{len(runs)} runs under {root}: {counts['train']} to train, {counts['resume']} to "
        f"resume, {counts['skip']} finished (skipped){failed}",
        "shared: " + ", ".join(f"{k}={_shown(k, v)}" for k, v in shared.items()),
    ]
    kinds = set()
    for (name, cfg), d in zip(runs, dicts):
        own = ", ".join(f"{k}={_shown(k, d[k])}" for k in differ) or "(no differences)"
        lines.append(f"{todo[name]:>6}  {Path(root) / name}: {own}")
        record = None if todo[name] == "skip" else _failed_before(failures, name, cfg)
        if record is not None:
            kind = "diverged" if record["kind"] == "diverged" else "failed"
            lines.append(f"        {kind} earlier: {record['error']}")
            kinds.add(record["kind"])
    lines += [f"note: {failure_hint(kind)}." for kind in sorted(kinds)]
    if any(d["private"] and d["noise_multiplier"] is None for d in dicts):
        lines.append(
            "sigma (noise_multiplier=None) is calibrated to target_epsilon when a run starts."
        )
    return lines


def _shown(key: str, value: Any) -> str:
    if key == "activation" and value is not None:  # None: a model of your own
        return ActivationSpec.from_dict(value).label
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_one(config: dict[str, Any], out: str) -> str:
    """Train, resume or skip one run; returns 'skipped', 'resumed' or 'trained'."""
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


def attempt(config: dict[str, Any], out: str) -> tuple[str, str]:
    """`run_one`, with a `ToolkitError` turned into ('diverged' | 'failed' | 'busy', its
    message on one line); returns (status, '') when the run finished.

    A plain module-level function of JSON-able arguments, so process pools and Ray can
    ship it; the error is caught where it happens, so only bugs cross the process
    boundary (with their tracebacks).
    """
    from toolkit.training import TrainingDiverged

    try:
        return run_one(config, out), ""
    except ToolkitError as e:
        message = " ".join(str(e).split())
        if isinstance(e, TrainingDiverged):
            return "diverged", message
        if type(e).__name__ == "RunDirBusy":  # toolkit.runs: another process holds `out`
            return "busy", message
        return "failed", message


def _ray_attempt(config: dict[str, Any], out: str) -> tuple[str, str]:
    return attempt(config, out)


def check_executor(
    executor: str, workers: int, address: str | None = None, *, prefix: str = ""
) -> None:
    """The executor and its options; `prefix` "--" names them as the command line does."""
    if executor not in EXECUTORS:
        raise ToolkitError(
            f"{prefix}executor={executor!r} is unknown; expected one of {', '.join(EXECUTORS)}."
        )
    if workers < 1:
        raise ToolkitError(f"{prefix}workers={workers} must be >= 1.")
    if executor == "ray" and workers != 1:
        raise ToolkitError(
            f"{prefix}workers={workers} applies to {prefix}executor local only (Ray runs as "
            f"many tasks at once as its cluster has CPUs); leave it out."
        )
    if executor != "ray" and address is not None:
        raise ToolkitError(
            f"{prefix}address={address} applies to {prefix}executor ray only (this sweep "
            f"runs with {prefix}executor {executor}); leave it out, or add {prefix}executor ray."
        )


def exit_code(results: dict[str, str]) -> int:
    """0 when every point finished; 3 when one diverged (now or earlier); else 2."""
    if any(s.startswith("diverged") for s in results.values()):
        return 3
    return 0 if all(s in FINISHED for s in results.values()) else 2


def report(problems: dict[str, tuple[str, str]], root: str | Path, total: int) -> list[str]:
    """The closing lines for the points that did not finish: name -> (status, message)."""
    if not problems:
        return []
    code = exit_code({name: status for name, (status, _) in problems.items()})
    why = "a point diverged" if code == 3 else "a point failed or was busy"
    lines = [f"error: {len(problems)} of {total} sweep points did not finish (exit {code}: {why}):"]
    lines += [f"  {Path(root) / n}: {s}: {m}" for n, (s, m) in problems.items()]
    kinds = {"diverged" if s.startswith("diverged") else "error"
             for s, _ in problems.values() if s != "busy"}  # fmt: skip
    if kinds:
        lines.append(f"failures are recorded in {Path(root) / FAILURES}; a re-run skips them.")
        lines += [f"note: {failure_hint(kind)}." for kind in sorted(kinds)]
    if any(s == "busy" for s, _ in problems.values()):
        lines.append(
            "busy: held by another process (not recorded as a failure); run the sweep again "
            "when it finishes."
        )
    return lines


def run_sweep(
    runs: Sequence[tuple[str, RunConfig]],
    root: str | Path,
    *,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    retry_failed: bool = False,
    on_done=None,
) -> dict[str, str]:
    """Run every (name, config) into `root/name`; returns name -> status.

    Status: 'trained', 'resumed', 'skipped' (finished earlier); 'diverged' or 'failed'
    (recorded in ROOT/sweep-failures.json); 'busy' (another process holds its run
    directory); 'diverged earlier' or 'failed earlier' (recorded, not run again unless
    `retry_failed`). `on_done(name, status, message)` is called as each point ends (for
    progress); the message is the error of a point that did not finish, else ''.
    """
    check_executor(executor, workers, address)
    todo = plan(runs, root, retry_failed=retry_failed)  # every run directory, before any run
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    failures = read_failures(root)
    configs = {name: cfg.to_dict() for name, cfg in runs}
    results: dict[str, str] = {}

    def finish(name: str, status: str, message: str) -> None:
        results[name] = status
        if status in ("diverged", "failed"):
            kind = "diverged" if status == "diverged" else "error"
            when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            record = {"kind": kind, "error": message, "config": configs[name], "time": when}
            _update_failures(root, name, json.loads(json.dumps(record)))
        elif status in FINISHED:
            _update_failures(root, name, None)
        if on_done is not None:
            on_done(name, status, message)

    for name, _ in runs:
        if todo[name] == "failed":
            record = failures[name]
            kind = "diverged" if record["kind"] == "diverged" else "failed"
            finish(name, f"{kind} earlier", record["error"])
    jobs = {name: (configs[name], str(root / name)) for name, _ in runs if todo[name] != "failed"}
    if executor == "ray":
        try:
            import ray
        except ImportError:
            raise ToolkitError("executor='ray' needs Ray: pip install -e '.[ray]'.") from None
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        remote = ray.remote(_ray_attempt)
        refs = {remote.remote(*args): name for name, args in jobs.items()}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finish(refs[ready[0]], *ray.get(ready[0]))
    elif workers == 1:
        for name, args in jobs.items():
            finish(name, *attempt(*args))
    else:
        ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(attempt, *args): name for name, args in jobs.items()}
            for fut in cf.as_completed(futures):
                finish(futures[fut], *fut.result())
    return results
