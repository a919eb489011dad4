"""compute_dtype_scope: float32 storage, computation in the compute dtype."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import WSConv2D, compute_dtype_scope, resolve_compute_dtype


def test_parameters_created_float32_and_read_in_compute_dtype():
    def forward(x):
        with compute_dtype_scope(jnp.bfloat16) as dtype:
            h = x.astype(dtype)
            seen = {"linear": hk.Linear(4)(h).dtype}
            conv = WSConv2D(4, 1)
            seen["conv"] = conv(h[:, None, None, :]).dtype
            seen["ws_weight"] = conv.standardized_weight(4).dtype
            return seen

    f = hk.transform(forward)
    x = jnp.ones((2, 4))
    params = f.init(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    seen = f.apply(params, None, x)
    assert seen["linear"] == jnp.bfloat16 and seen["conv"] == jnp.bfloat16
    assert seen["ws_weight"] == jnp.float32  # WS statistics stay in float32


def test_float32_scope_changes_nothing():
    def forward(x):
        with compute_dtype_scope(None):
            return hk.Linear(3)(x)

    f = hk.transform(forward)
    x = jnp.arange(4.0).reshape(1, 4)
    params = f.init(jax.random.key(0), x)
    want = x @ params["linear"]["w"] + params["linear"]["b"]
    np.testing.assert_array_equal(f.apply(params, None, x), want)


def test_resolve_compute_dtype():
    assert resolve_compute_dtype(None) == np.float32
    assert resolve_compute_dtype("bfloat16") == jnp.bfloat16
    assert resolve_compute_dtype(jnp.float16) == np.float16
    for bad in (jnp.int8, "float64", "fp8"):
        with pytest.raises(ValueError, match="compute_dtype must be one of"):
            resolve_compute_dtype(bad)
