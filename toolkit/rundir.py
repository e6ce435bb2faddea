"""The run directory: the complete, reproducible record of one training run.

    DIR/config.json     every setting (resolved: the calibrated sigma), seed, provenance
    DIR/epochs.jsonl    one JSON object per finished epoch
    DIR/summary.json    the final record (written when the run ends)
    DIR/checkpoint.npz  params, optimizer state, PRNG key, step, epoch history

Every file is written atomically (toolkit.io). The checkpoint is the source of
truth for progress: on resume, epochs.jsonl is rewritten from the history it
holds, so a kill between the two writes loses nothing and duplicates nothing.
Samplers and noise keys are functions of (seed, step), so step and epoch are
the whole sampler and PRNG state.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

from toolkit.config import TrainConfig
from toolkit.errors import ToolkitError
from toolkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text

CONFIG, EPOCHS, SUMMARY, CHECKPOINT = (
    "config.json",
    "epochs.jsonl",
    "summary.json",
    "checkpoint.npz",
)
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "dp-accounting", "numpy", "scipy")


def config_hash(cfg: TrainConfig) -> str:
    """Identity of a configuration (data_dir excluded: where the data lives is not a setting)."""
    d = cfg.to_dict()
    d.pop("data_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def provenance() -> dict[str, Any]:
    """Library versions, git commit, python and device: what is needed to reproduce a run."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
    }


def prepare_new(out: Path) -> None:
    """Check that `out` can hold a new run: absent, or an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ToolkitError(
            f"--out={out} exists and is not empty; choose a new directory, or continue a run "
            f"with --resume {out}."
        )
    # The nearest existing ancestor is where the first directory will be created.
    anchor = out.absolute()
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise ToolkitError(f"--out={out} is not writable; choose a directory you can write to.")


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Turn a failed write (read-only, full disk, quota) into a one-line ToolkitError.

    Every write is atomic (toolkit.io), so a failed one leaves the previous file intact
    and the run can be continued with --resume once the cause is fixed.
    """
    try:
        yield
    except OSError as e:
        raise ToolkitError(
            f"cannot write to {out} ({e.strerror or e}); files already there are intact: "
            "free space or fix permissions, then run again (a started run: --resume)."
        ) from None


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files of atomic writes interrupted by a kill (`.<name>.*.tmp`)."""
    for name in (CONFIG, EPOCHS, SUMMARY, CHECKPOINT):
        for tmp in out.glob(f".{name}.*.tmp"):
            with _writing(out):
                tmp.unlink(missing_ok=True)


def write_config(out: Path, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    """Create `out` and write config.json; on failure leave no empty `out` behind."""
    created = not out.exists()
    record = {"config": cfg.to_dict(), "config_hash": config_hash(cfg), **extra}
    try:
        with _writing(out):
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / CONFIG, record)
    except ToolkitError:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty
        raise


def read_config(out: Path) -> dict[str, Any]:
    path = out / CONFIG
    if not path.is_file():
        raise ToolkitError(f"--resume={out} is not a run directory ({CONFIG} missing).")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{path} is corrupt ({e}); the run cannot be resumed.") from None


def write_epochs(out: Path, history: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
    with _writing(out):
        atomic_write_text(out / EPOCHS, text)


def read_epochs(out: Path) -> list[dict[str, Any]]:
    path = out / EPOCHS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    with _writing(out):
        atomic_write_json(out / SUMMARY, summary)


def save_checkpoint(
    out: Path, *, params, opt_state, key: jax.Array, step: int, epoch: int,
    history: list[dict[str, Any]], cfg_hash: str,
) -> None:  # fmt: skip
    """Atomically write params, optimizer state, PRNG key, counters and history."""
    leaves = jax.tree.leaves((params, opt_state))
    meta = {"step": step, "epoch": epoch, "config_hash": cfg_hash, "history": history}
    arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["key"] = np.asarray(jax.random.key_data(key))
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with _writing(out):
        atomic_write_bytes(out / CHECKPOINT, buf.getvalue())


def load_checkpoint(out: Path, *, params, opt_state, cfg_hash: str):
    """Restore into the structure of `(params, opt_state)`: (params, opt_state, key, meta)."""
    path = out / CHECKPOINT
    bad = f"{path} is corrupt or incomplete; delete the run directory and start again"
    try:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            template, treedef = jax.tree.flatten((params, opt_state))
            leaves = [z[f"leaf_{i}"] for i in range(len(template))]
            key = jax.random.wrap_key_data(z["key"])
    except FileNotFoundError:
        raise ToolkitError(f"--resume={out} has no {CHECKPOINT}; nothing to resume.") from None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ToolkitError(f"{bad} ({type(e).__name__}).") from None
    if meta.get("config_hash") != cfg_hash:
        raise ToolkitError(
            f"{path} belongs to a different configuration (hash {meta.get('config_hash')} != "
            f"{cfg_hash}); resume with the run directory that wrote it."
        )
    for old, new in zip(template, leaves):
        if old.shape != new.shape or old.dtype != new.dtype:
            raise ToolkitError(f"{bad} (array {new.shape} {new.dtype} != {old.shape} {old.dtype}).")
    restored = jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in leaves])
    return restored[0], restored[1], key, meta


def jsonable(x: Any) -> Any:
    """Floats that JSON can hold: inf and NaN become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x
