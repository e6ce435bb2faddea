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
"""

from __future__ import annotations

import contextlib
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


def main() -> None:
    os.environ.update(compilation_cache_env(sys.argv, os.environ))  # before JAX is imported
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
