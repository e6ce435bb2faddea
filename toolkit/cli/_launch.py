"""The `toolkit` console entry point: the allocator settings, the compilation cache, then
the command line.

glibc returns every freed block >= 32 MiB to the OS, so XLA's large per-step buffers
are page-faulted in again on every DP-SGD step. `TUNED_MALLOC` keeps them in the heap
(benchmarks/README.md: the CIFAR-10 DP step went from 1.5-1.6x to 0.9-1.1x of a
non-private step). glibc reads these variables once, when the process starts, so for
the commands that train (`COMMANDS`) `main` re-executes the interpreter with them set,
before anything is imported. Values the user set win; `TOOLKIT_MALLOC=default` turns
the re-exec off. This module imports nothing heavy, so the first process costs little.

The same commands turn on JAX's persistent compilation cache (`compilation_cache_env`):
XLA's executables are kept under the user cache, and a later run of the same model and
shapes loads them instead of compiling again (issue 23: the demo preset on 1,024 examples
reached the end of its first step 25 s after start on an empty cache, 7.4 s on the next
run, on a loaded 2-core machine). They are the same executables, so a run's numbers do
not change. Values the user set win (`JAX_COMPILATION_CACHE_DIR`, ...);
`TOOLKIT_COMPILATION_CACHE=off` turns it off. `config.json` records what a run had
(`provenance.compilation_cache`).

They also add `TUNED_XLA_FLAGS` to `XLA_FLAGS` (`xla_flags_env`): XLA:CPU then runs the
convolutions through Eigen rather than YNNPACK, jaxlib 0.10's default, and the CIFAR-10 CNN's
plain step took 0.61x the time (median of 7 interleaved rounds on the loaded 2-core machine;
the MNIST CNN's 0.97x), the same step to float rounding (docs/xla_cpu.md). Only for the
jaxlib versions this was measured on: XLA aborts on a flag it does not know. A flag the
user set in `XLA_FLAGS` wins; `TOOLKIT_XLA_FLAGS=default` leaves `XLA_FLAGS` alone.
`config.json` records `XLA_FLAGS` (`provenance.xla_flags`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import sys
from collections.abc import Mapping

TUNED_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",  # no mmap for large blocks: they stay in the heap
    "MALLOC_TRIM_THRESHOLD_": "100000000000",  # never trim the heap top back to the OS
    "MALLOC_TOP_PAD_": "268435456",  # grow the heap 256 MiB at a time
    "MALLOC_ARENA_MAX": "1",  # one arena: freed buffers are reused across threads
}
COMMANDS = ("train", "audit", "sweep")
# XLA:CPU: Eigen's convolutions instead of YNNPACK's (docs/xla_cpu.md), for the jaxlib
# versions it was measured on (`python -m benchmarks.xla_cpu --variants no-ynn-conv`).
TUNED_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
TUNED_XLA_FLAGS_JAXLIB = ("0.10.",)
# JAX reads these when it is imported. Every compilation is kept: the small ones (an eager
# op, a key split) add up to about a second of start-up too.
CACHE_SETTINGS = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(2**30),  # least recently used entries go past 1 GiB
}


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False


def allocator_env(argv: list[str], environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when this process can run as it is."""
    if len(argv) < 2 or argv[1] not in COMMANDS or environ.get("TOOLKIT_MALLOC") == "default":
        return None
    if all(k in environ for k in TUNED_MALLOC) or not _glibc():
        return None
    return {**TUNED_MALLOC, **environ}


def compilation_cache_env(argv: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The JAX settings to add for the persistent compilation cache ({} for none): a folder
    under the user cache unless the user chose one (none if it is not writable), and
    `CACHE_SETTINGS`; variables the user set are kept."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        return {}
    if environ.get("TOOLKIT_COMPILATION_CACHE", "").lower() in ("off", "0", "false", "no"):
        return {}
    settings = dict(CACHE_SETTINGS)
    if "JAX_COMPILATION_CACHE_DIR" not in environ:
        import platformdirs

        cache = platformdirs.user_cache_dir("tempered-dp-toolkit")
        folder = os.path.join(cache, "jax-compilation")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return {}
        if not os.access(folder, os.W_OK | os.X_OK):
            return {}
        settings["JAX_COMPILATION_CACHE_DIR"] = folder
    return {k: v for k, v in settings.items() if k not in environ}


def xla_flags_env(
    argv: list[str], environ: Mapping[str, str], jaxlib: str | None = None
) -> dict[str, str]:
    """{"XLA_FLAGS": the user's flags, then `TUNED_XLA_FLAGS`} for the commands that train,
    or {}: for other commands, with `TOOLKIT_XLA_FLAGS=default`, for a jaxlib (`jaxlib`:
    its version, else the installed one) outside `TUNED_XLA_FLAGS_JAXLIB`, or when the user
    set each of these flags (theirs win)."""
    if len(argv) < 2 or argv[1] not in COMMANDS or environ.get("TOOLKIT_XLA_FLAGS") == "default":
        return {}
    if jaxlib is None:
        try:
            jaxlib = importlib.metadata.version("jaxlib")
        except importlib.metadata.PackageNotFoundError:
            return {}
    if not jaxlib.startswith(TUNED_XLA_FLAGS_JAXLIB):
        return {}
    user = environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0].lstrip("-") for f in user}
    add = [f for f in TUNED_XLA_FLAGS if f.split("=")[0].lstrip("-") not in names]
    return {"XLA_FLAGS": " ".join(user + add)} if add else {}


def main() -> None:
    os.environ.update(compilation_cache_env(sys.argv, os.environ))  # before JAX is imported
    os.environ.update(xla_flags_env(sys.argv, os.environ))
    env = allocator_env(sys.argv, os.environ)
    if env is not None:
        # If it cannot re-execute (an odd platform), it runs with the default allocator.
        with contextlib.suppress(OSError):
            os.execve(sys.executable, [sys.executable, "-m", "toolkit", *sys.argv[1:]], env)
    exit_on_sigterm()
    from toolkit.cli._app import app

    sys.exit(run(app, sys.argv[1:]))


def exit_on_sigterm() -> None:
    """SIGTERM (`timeout`, Slurm, `docker stop`) exits 143 as Ctrl-C exits 130: through
    Python's exception handling, so a run directory held by the process is cleaned up
    (`toolkit.runs.rundir.claim`) rather than left behind by an abrupt kill."""

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def run(app, args: list[str]) -> int:
    """Run the typer `app`; a usage error (unknown option, a value of the wrong type) is one
    `error: ...` line and exit 2, as every other bad input is (`toolkit.cli._errors`)."""
    from typer import Abort

    try:  # typer >= 0.2x vendors click
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover
        from click import exceptions as click

    try:
        code = app(args=args, prog_name="toolkit", standalone_mode=False)
    except click.NoArgsIsHelpError as e:
        print(e.ctx.get_help() if e.ctx else e.format_message(), file=sys.stderr)
        return 2
    except click.ClickException as e:
        command = getattr(e, "command_path", None) or (
            e.ctx.command_path if getattr(e, "ctx", None) else _command_of(app, args)
        )
        message = " ".join(e.format_message().split())
        print(f"error: {message} (see {command} --help)", file=sys.stderr)
        return e.exit_code
    except Abort:
        print("error: aborted.", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def _command_of(app, args: list[str]) -> str:
    """`toolkit NAME` when `args` start with a command's name, else `toolkit`."""
    import typer

    names = typer.main.get_command(app).commands if args else {}
    return f"toolkit {args[0]}" if args and args[0] in names else "toolkit"
