"""Double-buffered placement of host batches on devices."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

__all__ = ["DevicePrefetcher", "default_sharding", "prefetch_to_device"]

# Sentinel put on the queue when the source iterator is exhausted.
_END = object()


def default_sharding() -> jax.sharding.Sharding:
    """Leading-axis sharding over this process's devices (mesh axis `'data'`).

    Fits both batch layouts of the pipeline: `[local_devices, B, ...]` puts one
    per-device batch on each device, `[local_devices * B, ...]` splits the flat batch
    evenly.
    """
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _put(batch: Any, sharding: jax.sharding.Sharding) -> Any:
    if sharding.is_fully_addressable:
        return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)
    # A mesh spanning several processes: each process holds its own part of the batch.
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _offer(items: queue.Queue, stop: threading.Event, item: Any) -> bool:
    """Puts `item` on the queue unless `stop` is set first; returns whether it did."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _fill(source: Iterator, sharding, items: queue.Queue, stop: threading.Event) -> None:
    # A plain function (no reference to the DevicePrefetcher), so that dropping the
    # prefetcher lets it be collected, which stops this thread.
    try:
        for batch in source:
            if not _offer(items, stop, _put(batch, sharding)):
                return
    except BaseException as error:  # noqa: BLE001 - handed to the consumer thread.
        _offer(items, stop, error)
        return
    _offer(items, stop, _END)


class DevicePrefetcher(Iterator):
    """Iterator that keeps up to `size` batches already placed on devices.

    A background thread pulls host batches from the source iterator, starts their
    transfer with `jax.device_put` and puts the device arrays on a queue of depth
    `size`. Exceptions raised by the source are re-raised by `__next__`.

    The prefetcher owns its source: `close()` (or leaving a ``with`` block) stops the
    thread, waits for it to finish the batch it is reading, then closes the source if it
    has a ``close()`` method (the pipeline's iterators and generators do). A thread left
    inside TensorFlow when the interpreter exits aborts the process, so every owner
    closes its prefetcher on every exit path. Dropping the iterator without closing it
    stops the thread too, but does not wait for it.
    """

    def __init__(self, iterator: Iterable, size: int, sharding: jax.sharding.Sharding) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._source = iter(iterator)
        self._thread = threading.Thread(
            target=_fill,
            args=(self._source, sharding, self._queue, self._stop),
            daemon=True,
            name="prefetch_to_device",
        )
        self._thread.start()

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def __enter__(self) -> DevicePrefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self, timeout: float | None = 120.0) -> None:
        """Stops the thread, joins it and closes the source (queued batches are dropped).

        Args:
            timeout: seconds to wait for the thread to finish the batch it is reading
                (None: no limit). If it is still reading then, a warning is logged and
                the source is left open for the thread.
        """
        self._stop.set()
        self._done = True
        while True:  # free the queued device buffers now
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)
        if self._thread.is_alive():
            logging.warning(
                "The input thread is still reading a batch after %s s; leaving it to finish.",
                timeout,
            )
            return
        close_source = getattr(self._source, "close", None)
        if close_source is not None:
            close_source()

    def __del__(self) -> None:
        self._stop.set()


def prefetch_to_device(
    iterator: Iterable,
    size: int = 2,
    sharding: jax.sharding.Sharding | None = None,
) -> DevicePrefetcher:
    """Places each batch of `iterator` on devices, `size` batches ahead of the consumer.

    Each leaf of each batch goes through `jax.device_put(leaf, sharding)` (or
    `jax.make_array_from_process_local_data` when `sharding` spans several processes),
    in a background thread, so host-to-device copies overlap with the training step.

    Args:
        iterator: yields pytrees of numpy arrays (e.g. `train_iterator(...)`).
        size: batches kept ready on devices (2: double buffering).
        sharding: a `jax.sharding.Sharding` for every leaf, e.g.
            `NamedSharding(mesh, P('data'))` over the leading axis; default: the leading
            axis split over `jax.local_devices()` (`default_sharding()`).

    Returns:
        A `DevicePrefetcher` of pytrees of `jax.Array`s with the given sharding. It owns
        `iterator`: close it (or use it in a ``with`` block) to stop its thread and close
        `iterator` too.

    Raises:
        ValueError: if `size < 1`.

    Example:
        >>> from nfnets_jax.data.pipeline import train_iterator
        >>> n = jax.local_device_count()
        >>> host_batches = train_iterator('digits', local_device_count=n, per_device_batch=8,
        ...                               image_size=32, train_preproc='resize', seed=0)
        >>> with prefetch_to_device(host_batches, size=2) as batches:
        ...     images = next(batches)['images']  # [n, 8, 32, 32, 3]: one row per device
        >>> images.shape[1:], images.sharding.device_set == set(jax.local_devices())
        ((8, 32, 32, 3), True)
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    return DevicePrefetcher(iterator, size, sharding or default_sharding())
