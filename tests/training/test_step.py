"""The per-device train step: device-count equivalence, accumulation, non-finite guard."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import optim
from nfnets_jax.training import parallel, step
from nfnets_jax.training.state import create_train_state

NUM_CLASSES = 5


def _forward(images, is_training):
    del is_training
    x = hk.Conv2D(4, 3, name="conv")(images)
    x = jax.nn.relu(x).mean(axis=(1, 2))
    return {"logits": hk.Linear(NUM_CLASSES, name="linear")(x)}


MODEL = hk.transform_with_state(_forward)


def _setup(batch_size=16, accum=1):
    params_shape, _ = jax.eval_shape(
        functools.partial(MODEL.init, is_training=True),
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32),
    )
    config = optim.nfnet_optimizer_config()
    config.clipping = 0.05  # strong enough that some units clip
    config.allow_unmatched_patterns = True  # the toy model has no `gain`/`bias` leaves
    tx, lr = optim.build_optimizer(
        config, params_shape, batch_size=batch_size, steps_per_epoch=1.0, total_steps=10
    )
    init = functools.partial(create_train_state, MODEL.init, tx, use_ema=True)
    state = init(jax.random.PRNGKey(42), jnp.zeros((1, 8, 8, 3)))
    train_step = step.make_train_step(
        MODEL.apply,
        tx,
        num_classes=NUM_CLASSES,
        learning_rate_fn=lr,
        label_smoothing=0.1,
        ema_decay=0.99999,
        grad_accum_steps=accum,
    )
    return state, train_step


def _batches(num_steps, batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_steps):
        out.append(
            {
                "images": rng.normal(size=(batch_size, 8, 8, 3)).astype(np.float32),
                "labels": rng.integers(0, NUM_CLASSES, size=(batch_size,)).astype(np.int32),
                "mix_labels": rng.integers(0, NUM_CLASSES, size=(batch_size,)).astype(np.int32),
                "ratio": rng.uniform(size=(batch_size,)).astype(np.float32),
            }
        )
    return out


def _run(parallelism, devices, batches, accum=1):
    mapper = parallel.DeviceMapper(parallelism, devices=tuple(devices))
    state, train_step = _setup(accum=accum)
    fn = mapper.map_train_step(train_step, donate=False)
    device_state = mapper.to_device_state(mapper.replicate(state))
    losses = []
    for batch in batches:
        if parallelism == "pmap":
            per_device = len(batch["labels"]) // len(devices)
            batch = {
                k: v.reshape((len(devices), per_device) + v.shape[1:]) for k, v in batch.items()
            }
        device_state, metrics = fn(device_state, jax.device_put(batch, mapper.batch_sharding))
        losses.append(float(metrics["loss"]))
    final = jax.device_get(mapper.from_device_state(device_state))
    return losses, final, metrics


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.slow
def test_pmap_shard_map_and_single_device_agree():
    batches = _batches(3)
    devices = jax.devices()
    single_loss, single, _ = _run("pmap", devices[:1], batches)
    pmap_loss, pmapped, metrics = _run("pmap", devices, batches)
    shard_loss, sharded, _ = _run("shard_map", devices, batches)
    # The loss is the mean over the global batch either way.
    # Float32 sums in different orders: agreement to float tolerance, not bit-for-bit.
    np.testing.assert_allclose(pmap_loss, single_loss, rtol=1e-6)
    np.testing.assert_allclose(shard_loss, single_loss, rtol=1e-6)
    assert int(pmapped.step) == int(sharded.step) == int(single.step) == 3
    _assert_trees_close(pmapped.params, single.params, rtol=1e-5, atol=1e-7)
    _assert_trees_close(sharded.params, single.params, rtol=1e-5, atol=1e-7)
    _assert_trees_close(pmapped.ema_params, single.ema_params, rtol=1e-5, atol=1e-7)
    _assert_trees_close(pmapped.opt_state, sharded.opt_state, rtol=1e-5, atol=1e-7)
    # Parameters moved, and AGC reported what it did.
    assert not np.allclose(single.params["linear"]["w"], _setup()[0].params["linear"]["w"])
    assert 0.0 < float(metrics["agc_clip_fraction"]) <= 1.0
    assert float(metrics["agc_max_ratio"]) > 0.05


def test_gradient_accumulation_equals_large_batch():
    batches = _batches(2)
    device = jax.devices()[:1]
    _, big, _ = _run("pmap", device, batches, accum=1)
    _, accumulated, _ = _run("pmap", device, batches, accum=2)
    # AGC, weight decay and momentum all see the same (accumulated) gradient.
    _assert_trees_close(accumulated.params, big.params, rtol=2e-5, atol=2e-7)
    _assert_trees_close(accumulated.opt_state, big.opt_state, rtol=2e-5, atol=2e-7)


def test_accumulation_requires_divisible_batch():
    state, train_step = _setup(accum=3)
    batch = {k: jnp.asarray(v) for k, v in _batches(1)[0].items()}
    fn = jax.pmap(train_step, axis_name=step.AXIS, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="divisible by grad_accum_steps"):
        fn(jax.tree.map(lambda x: x[None], state), jax.tree.map(lambda x: x[None], batch))


def test_non_finite_batch_skips_the_update():
    batch = _batches(1)[0]
    batch["images"][3, 2, 2, 1] = np.nan
    state, train_step = _setup()
    fn = jax.pmap(train_step, axis_name=step.AXIS, devices=jax.devices()[:1])
    new_state, metrics = fn(
        jax.tree.map(lambda x: x[None], state), jax.tree.map(lambda x: x[None], batch)
    )
    assert float(metrics["finite"][0]) == 0.0
    # XLA:CPU's fused max may turn relu(NaN) into 0, hiding the NaN from the loss; the
    # gradient (through the conv weights) still carries it, and either trips the guard.
    assert not (
        np.isfinite(float(metrics["loss"][0])) and np.isfinite(float(metrics["grad_norm"][0]))
    )
    assert int(new_state.step[0]) == 0
    _assert_trees_close(jax.tree.map(lambda x: x[0], new_state.params), state.params, 0, 0)


def test_eval_step_masks_padding():
    state, _ = _setup()
    eval_fn = jax.pmap(
        step.make_eval_step(MODEL.apply, num_classes=NUM_CLASSES),
        axis_name=step.AXIS,
        devices=jax.devices()[:1],
    )
    batch = _batches(1)[0]
    mask = np.array([1.0] * 10 + [0.0] * 6, np.float32)
    inputs = {"images": batch["images"], "labels": batch["labels"], "mask": mask}
    sums = eval_fn(
        jax.tree.map(lambda x: x[None], state.params),
        jax.tree.map(lambda x: x[None], state.model_state),
        jax.tree.map(lambda x: x[None], inputs),
    )
    logits = MODEL.apply(state.params, state.model_state, None, batch["images"], False)[0]["logits"]
    correct = (np.argmax(np.asarray(logits), -1) == batch["labels"])[:10].sum()
    assert float(sums["count"][0]) == 10.0
    assert float(sums["top_1"][0]) == correct


def test_pmap_layout_round_trip_is_exact_and_compiles_once_per_device():
    mapper = parallel.DeviceMapper("pmap")
    devices = mapper.local_devices
    rng = np.random.default_rng(0)
    # Many leaves of distinct shapes, dtypes and a typed PRNG key, as in a real state.
    tree = {
        f"layer_{i}": {"w": rng.normal(size=(i + 1, 3)).astype(np.float32), "n": np.int32(i)}
        for i in range(20)
    }
    tree["rng"] = jax.random.key(3)
    state = mapper.replicate(tree)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        device_state = mapper.to_device_state(state)
        back = mapper.from_device_state(device_state)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # One computation per direction and device (eagerly it was one per leaf shape).
    assert len(compiles) <= 2 * len(devices)
    leaf = device_state["layer_4"]["w"]
    assert leaf.shape == (len(devices), 5, 3)
    assert [s.device for s in leaf.addressable_shards] == list(devices)
    assert device_state["rng"].shape == (len(devices),)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        assert x.sharding == y.sharding and x.dtype == y.dtype
    np.testing.assert_array_equal(
        jax.random.key_data(back["rng"]), jax.random.key_data(state["rng"])
    )
    for name in (k for k in tree if k != "rng"):
        for k in ("w", "n"):
            np.testing.assert_array_equal(np.asarray(back[name][k]), tree[name][k])
