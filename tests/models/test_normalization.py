"""BatchNorm, GroupNorm and LayerNorm against numpy, and cross-device BatchNorm."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import BatchNorm, GroupNorm, layer_norm
from nfnets_jax.models.normalization import axis_is_bound
from nfnets_jax.training import parallel


def numpy_group_norm(x, groups, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


def batch_norm(x, is_training, **kwargs):
    return BatchNorm(**kwargs)(x, is_training)


def test_batch_norm_training_uses_batch_statistics_and_updates_running_averages():
    forward = hk.transform_with_state(batch_norm)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(6, 3, 3, 4)).astype(np.float32)
    params, state = forward.init(None, x, True)
    np.testing.assert_array_equal(state["batch_norm"]["mean"], np.zeros(4))
    np.testing.assert_array_equal(state["batch_norm"]["var"], np.ones(4))
    params = {"batch_norm": {"scale": jnp.full(4, 2.0), "offset": jnp.full(4, 0.5)}}
    y, new_state = forward.apply(params, state, None, x, True)
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    expected = 2.0 * (x - mean) / np.sqrt(var + 1e-5) + 0.5
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_state["batch_norm"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new_state["batch_norm"]["var"], 0.9 + 0.1 * var, rtol=1e-5)
    # Evaluation normalizes with the running averages, whatever the batch.
    y_eval, same_state = forward.apply(params, new_state, None, x[:1], False)
    running = new_state["batch_norm"]
    expected = 2.0 * (x[:1] - running["mean"]) / np.sqrt(running["var"] + 1e-5) + 0.5
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
    assert jax.tree.all(jax.tree.map(np.array_equal, same_state, new_state))


def test_batch_norm_statistics_are_float32_under_bfloat16():
    forward = hk.transform_with_state(batch_norm)
    # A large mean and a small spread: E[x^2] - E[x]^2 in bfloat16 would be garbage.
    x = (100.0 + np.random.default_rng(1).normal(size=(64, 2, 2, 3))).astype(np.float32)
    params, state = forward.init(None, x, True)
    y, state = forward.apply(params, state, None, jnp.asarray(x, jnp.bfloat16), True)
    assert y.dtype == jnp.bfloat16
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)
    np.testing.assert_allclose(state["batch_norm"]["var"], 0.9 + 0.1 * xb.var((0, 1, 2)), rtol=1e-4)
    assert abs(float(jnp.var(y.astype(jnp.float32))) - 1.0) < 0.02


@pytest.mark.parametrize("parallelism", ["pmap", "shard_map"])
def test_cross_replica_batch_norm_equals_global_batch_statistics(parallelism, num_devices):
    forward = hk.transform_with_state(
        lambda x: BatchNorm(cross_replica_axis="data")(x, is_training=True)
    )
    x = np.random.default_rng(2).normal(size=(4 * num_devices, 3, 3, 5)).astype(np.float32)
    params, state = forward.init(None, x)
    expected, expected_state = forward.apply(params, state, None, x)
    local, _ = forward.apply(params, state, None, x[:4])  # statistics of 4 examples only

    mapper = parallel.DeviceMapper(parallelism)

    def step(state_and_params, batch):
        out, new_state = forward.apply(state_and_params[1], state_and_params[0], None, batch)
        return (new_state, state_and_params[1]), out

    mapped = mapper.map_train_step(step, donate=False)
    device_state = mapper.to_device_state(mapper.replicate((state, params)))
    batch = x.reshape(num_devices, 4, 3, 3, 5) if parallelism == "pmap" else x
    batch = jax.device_put(batch, mapper.batch_sharding)
    (new_state, _), _ = mapped(device_state, batch)
    new_state = parallel.host_copy(mapper.from_device_state(new_state))
    for key in ("mean", "var"):
        np.testing.assert_allclose(
            new_state["batch_norm"][key], expected_state["batch_norm"][key], rtol=1e-5
        )
    assert not np.allclose(local, expected[:4], atol=1e-3)


def test_axis_is_bound_only_inside_a_mapping():
    assert not axis_is_bound("data")
    assert jax.pmap(lambda x: x * axis_is_bound("data"), axis_name="data")(jnp.ones(1))[0] == 1


@pytest.mark.parametrize("groups, channels", [(32, 64), (2, 6), (32, 8), (1, 12)])
def test_group_norm_matches_numpy_with_min_groups_and_channels(groups, channels):
    forward = hk.transform(
        lambda x: GroupNorm(groups, create_scale=False, create_offset=False)(x, True)
    )
    x = np.random.default_rng(3).normal(1.0, 2.0, size=(3, 4, 5, channels)).astype(np.float32)
    y = forward.apply({}, None, x)
    np.testing.assert_allclose(y, numpy_group_norm(x, min(groups, channels)), atol=2e-5)


def test_layer_norm_normalizes_each_example_over_hwc_and_keeps_the_affine():
    forward = hk.transform(lambda x: layer_norm()(x))
    x = (np.random.default_rng(4).normal(size=(2, 3, 3, 4)) * [1, 2, 3, 4]).astype(np.float32)
    params = forward.init(None, x)
    assert {k: v.shape for k, v in params["group_norm"].items()} == {
        "scale": (4,),
        "offset": (4,),
    }
    y = forward.apply(params, None, x)
    np.testing.assert_allclose(y, numpy_group_norm(x, 1), atol=2e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(2, -1).var(1), 1.0, rtol=1e-4)


def test_norm_errors_name_the_problem():
    with pytest.raises(ValueError, match="not divisible into 4 groups"):
        hk.transform(lambda x: GroupNorm(4)(x)).init(None, jnp.ones((1, 2, 2, 6)))
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        hk.transform(lambda: GroupNorm(0)).init(None)
    with pytest.raises(ValueError, match="decay_rate must be in"):
        hk.transform(lambda: BatchNorm(decay_rate=1.0)).init(None)
