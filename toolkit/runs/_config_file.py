"""Settings files for `toolkit train --config` and `toolkit audit --config`.

Two kinds of file:

- TOML: top-level keys are `RunConfig` fields (`epochs = 40`, `clip_norm = 0.1`; dashes
  are accepted for underscores), plus `preset` (a paper setting the file starts from)
  and `activation` as a name or a table `{name, scale, inverse_temp, offset}`.
- JSON: a run's `config.json` (kind "run", or "train" before that); its `requested`
  settings (what the run was asked to do, before sigma was calibrated) re-run the
  recorded run. A run whose model, data, loss or optimizer was given in Python
  (`python:<name>`) cannot be re-run from a file.

`load_settings(path)` returns the settings for `toolkit.runs._config.from_flags(base=...)`, so
flags given on the command line override the file. An unknown key is an error with the
nearest known key; a value of the wrong type is an error naming key, value and type.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from toolkit.base import ToolkitError, specs
from toolkit.nn import ActivationSpec
from toolkit.runs._config import PRIVACY_ONLY, RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

# The JSON types a field accepts, by its annotation (ints are accepted where floats are).
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
    "int | None": (int,), "float | None": (int, float), "str | None": (str,),
}  # fmt: skip
_FIELDS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name != "activation"}
_ACTIVATION_KEYS = ("name", "scale", "inverse_temp", "offset")


def did_you_mean(key: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the nearest known key, or ''."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ToolkitError(f"--config={path} {what}; give a TOML file or a run's config.json.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not TOML
    except (OSError, UnicodeDecodeError) as e:
        raise ToolkitError(f"--config={path} cannot be read ({e}).") from None
    if path.suffix.lower() == ".json":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise ToolkitError(f"--config={path} is not valid JSON ({e}).") from None
        if not isinstance(record, dict) or not isinstance(
            record.get("requested", record.get("config")), dict
        ):
            raise ToolkitError(
                f"--config={path} is not a run's config.json (no 'requested' or 'config' object)."
            )
        kind = record.get("kind", "train")
        if kind not in ("run", "train"):
            raise ToolkitError(
                f"--config={path} is a {kind!r} run (toolkit.fit, before runs had one format): "
                "its model and data were given in Python; re-run it from Python."
            )
        _check_unedited(path, record)
        settings = dict(record.get("requested") or record["config"])
        given = [f"{k}={v}" for k, v in settings.items() if _in_python(v)]
        if given:
            raise ToolkitError(
                f"--config={path}: {', '.join(given)} {'was' if len(given) == 1 else 'were'} "
                "given in Python, with no import path, so the command line cannot rebuild "
                "the run: re-run it from Python."
            )
        if "requested" not in record and settings.get("target_epsilon") is not None:
            settings["noise_multiplier"] = None  # recalibrated, as the run did
        return settings
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ToolkitError(f"--config={path} is not valid TOML ({e}).") from None


def _check_unedited(path: Path, record: dict[str, Any]) -> None:
    """The run's resolved `config` still has its recorded hash: an edit there would be
    ignored (the `requested` block is what re-runs), so it is an error instead."""
    from toolkit.runs.rundir import config_hash

    if "config_hash" not in record or not isinstance(record.get("config"), dict):
        return
    try:
        same = config_hash(RunConfig.from_dict(record["config"])) == record["config_hash"]
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ToolkitError(
            f"--config={path}: its 'config' was edited after the run (it no longer matches "
            "config_hash), and a run's config.json re-runs its 'requested' settings; give "
            "the change as a flag, or write it in a TOML settings file."
        )


def _in_python(value: Any) -> bool:
    """An object given in Python when the run was made (`toolkit.base.specs.PYTHON`)."""
    return isinstance(value, str) and value.startswith(specs.PYTHON)


def _check_value(path: Path, key: str, value: Any) -> None:
    allowed = _TYPES[_FIELDS[key]]
    if value is None and "None" in _FIELDS[key]:
        return
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise ToolkitError(f"--config={path}: {key}={value!r} must be of type {names}.")


def _activation(path: Path, value: Any) -> ActivationSpec:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ToolkitError(
            f"--config={path}: activation={value!r} must be a name or a table "
            "{name, scale, inverse_temp, offset}."
        )
    for key, v in value.items():
        if key not in _ACTIVATION_KEYS:
            raise ToolkitError(
                f"--config={path}: activation.{key} is unknown{did_you_mean(key, _ACTIVATION_KEYS)}"
                f"; expected {', '.join(_ACTIVATION_KEYS)}."
            )
        ok = isinstance(v, str) if key == "name" else isinstance(v, int | float)
        if not ok or isinstance(v, bool):
            raise ToolkitError(f"--config={path}: activation.{key}={v!r} has the wrong type.")
    return ActivationSpec(**value)


def load_settings(path: Path) -> dict[str, Any]:
    """The settings in `path` (TOML, or a run's config.json), checked key by key."""
    raw = _read(path)
    known = [*_FIELDS, "activation", "preset"]
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ToolkitError(
                f"--config={path}: key {key!r} is unknown{did_you_mean(name, known)}; "
                "keys are the long flag names of `toolkit train` (with _ or -)."
            )
        if name == "activation":  # None: a recorded run of your own model
            settings[name] = None if value is None else _activation(path, value)
        elif name == "preset":
            if not isinstance(value, str):
                raise ToolkitError(f"--config={path}: preset={value!r} must be a name.")
            settings[name] = value
        else:
            _check_value(path, name, value)
            settings[name] = (
                float(value) if _FIELDS[name].startswith("float") and (value is not None) else value
            )
    if settings.get("private") is False:
        clash = [k for k in PRIVACY_ONLY if k in raw and raw[k] is not None]
        if clash and path.suffix.lower() != ".json":  # a recorded run lists every field
            raise ToolkitError(
                f"--config={path}: private = false cannot hold with {', '.join(clash)} "
                "(a non-private run has no clipping, noise or accounting); remove them."
            )
    return settings
