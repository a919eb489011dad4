"""Training checkpoints on disk with orbax: periodic, keep-last-N, corruption fallback.

A checkpoint holds the whole `TrainState` (params, optimizer state, EMA, step, RNG) plus a
small JSON record (step, global batch, data seed, config) so a resumed run continues the
same data stream at the same position. Orbax writes each step to a temporary directory
and renames it when complete, so a run killed mid-save leaves the previous checkpoint as
the latest; a checkpoint that is damaged afterwards is skipped with a warning in favour
of the one before it. On a multi-host run that choice is made together: a step is used
only if every process read it, so all processes resume from the same step (or all stop
with one message).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from nfnets_jax.errors import NFNetsError
from nfnets_jax.training import distributed, parallel


class CheckpointError(NFNetsError, RuntimeError):
    """No usable checkpoint could be restored."""


def saved_steps(directory: str) -> list[int]:
    """The finished checkpoint steps in `directory` (orbax names them by their step).

    Orbax writes a step under a temporary name and renames it to the bare step number
    once complete, so only those count. A missing directory has none.

    Example:
        >>> saved_steps('/nonexistent/checkpoints')
        []
    """
    path = epath.Path(directory)
    if not path.is_dir():
        return []
    return sorted(int(child.name) for child in path.iterdir() if child.name.isdigit())


class Checkpointer:
    """Saves and restores canonical (replicated) train states in `directory`.

    Args:
      directory: where step directories go (created if needed).
      max_to_keep: how many recent checkpoints to keep (older ones are deleted).
      async_save: write in a background thread (the step loop continues meanwhile).
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        # Local paths are made absolute (orbax needs it); gs:// and other URLs stay as given.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Writes `state` (global jax.Arrays or numpy) and `meta` (JSON) as `step`."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Reads checkpoint `step` into arrays shaped/sharded like `abstract_state`.

        Each process reads on its own, with orbax's item handlers: unlike
        `CheckpointManager.restore`, there is no barrier across processes at the end, so a
        process whose read fails cannot leave the others waiting in one. Agreement on
        what was read is `restore_latest`'s job.
        """
        step_dir = epath.Path(self.directory) / str(step)
        if not step_dir.is_dir():
            raise FileNotFoundError(f"No checkpoint at step {step} in {self.directory}.")
        handler = ocp.StandardCheckpointHandler()
        try:
            state = handler.restore(
                step_dir / "state", args=ocp.args.StandardRestore(abstract_state)
            )
        finally:
            handler.close()
        return state, self.read_meta(step)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON record of checkpoint `step` (step, batch size, data seed, config)."""
        handler = ocp.JsonCheckpointHandler()
        try:
            return dict(handler.restore(epath.Path(self.directory) / str(step) / "meta"))
        finally:
            handler.close()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest checkpoint every process can read, or returns None if none.

        A checkpoint that fails to load (truncated or deleted files, wrong shapes) is
        skipped with a warning and the previous one is tried. The candidates are process
        0's steps, and a step is used only if every process read it (a collective:
        every process calls this), so all processes restore the same step.

        Raises:
          CheckpointError: checkpoints exist but none of them can be read (by every
            process).
        """
        local = self.all_steps()
        count = int(distributed.broadcast_from_main(np.array(len(local), np.int64)))
        if count == 0:
            return None
        mine = np.array(local if len(local) == count else [0] * count, np.int64)
        steps = [int(s) for s in distributed.broadcast_from_main(mine)]
        failures = []
        for step in reversed(steps):
            restored, message = None, None
            try:
                restored = self.restore(step, abstract_state)
            except Exception as error:  # noqa: BLE001 - any read failure means "unusable".
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            failed = distributed.failed_processes(message is None)
            if not failed:
                return restored
            where = (
                message
                if message is not None
                else f"unreadable on process(es) {', '.join(map(str, failed))} (see their logs)"
            )
            failures.append(f"step {step}: {where}")
            logging.warning(
                "Checkpoint at step %d in %s cannot be restored (%s); falling back to the "
                "previous checkpoint.",
                step,
                self.directory,
                where,
            )
        if failures:
            raise CheckpointError(
                f"None of the checkpoints in {self.directory} can be restored:\n  "
                + "\n  ".join(failures)
                + "\nDelete the damaged step directories to start again from the newest good "
                "one, or pass a new --workdir to start from scratch."
            )
        return None

    def wait(self) -> None:
        """Blocks until any background save has finished."""
        self._manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once the cluster has been told to preempt (multi-host)."""
        if jax.process_count() == 1:
            return False
        return bool(self._manager.reached_preemption(step))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def restore_state(
    workdir_or_checkpoints: str, abstract_state: Any, *, step: int | None = None
) -> Any:
    """Reads a run's `TrainState` (newest readable checkpoint, or `step`) onto the host.

    Args:
      workdir_or_checkpoints: a run directory (with `checkpoints/`) or the checkpoint
        directory itself.
      abstract_state: the state's shapes, dtypes and shardings (`startup.abstract_state
        (config)` for a run's config).
      step: a specific checkpoint step instead of the newest readable one.

    Returns:
      The state as host (numpy) arrays.

    Raises:
      CheckpointError: no checkpoint directory, or no (readable) checkpoint in it.

    Example:
      >>> state = restore_state('/tmp/nfnet_demo', startup.abstract_state(config))  # doctest: +SKIP
    """
    directory = epath.Path(workdir_or_checkpoints)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"No checkpoint directory at {directory}.")
    checkpointer = Checkpointer(str(directory), async_save=False)
    try:
        if step is not None:
            restored = checkpointer.restore(step, abstract_state)
        else:
            restored = checkpointer.restore_latest(abstract_state)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"No checkpoint found in {directory}.")
    return parallel.host_copy(restored[0])
