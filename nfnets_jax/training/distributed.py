"""Multi-host runs: `jax.distributed.initialize`, and the decisions all processes share.

Everything a process decides from its own view of the world (which checkpoint it could
read, whether its start-up checks passed, a random seed) must be the same on every
process, or one host trains on while another waits for it forever. `failed_processes`
and `broadcast_from_main` are the two agreements the loop and the checkpointer use.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# Environment variables that mean "this process is one of several": Cloud TPU pod
# slices, SLURM jobs with several tasks, and explicit JAX settings.
_CLUSTER_HINTS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS")


def _multi_process_environment() -> bool:
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Connects this process to the others of a multi-host run.

    Args:
      mode: `'auto'` initializes when the environment shows several processes (TPU pod
        slice, SLURM with several tasks, `JAX_COORDINATOR_ADDRESS`) or a coordinator is
        given; `'on'` always; `'off'` never (single host).
      coordinator_address: `host:port` of process 0; with `num_processes` and
        `process_id` for clusters JAX cannot detect by itself.
      num_processes: total number of processes.
      process_id: this process's rank.

    Raises:
      ConfigError: an unknown `mode`, or an incomplete manual setting.
    """
    from nfnets_jax.training.config import ConfigError

    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"distributed mode {mode!r} is unknown: use auto, on or off.")
    manual = coordinator_address is not None
    if manual and (num_processes is None or process_id is None):
        raise ConfigError("--coordinator_address needs --num_processes and --process_id as well.")
    if mode == "off" or (mode == "auto" and not manual and not _multi_process_environment()):
        return
    # Cross-process collectives on the CPU backend need gloo (harmless on GPU/TPU, where
    # the accelerator's own collectives are used); lets tests run multi-host on CPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if manual:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    else:
        jax.distributed.initialize()
    logging.info(
        "Process %d of %d: %d local / %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


# How long a process waits at `barrier` for the others (start-up on a pod can take
# minutes: dataset metadata, checkpoint reads, compilation).
BARRIER_TIMEOUT_SECONDS = 1800
_barrier_count = 0


def barrier(name: str, timeout_seconds: float = BARRIER_TIMEOUT_SECONDS) -> None:
    """Waits until every process reaches this point (no-op with one process).

    Goes through the coordination service of `jax.distributed`, not a device
    collective: XLA:CPU's gloo collectives give up when one process arrives at a first
    collective more than 30 s after the others (e.g. still compiling on a loaded host),
    so the processes meet here first, with a long timeout.
    """
    global _barrier_count
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:  # not started by jax.distributed: nothing to wait with
        return
    _barrier_count += 1
    client.wait_at_barrier(f"nfnets_jax/{name}/{_barrier_count}", int(timeout_seconds * 1000))


def failed_processes(ok: bool) -> list[int]:
    """Every process says whether its part succeeded; all get the list of those that failed.

    A collective: every process must call it at the same point. With one process it is
    `[]` or `[0]` without communication.

    Example:
        >>> failed_processes(True)
        []
    """
    if jax.process_count() == 1:
        return [] if ok else [0]
    barrier("failed_processes")
    # int32, not bool: gloo's CPU all-gather mis-sizes 1-byte predicates.
    flags = multihost_utils.process_allgather(np.array(int(ok), np.int32))
    return [int(index) for index in np.flatnonzero(np.asarray(flags) == 0)]


def broadcast_from_main(values: np.ndarray) -> np.ndarray:
    """Process 0's `values` on every process (same shape and dtype on all of them).

    Example:
        >>> broadcast_from_main(np.array([3, 5])).tolist()
        [3, 5]
    """
    if jax.process_count() == 1:
        return np.asarray(values)
    barrier("broadcast_from_main")
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values)))
