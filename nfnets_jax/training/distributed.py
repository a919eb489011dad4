"""Multi-host start-up: `jax.distributed.initialize` when a run spans several hosts."""

from __future__ import annotations

import os

import jax
from absl import logging

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
      ValueError: an unknown `mode`, or an incomplete manual setting.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode {mode!r} is unknown: use auto, on or off.")
    manual = coordinator_address is not None
    if manual and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id as well.")
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
