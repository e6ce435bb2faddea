"""One run trained by several processes (hosts) together, over `jax.distributed`.

Every process runs the same program on the same values: the same data set, the same
config and seed, hence the same model initialisation, the same Poisson batches (a
function of (seed, step)) and the same noise key. `initialize` joins the processes;
after it, `jax.devices()` spans all of them, and `toolkit.training._parallel.DataParallel`
shards each micro-batch over that global mesh, each process feeding the rows of its own
devices. The jitted step sums the clipped gradients across all processes (an
all-reduce), and the noise is drawn once, in the jitted update, from the one replicated
key on the one replicated sum: the mechanism, and so eps, is the one-process mechanism.

Process 0 writes the run directory; the others write nothing (`writes_records`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from toolkit.base import ToolkitError

KEYS = ("coordinator", "num_processes", "process_id")  # what `distributed=` holds


def check(distributed: Mapping[str, Any]) -> dict[str, Any]:
    """`distributed` as the keyword arguments of `initialize`, or a one-line `ToolkitError`."""
    if not isinstance(distributed, Mapping) or set(distributed) != set(KEYS):
        got = sorted(distributed) if isinstance(distributed, Mapping) else distributed
        raise ToolkitError(f"distributed= takes exactly the keys {', '.join(KEYS)}; got {got!r}.")
    coordinator, num_processes, process_id = (distributed[k] for k in KEYS)
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ToolkitError(
            f"coordinator={coordinator!r} must be HOST:PORT with a port in [1, 65535] "
            "(process 0's address, the same in every process)."
        )
    for name, value, lo in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ToolkitError(f"{name}={value!r} must be an integer >= {lo}.")
    if process_id >= num_processes:
        raise ToolkitError(
            f"process_id={process_id} must be in [0, {num_processes - 1}] "
            f"(num_processes={num_processes})."
        )
    return dict(zip(KEYS, (str(coordinator), num_processes, process_id), strict=True))


def initialize(*, coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a run of `num_processes` processes, as process `process_id`.

    Must run before JAX computes anything in this process (JAX's rule). Every process
    calls it with the same `coordinator` (HOST:PORT of process 0, which serves it) and
    `num_processes`; it returns when all have joined (JAX waits up to 5 minutes). On the
    CPU the processes exchange the clipped sums over gloo (TCP).
    """
    check(dict(coordinator=coordinator, num_processes=num_processes, process_id=process_id))
    if jax.distributed.is_initialized():
        raise ToolkitError("this process has joined a distributed run already.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes,
            process_id=process_id, cluster_detection_method="deactivate",
        )  # fmt: skip
    except RuntimeError as e:  # JAX computed already, or the coordinator never answered
        reason = " ".join(str(e).split()).rstrip(".")  # one line
        raise ToolkitError(f"could not join the run at {coordinator}: {reason}.") from None


def writes_records() -> bool:
    """This process writes the run directory: the only one, or process 0 of several."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def process_count() -> int:
    """The processes training this run (1 without `initialize`)."""
    return jax.process_count() if jax.distributed.is_initialized() else 1
