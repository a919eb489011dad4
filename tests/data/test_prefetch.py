"""prefetch_to_device: placement, sharding, order, errors."""

import threading

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nfnets_jax import data


def _digits(num_devices):
    return data.train_iterator(
        "digits",
        local_device_count=num_devices,
        per_device_batch=2,
        image_size=8,
        train_preproc="resize",
        seed=0,
    )


def host_batches(n, devices=4, per_device=2):
    for step in range(n):
        yield {
            "images": np.full((devices, per_device, 3, 3, 3), step, np.float32),
            "labels": np.arange(devices * per_device, dtype=np.int32).reshape(devices, -1) + step,
        }


def test_default_sharding_puts_one_device_batch_per_device(num_devices):
    batches = list(data.prefetch_to_device(host_batches(5, devices=num_devices), size=2))
    assert len(batches) == 5
    for step, batch in enumerate(batches):
        images = batch["images"]
        assert isinstance(images, jax.Array)
        assert images.sharding == data.default_sharding()
        assert len(images.addressable_shards) == num_devices
        for shard in images.addressable_shards:
            assert shard.data.shape == (1, 2, 3, 3, 3)
        np.testing.assert_array_equal(images, np.full((num_devices, 2, 3, 3, 3), step))
        np.testing.assert_array_equal(batch["labels"][0], [step, step + 1])


def test_flat_layout_with_a_given_sharding(num_devices):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    flat = ({"x": np.arange(8 * num_devices, dtype=np.float32) + i} for i in range(3))
    out = list(data.prefetch_to_device(flat, size=1, sharding=sharding))
    assert [float(b["x"][0]) for b in out] == [0.0, 1.0, 2.0]
    assert all(s.data.shape == (8,) for s in out[0]["x"].addressable_shards)


def test_the_buffer_runs_ahead_by_size():
    pulled = []
    ready = threading.Event()

    def source():
        for i in range(10):
            pulled.append(i)
            if len(pulled) == 4:
                ready.set()
            yield {"x": np.full((4,), i, np.float32)}

    it = data.prefetch_to_device(source(), size=2)
    assert int(next(it)["x"][0]) == 0
    ready.wait(timeout=10)
    # One consumed, two queued, one held by the producer waiting for room: no more.
    assert len(pulled) == 4
    thread = it._thread
    it.close()
    assert not thread.is_alive()


def test_dropping_the_iterator_stops_its_thread():
    def endless():
        while True:
            yield {"x": np.zeros(4, np.float32)}

    it = data.prefetch_to_device(endless(), size=2)
    next(it)
    thread = it._thread
    del it
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_errors_reach_the_consumer():
    def source():
        yield {"x": np.zeros(4, np.float32)}
        raise RuntimeError("reader broke")

    it = data.prefetch_to_device(source(), size=2)
    next(it)
    with pytest.raises(RuntimeError, match="reader broke"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(ValueError, match="size must be >= 1"):
        data.prefetch_to_device(iter([]), size=0)


def test_prefetching_a_train_iterator(num_devices):
    it = _digits(num_devices)
    reference = next(_digits(num_devices))
    batch = next(data.prefetch_to_device(it))
    assert batch["images"].shape == (num_devices, 2, 8, 8, 3)
    np.testing.assert_array_equal(batch["images"], reference["images"])
    np.testing.assert_array_equal(batch["labels"], reference["labels"])


def test_close_joins_the_thread_and_closes_the_source():
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield {"x": np.zeros(4, np.float32)}
        finally:
            closed.set()

    with data.prefetch_to_device(endless(), size=2) as it:
        next(it)
        thread = it._thread
    # Leaving the block joined the thread (no waiting afterwards) and closed the source.
    assert not thread.is_alive()
    assert closed.is_set()
    with pytest.raises(StopIteration):
        next(it)


def test_closing_a_pipeline_iterator_through_the_prefetcher(num_devices):
    source = _digits(num_devices)
    with data.prefetch_to_device(source, size=2) as it:
        next(it)
    assert not it._thread.is_alive()
    assert source._iterator is None  # the tf.data iterator was released
    with pytest.raises(StopIteration):
        next(source)
