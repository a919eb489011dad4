"""Maps per-device steps over all devices: the one place that knows about parallelism.

Two interchangeable strategies give the same numbers:

* `'pmap'` (default, like DeepMind's original): state arrays carry a leading
  local-device axis, batches are `[local_devices, per_device_batch, ...]`.
* `'shard_map'`: `jax.jit(jax.shard_map(...))` over a 1-D mesh of every device; state is
  replicated (`P()`), batches are flat `[global_batch, ...]` sharded on `'data'`.

Everything outside this module handles the *canonical* state: global jax.Arrays fully
replicated over all devices (`NamedSharding(mesh, P())`). That is what checkpoints save
and restore (multi-host safe with orbax), and it converts to and from the pmap layout
without copying through the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nfnets_jax.training.step import AXIS

PARALLELISMS = ("pmap", "shard_map")


@jax.jit
def _add_device_axis(arrays: list) -> list:
    return [x[None] for x in arrays]


@jax.jit
def _drop_device_axis(arrays: list) -> list:
    return [x[0] for x in arrays]


def local_replica(tree):
    """This process's copy of replicated arrays, so `jax.device_get` works multi-host.

    A global array replicated over every process's devices is not fully addressable from
    any one process; each process reads its own (identical) replica instead.
    """

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    return jax.tree.map(local, tree)


def host_copy(tree):
    """Numpy copy of (replicated) state on this host, single- or multi-host."""
    return jax.device_get(local_replica(tree))


@dataclasses.dataclass(frozen=True)
class DeviceMapper:
    """Maps per-device step functions over `devices` with one strategy.

    Attributes:
      parallelism: `'pmap'` or `'shard_map'`.
      devices: the global devices to use (default: all). Every process must pass the
        same list; each process feeds the devices it can address.
    """

    parallelism: str = "pmap"
    devices: tuple[Any, ...] | None = None

    def __post_init__(self):
        if self.parallelism not in PARALLELISMS:
            from nfnets_jax.training.config import ConfigError

            raise ConfigError(
                f"Unknown parallelism {self.parallelism!r}: use one of {', '.join(PARALLELISMS)}."
            )
        devices = tuple(self.devices) if self.devices is not None else tuple(jax.devices())
        object.__setattr__(self, "devices", devices)

    # ----------------------------------------------------------------- topology
    @property
    def mesh(self) -> Mesh:
        """1-D mesh over every device, axis `'data'`."""
        return Mesh(np.array(self.devices), (AXIS,))

    @property
    def local_devices(self) -> tuple[Any, ...]:
        index = jax.process_index()
        return tuple(d for d in self.devices if d.process_index == index)

    @property
    def local_mesh(self) -> Mesh:
        return Mesh(np.array(self.local_devices), (AXIS,))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def num_local_devices(self) -> int:
        return len(self.local_devices)

    @property
    def replicated(self) -> NamedSharding:
        """Sharding of the canonical (fully replicated) state."""
        return NamedSharding(self.mesh, P())

    @property
    def flatten_batches(self) -> bool:
        """Whether the input pipeline should yield `[local_batch, ...]` (shard_map)."""
        return self.parallelism == "shard_map"

    # ----------------------------------------------------------------- steps
    def map_train_step(
        self, step_fn: Callable, *, donate: bool = True, num_replicated_args: int = 0
    ) -> Callable:
        """Maps `step_fn(state, batch, *replicated) -> (state, metrics)` over the devices.

        The returned function takes and returns the device layout of the state (see
        `to_device_state`), and returns metrics as scalars of device 0.
        `num_replicated_args` extra arguments (e.g. a distillation teacher's variables)
        are replicated like the state and passed in the same device layout; they are
        never donated.
        """
        if self.parallelism == "pmap":
            mapped = jax.pmap(
                step_fn,
                axis_name=AXIS,
                devices=self.local_devices if jax.process_count() == 1 else None,
                donate_argnums=(0,) if donate else (),
            )

            def run(state, batch, *replicated):
                state, metrics = mapped(state, batch, *replicated)
                return state, jax.tree.map(lambda m: m[0], metrics)

            return run
        # check_vma=False keeps pmap's semantics inside the step: gradients w.r.t. the
        # replicated parameters are per-device values that the step averages itself with
        # `pmean`. (With the check on, shard_map would already sum them over devices.)
        mapped = jax.shard_map(
            step_fn,
            mesh=self.mesh,
            in_specs=(P(), P(AXIS)) + (P(),) * num_replicated_args,
            out_specs=(P(), P()),
            check_vma=False,
        )
        jitted = jax.jit(mapped, donate_argnums=(0,) if donate else ())

        def run_sharded(state, batch, *replicated):
            state, metrics = jitted(state, batch, *replicated)
            return state, local_replica(metrics)

        return run_sharded

    def map_eval_step(self, eval_fn: Callable) -> Callable:
        """Maps `eval_fn(params, model_state, batch) -> summed metrics` over devices."""
        if self.parallelism == "pmap":
            mapped = jax.pmap(
                eval_fn,
                axis_name=AXIS,
                devices=self.local_devices if jax.process_count() == 1 else None,
            )
            return lambda params, state, batch: jax.tree.map(
                lambda m: m[0], mapped(params, state, batch)
            )
        mapped = jax.jit(
            jax.shard_map(
                eval_fn,
                mesh=self.mesh,
                in_specs=(P(), P(), P(AXIS)),
                out_specs=P(),
                check_vma=False,
            )
        )
        return lambda params, state, batch: local_replica(mapped(params, state, batch))

    # ----------------------------------------------------------------- data
    @property
    def batch_sharding(self) -> NamedSharding:
        """How host batches go on the devices (pass it to `data.prefetch_to_device`).

        pmap: leaves are `[local_devices, per_device_batch, ...]`, one row per local
        device. shard_map: leaves are `[local_batch, ...]`, and every process's rows
        together form the global batch sharded over all devices.
        """
        if self.parallelism == "pmap":
            return NamedSharding(self.local_mesh, P(AXIS))
        return NamedSharding(self.mesh, P(AXIS))

    # ----------------------------------------------------------------- state layout
    def to_device_state(self, state):
        """Canonical replicated state -> the layout the mapped step takes."""
        if self.parallelism == "shard_map":
            return state
        sharding = NamedSharding(self.local_mesh, P(AXIS))
        return self._relayout(
            state, _add_device_axis, sharding, lambda s: (len(self.local_devices), *s)
        )

    def from_device_state(self, state):
        """The mapped step's state layout -> canonical replicated state."""
        if self.parallelism == "shard_map":
            return state
        return self._relayout(state, _drop_device_axis, self.replicated, lambda s: s[1:])

    def _relayout(self, state, per_device_fn, sharding, global_shape):
        """Applies `per_device_fn` to each local device's shards of every leaf at once.

        One jitted call per device over the whole tree, instead of one indexing op per
        leaf and device: eager indexing compiles a computation for every distinct leaf
        shape on every device, which a run paid at its first checkpoint and evaluation
        (tests/training/test_step.py counts the compilations).
        """
        leaves, treedef = jax.tree.flatten(state)
        shards = [{s.device: s.data for s in x.addressable_shards} for x in leaves]
        moved = {
            d: per_device_fn([by_device[d] for by_device in shards]) for d in self.local_devices
        }
        out = [
            jax.make_array_from_single_device_arrays(
                global_shape(x.shape), sharding, [moved[d][i] for d in self.local_devices]
            )
            for i, x in enumerate(leaves)
        ]
        return jax.tree.unflatten(treedef, out)

    def replicate(self, tree):
        """Host (numpy) or single-device values -> canonical replicated state."""
        return jax.device_put(tree, self.replicated)
