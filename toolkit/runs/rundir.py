"""The run directory: the complete, reproducible record of one training run.

    DIR/config.json     every setting (resolved: the calibrated sigma), seed, provenance,
                        "kind" "run" (`toolkit train` and `toolkit.fit` alike; older
                        directories say "train" or "fit": `config_from_record` reads all)
    DIR/epochs.jsonl    one `records.EpochRecord` per finished epoch
    DIR/summary.json    the `records.RunSummary` (written when the run ends)
    DIR/checkpoint.npz  params, model state and optimizer state, each array named by its
                        path in the tree ("params/conv1/kernel"), PRNG key, step, history
    DIR/checkpoint-epoch{E}.npz  with --keep-checkpoints K: a copy of checkpoint.npz as it
                        was after epoch E, for every E divisible by K (`toolkit bias`)
    DIR/.lock           while a process trains or resumes the run (`claim`): its pid

This module is the only place where records become JSON and back (`record_to_json`,
`record_from_json`), and where checkpoints are written and read.

What the run's eps covers is its parameters (every iterate, so every checkpoint's params
and optimizer state apart from the privatizer's key). Each epoch and summary record says
in its `not_covered_by_dp` field which of its values are computed from the private
training data without noise (`toolkit.runs._records`); a checkpoint's meta says the same of its
PRNG key and history (`CHECKPOINT_NOT_COVERED`). config.json holds no value computed from
the data, but its seed regenerates every batch and noise draw (docs/privacy.md section 4).

Every file is written atomically (toolkit.base._io). The checkpoint is the source of
truth for progress: on resume, epochs.jsonl is rewritten from the history it
holds, so a kill between the two writes loses nothing and duplicates nothing.
Samplers and noise keys are functions of (seed, step), so step and epoch are
the whole sampler and PRNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
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

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None

from toolkit.base import ToolkitError, atomic_write_bytes, atomic_write_json, atomic_write_text
from toolkit.runs._records import (
    AuditRecord,
    EpochRecord,
    GradNormStats,
    RecordError,
    RunSummary,
    jsonable,
)

CONFIG, EPOCHS, SUMMARY, CHECKPOINT = (
    "config.json",
    "epochs.jsonl",
    "summary.json",
    "checkpoint.npz",
)
# Version of the checkpoint layout. 1: leaves "leaf_0..N" of (params, opt_state), no model
# state, no privatizer state (before the library API); 2: arrays named by tree path.
CHECKPOINT_FORMAT = 2
LOCK = ".lock"  # held (flock) by the process that trains or resumes the run
KEPT_PREFIX = "checkpoint-epoch"  # kept checkpoints: checkpoint-epoch{E}.npz
# The label in every checkpoint's meta (`not_covered_by_dp`); older checkpoints lack it.
CHECKPOINT_NOT_COVERED = (
    "params and opt_state are iterates of DP-SGD (covered by the eps spent up to this "
    "epoch), except the privatizer's noise key in opt_state and the array 'key': the "
    "mechanism's secret randomness (with it, or with config.json's seed, the noise can be "
    "regenerated and subtracted). state is the model's non-Param state, never trained and "
    "never a function of the data. history holds the epochs.jsonl records, whose training "
    "diagnostics are computed from the private training data without noise: not covered "
    "by eps (docs/privacy.md section 4)."
)
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "dp-accounting", "numpy", "scipy")


def config_hash(cfg: Any) -> str:
    """Identity of a configuration (data_dir excluded: where the data lives is not a setting)."""
    d = cfg.to_dict()
    d.pop("data_dir", None)
    for key, default in getattr(cfg, "HASH_DEFAULTS", {}).items():  # fields added later
        if key in d and d[key] == default:
            del d[key]
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
        # glibc allocator settings the run had (toolkit.cli._launch sets them for `toolkit train`)
        "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        # XLA's flags (toolkit.cli._launch adds TUNED_XLA_FLAGS for `toolkit train`), or None
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }


def prepare_new(out: Path) -> None:
    """Check that `out` can hold a new run: absent, or an empty directory, and writable."""
    from toolkit.base.outputs import check_new_dir

    check_new_dir("--out", out, hint=f", or continue a run with --resume {out}", ignore=(LOCK,))


class RunDirBusy(ToolkitError):
    """Another live process trains or resumes the run in this directory."""


@contextlib.contextmanager
def claim(out: Path, *, new: bool) -> Iterator[None]:
    """Hold `out` for this process while the block runs: no second process trains or
    resumes it meanwhile (`RunDirBusy`, naming the holder's pid).

    `new`: `out` must be able to hold a new run (`prepare_new`); it is created at once,
    so a path that cannot be a directory fails before any data is loaded, and checked
    again once held (another process may have written a run there first). If the block
    fails before config.json exists, what this call created is removed again: a bad
    setting leaves nothing behind. The lock is an flock on DIR/.lock, released by the
    kernel when the process dies, so a killed run never leaves its directory locked.
    """
    if new:
        prepare_new(out)
    made = _make_dirs(out) if new else []
    try:
        fd = _lock(out, option="--out" if new else "--resume")
    except BaseException:
        if made:  # this call made `out`: a lock file it may have left there goes too
            with contextlib.suppress(OSError):
                (out / LOCK).unlink()
        _remove_made(made)
        raise
    try:
        if new:
            prepare_new(out)
        yield
    except BaseException:
        if new and not (out / CONFIG).exists():
            with contextlib.suppress(OSError):
                (out / LOCK).unlink()
            _remove_made(made)
        raise
    finally:
        _unlock(out, fd)


def _make_dirs(out: Path) -> list[Path]:
    """Create `out` and its missing parents; the ones created, deepest first."""
    made = []
    for p in [out.absolute(), *out.absolute().parents]:
        if p.exists():
            break
        made.append(p)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_made(made)
        raise ToolkitError(
            f"--out={out} cannot be created ({e.strerror or e}); choose a directory you can "
            "write to."
        ) from None
    return made


def _remove_made(made: list[Path]) -> None:
    for p in made:  # deepest first; only while empty
        with contextlib.suppress(OSError):
            p.rmdir()


def _lock(out: Path, *, option: str) -> int | None:
    """An exclusive flock on out/.lock holding this pid; RunDirBusy if another has it."""
    if fcntl is None:
        return None
    path = out / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ToolkitError(
                f"{option}={out} is not writable ({e.strerror or e}); choose a directory you "
                "can write to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirBusy(
                    f"{out} is in use: another toolkit process (pid {holder}) is training or "
                    "resuming the run there; wait for it, or choose another directory."
                ) from None
            raise
        # The holder before us may have removed the file after we opened it: retry on the
        # file that is there now.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as e:  # a full disk or quota: one line, and the lock let go
                _unlock(out, fd)
                raise ToolkitError(
                    f"{option}={out} cannot be written ({e.strerror or e}); free space or "
                    "fix permissions, then run again."
                ) from None
            return fd
        os.close(fd)


def _unlock(out: Path, fd: int | None) -> None:
    """Remove the lock file (still holding it, so no one else holds that file) and let go."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        if os.stat(out / LOCK).st_ino == os.fstat(fd).st_ino:
            (out / LOCK).unlink()
    os.close(fd)


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Turn a failed write (read-only, full disk, quota) into a one-line ToolkitError.

    Every write is atomic (toolkit.base._io), so a failed one leaves the previous file intact
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
    for name in (CONFIG, EPOCHS, SUMMARY, CHECKPOINT, f"{KEPT_PREFIX}*.npz"):
        for tmp in out.glob(f".{name}.*.tmp"):
            with _writing(out):
                tmp.unlink(missing_ok=True)


def write_config(out: Path, cfg: Any, extra: dict[str, Any], *, kind: str = "run") -> None:
    """Create `out` and write config.json; on failure leave no empty `out` behind.

    `cfg` is the run's resolved `RunConfig`.
    """
    created = not out.exists()
    record = {
        "config": cfg.to_dict(), "config_hash": config_hash(cfg), "kind": kind,
        "format": CHECKPOINT_FORMAT, **extra,
    }  # fmt: skip
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


def write_epochs(out: Path, history: list[EpochRecord]) -> None:
    text = "".join(json.dumps(record_to_json(r), sort_keys=True) + "\n" for r in history)
    with _writing(out):
        atomic_write_text(out / EPOCHS, text)


def read_epochs(out: Path) -> list[EpochRecord]:
    path = out / EPOCHS
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
        return [
            record_from_json(EpochRecord, json.loads(line), where=f"{path} line {i + 1}")
            for i, line in enumerate(lines)
            if line.strip()
        ]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path} is corrupt ({e}).") from None


def check_records_kept(out: Path, *, checkpoint_epoch: int | None, epochs: int) -> None:
    """Resuming can keep every finished record of `out`, or a one-line ToolkitError.

    Resume rewrites epochs.jsonl from the checkpoint's history and summary.json when the
    run ends; records the checkpoint does not hold (epochs.jsonl lines past its epoch, a
    summary of a run the checkpoint has not finished, records without a checkpoint)
    would be retrained and overwritten, so the run is not resumed.
    """
    path = out / EPOCHS
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{path} cannot be read ({e}).") from None
    held = checkpoint_epoch or 0
    summary = (out / SUMMARY).exists()
    lost = []
    if len(lines) > held:
        lost.append(f"{EPOCHS} has {len(lines)} finished epoch(s)")
    if summary and held < epochs:
        lost.append(f"{SUMMARY} records the finished run")
    if lost:
        has = (
            f"{CHECKPOINT} holds {held}"
            if checkpoint_epoch is not None
            else f"{CHECKPOINT} is missing"
        )
        raise ToolkitError(
            f"--resume={out}: {' and '.join(lost)}, but {has}; resuming would retrain and "
            "overwrite those records. Move the run away, or start a new run with --out."
        )


def write_summary(out: Path, summary: RunSummary) -> None:
    with _writing(out):
        atomic_write_json(out / SUMMARY, record_to_json(summary))


def read_summary(out: Path) -> RunSummary | None:
    """The run's summary, or None while the run is unfinished."""
    path = out / SUMMARY
    if not path.exists():
        return None
    try:
        return record_from_json(RunSummary, json.loads(path.read_text()), where=str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path} is corrupt ({e}).") from None


def write_audit(path: Path, record: AuditRecord) -> None:
    atomic_write_json(path, record_to_json(record))


def read_audit(path: Path) -> AuditRecord:
    try:
        return record_from_json(AuditRecord, json.loads(path.read_text()), where=str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path} is corrupt ({e}).") from None


_NESTED = {"grad_norm": GradNormStats}


def record_to_json(record: Any) -> dict[str, Any]:
    """A record as the flat JSON object of its file; `metrics` keys join the top level."""
    d = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == "metrics":
            continue
        d[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    for k, v in getattr(record, "metrics", {}).items():
        if k in d:
            raise ToolkitError(f"metric {k!r} has the name of a record field; rename it.")
        d[k] = v
    return jsonable(d)


def record_from_json(cls: type, d: Any, *, where: str) -> Any:
    """Inverse of `record_to_json`; a missing field raises RecordError naming `where`."""
    if not isinstance(d, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [
        n for n, f in fields.items()
        if n != "metrics" and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    missing = [n for n in required if n not in d]
    if missing:
        raise RecordError(
            f"{where} lacks {', '.join(missing)}: not a {cls.__name__} of this toolkit "
            f"(checkpoint format {CHECKPOINT_FORMAT}) or a torn write."
        )
    kwargs = {n: d[n] for n in fields if n in d and n != "metrics"}
    for name, nested in _NESTED.items():
        if name in kwargs:
            try:
                kwargs[name] = nested(**kwargs[name])
            except TypeError as e:
                raise RecordError(f"{where}: field {name} is malformed ({e}).") from None
    if "metrics" in fields:
        kwargs["metrics"] = {k: v for k, v in d.items() if k not in fields}
    return cls(**kwargs)


def _named(tree) -> dict[str, np.ndarray]:
    """{"params/conv1/kernel": array, ...}: every leaf named by its path in the tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in leaves:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                        for k in path)  # fmt: skip
        out[name] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    return out


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_checkpoint(
    out: Path, *, params, opt_state, state=None, key: jax.Array, step: int, epoch: int,
    history: list[EpochRecord], cfg_hash: str, files: tuple[str, ...] = (CHECKPOINT,),
) -> None:  # fmt: skip
    """Atomically write params, model state, optimizer state, PRNG key, counters, history.

    The same bytes go to each of `files` (in order; checkpoint.npz, the resume point, last).
    """
    tree = {"params": params, "opt_state": opt_state, "state": state}
    meta = {
        "format": CHECKPOINT_FORMAT, "step": step, "epoch": epoch, "config_hash": cfg_hash,
        "history": [record_to_json(r) for r in history],
        "not_covered_by_dp": CHECKPOINT_NOT_COVERED,
    }  # fmt: skip
    arrays = {f"tree/{k}": v for k, v in _named(tree).items()}
    arrays["key"] = np.asarray(jax.random.key_data(key))
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with _writing(out):
        for name in files:
            atomic_write_bytes(out / name, buf.getvalue())


def checkpoint_format(out: Path) -> int | None:
    """The layout version of `out`'s checkpoint, or None if it has none or it is unreadable."""
    try:
        with np.load(out / CHECKPOINT) as z:
            return int(json.loads(z["meta"].tobytes().decode()).get("format", 1))
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def kept_checkpoint(epoch: int) -> str:
    """File name of the checkpoint kept after `epoch` (`toolkit train --keep-checkpoints`)."""
    return f"{KEPT_PREFIX}{epoch}.npz"


def kept_checkpoints(out: Path) -> dict[int, Path]:
    """{epoch: path} of the checkpoints kept in `out`, in epoch order."""
    found = {}
    for path in Path(out).glob(f"{KEPT_PREFIX}*.npz"):
        digits = path.name[len(KEPT_PREFIX) : -len(".npz")]
        if digits.isdigit():
            found[int(digits)] = path
    return dict(sorted(found.items()))


def read_checkpoint(
    out: Path, *, cfg_hash: str | None, file: str = CHECKPOINT
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`(meta, arrays)` of a checkpoint, every array read (so checksummed); a one-line
    ToolkitError if it is unreadable or, unless `cfg_hash` is None, of another config.

    Cheap next to building a model: `resume` calls it before anything else."""
    path = out / file
    bad = f"{path} is corrupt or incomplete; delete the run directory and start again"
    try:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ToolkitError(f"{out} has no {file}; nothing to restore.") from None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ToolkitError(f"{bad} ({type(e).__name__}).") from None
    if not isinstance(meta, dict):
        raise ToolkitError(f"{bad} (meta is not a JSON object).")
    if cfg_hash is not None and meta.get("config_hash") != cfg_hash:
        raise ToolkitError(
            f"{path} belongs to a different configuration (hash {meta.get('config_hash')} != "
            f"{cfg_hash}); resume with the run directory that wrote it."
        )
    return meta, arrays


def load_checkpoint(
    out: Path, *, params, opt_state, state=None, cfg_hash: str | None, file: str = CHECKPOINT
):
    """Restore into the structure of the templates: `(params, opt_state, state, key, meta)`.

    `file` names the checkpoint in `out` (default the resume point; or `kept_checkpoint(E)`).

    Arrays are matched by their path in the tree, so a template of another structure is
    refused with the first path that differs. `cfg_hash=None` skips the config check.
    A format-1 checkpoint (before the library API) restores `params` only, with
    `opt_state` and `state` returned as None: it can be evaluated, not resumed.
    """
    path = out / file
    bad = f"{path} is corrupt or incomplete; delete the run directory and start again"
    meta, arrays = read_checkpoint(out, cfg_hash=cfg_hash, file=file)
    fmt = meta.get("format", 1)
    meta["history"] = [
        record_from_json(EpochRecord, r, where=f"{path} history") for r in meta.get("history", [])
    ]
    key = jax.random.wrap_key_data(arrays["key"])
    if fmt == 1:  # leaf_0..: the params' leaves come first
        leaves, treedef = jax.tree.flatten(params)
        restored = _restore(treedef, leaves, [arrays.get(f"leaf_{i}") for i in range(len(leaves))],
                            [f"leaf_{i}" for i in range(len(leaves))], bad)  # fmt: skip
        return restored, None, None, key, meta
    if fmt != CHECKPOINT_FORMAT:
        raise RecordError(
            f"{path} has checkpoint format {fmt}; this toolkit reads formats 1 and "
            f"{CHECKPOINT_FORMAT}."
        )
    tree = {"params": params, "opt_state": opt_state, "state": state}  # None: not restored
    leaves, treedef = jax.tree.flatten(tree)
    names = [f"tree/{n}" for n in _named(tree)]
    wanted = {n for n, leaf in zip(names, leaves, strict=True) if leaf is not None}
    extra = sorted(
        n for n in arrays if n.startswith("tree/params/") and n not in wanted
    )  # the checkpoint holds parameters the model lacks
    if extra:
        raise ToolkitError(f"{_mismatch(path)} (the model has no array {extra[0]}).")
    restored = _restore(treedef, leaves, [arrays.get(n) for n in names], names, _mismatch(path))
    return restored["params"], restored["opt_state"], restored["state"], key, meta


def _mismatch(path: Path) -> str:
    return (
        f"the model or optimizer given does not match the checkpoint {path}, which is "
        "intact: pass the ones the run trained (same classes and shapes)"
    )


def _restore(treedef, template, arrays, names, bad):
    new = []
    for old, arr, name in zip(template, arrays, names, strict=True):
        if arr is None:
            raise ToolkitError(f"{bad} (the checkpoint has no array {name}).")
        if _is_key(old):
            if arr.shape != jax.random.key_data(old).shape:
                raise ToolkitError(f"{bad} (key {name} has shape {arr.shape}).")
            new.append(jax.random.wrap_key_data(arr, impl=jax.random.key_impl(old)))
            continue
        if old.shape != arr.shape or old.dtype != arr.dtype:
            raise ToolkitError(
                f"{bad} (array {name} is {arr.shape} {arr.dtype} in the checkpoint, "
                f"{old.shape} {old.dtype} in the model)."
            )
        new.append(jax.numpy.asarray(arr))
    return jax.tree.unflatten(treedef, new)


def epoch_writer(
    out: Path, *, key: jax.Array, state, cfg_hash: str, steps_per_epoch: int, keep_every: int = 0
):
    """`on_epoch_end(params, opt_state, history)` for the training loop: checkpoint, then epochs.

    The checkpoint comes first: it holds the history too, so a kill between the two
    writes loses nothing (resume rewrites epochs.jsonl from it). With `keep_every=K`
    the checkpoint of every K-th epoch is also kept as checkpoint-epoch{E}.npz, written
    before checkpoint.npz: a kill in between re-runs epoch E on resume, which writes the
    same bytes again (training is a function of (seed, step)).
    """

    def on_epoch_end(params, opt_state, history: list[EpochRecord]) -> None:
        epoch = history[-1].epoch
        kept = (kept_checkpoint(epoch),) if keep_every and epoch % keep_every == 0 else ()
        save_checkpoint(
            out, params=params, opt_state=opt_state, state=state, key=key,
            step=epoch * steps_per_epoch, epoch=epoch, history=history, cfg_hash=cfg_hash,
            files=(*kept, CHECKPOINT),
        )  # fmt: skip
        write_epochs(out, history)

    return on_epoch_end
