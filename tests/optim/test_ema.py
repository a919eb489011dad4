"""EMA with the original (1 + t) / (10 + t) decay warmup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.optim import NFNET_EMA_DECAY, ema_decay, ema_update


def test_decay_values():
    assert NFNET_EMA_DECAY == 0.99999
    assert float(ema_decay(0)) == pytest.approx(0.1)  # first update: t = 0
    assert float(ema_decay(1)) == pytest.approx(2 / 11)
    assert float(ema_decay(112_601)) == pytest.approx(112_602 / 112_611, rel=1e-7)
    assert float(ema_decay(112_601)) == pytest.approx(0.99992, abs=1e-5)
    # The cap 0.99999 is only reached at t >= 899,990.
    assert float(ema_decay(500_000)) < np.float32(0.99999)
    assert float(ema_decay(10**7)) == np.float32(0.99999)
    assert float(ema_decay(0, decay=0.5)) == pytest.approx(0.1)
    assert float(ema_decay(100, decay=0.5)) == 0.5
    assert float(ema_decay(0, decay=0.9, warmup=False)) == pytest.approx(0.9)
    np.testing.assert_allclose(ema_decay(jnp.arange(3)), [0.1, 2 / 11, 3 / 12], rtol=1e-6)
    with pytest.raises(ValueError, match="decay must be in"):
        ema_decay(0, decay=1.5)


def test_update_against_numpy_over_several_steps():
    rng = np.random.default_rng(0)
    params = [
        {"conv": {"w": rng.normal(size=(3, 3, 2, 4)), "gain": rng.normal(size=4)}} for _ in range(5)
    ]
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    ema = jax.tree.map(jnp.asarray, params[0])  # the EMA starts as the initial params
    want = jax.tree.map(lambda x: x.astype(np.float64), params[0])
    update = jax.jit(ema_update)
    for t in range(4):  # update t moves the params to params[t + 1]
        ema = update(ema, jax.tree.map(jnp.asarray, params[t + 1]), t)
        d = min(0.99999, (1 + t) / (10 + t))
        want = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, want, params[t + 1])
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_any_pytree_dtypes_kept_and_integer_state_copied():
    ema = {"bn": {"mean": jnp.zeros(3, jnp.bfloat16), "counter": jnp.array(4, jnp.int32)}}
    new = {"bn": {"mean": jnp.ones(3, jnp.bfloat16), "counter": jnp.array(5, jnp.int32)}}
    out = ema_update(ema, new, step=0)
    assert out["bn"]["mean"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out["bn"]["mean"], np.float32), 0.8984375)  # bf16(0.9)
    assert int(out["bn"]["counter"]) == 5
    # An empty Haiku state averages to an empty state.
    assert ema_update({}, {}, step=3) == {}
    with pytest.raises(ValueError, match="does not match"):
        ema_update({"w": jnp.zeros(2)}, {"w": jnp.zeros(3)}, step=0)
