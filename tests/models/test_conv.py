"""Native vs per-group grouped convolutions: same numbers, same gradients, any layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nfnets_jax.models.conv import grouped_conv, resolve_conv_impl

CASES = [
    # (input shape, kernel shape, strides, padding, dilation, groups, dimension numbers)
    ((2, 8, 8, 12), (3, 3, 4, 6), (1, 1), "SAME", None, 3, ("NHWC", "HWIO", "NHWC")),
    ((2, 9, 8, 8), (3, 3, 2, 8), (2, 2), "SAME", None, 4, ("NHWC", "HWIO", "NHWC")),
    ((1, 7, 7, 6), (3, 3, 3, 4), (1, 2), [(1, 2), (0, 1)], (2, 1), 2, ("NHWC", "HWIO", "NHWC")),
    ((2, 4, 6, 8), (4, 2, 3, 3), (1, 1), "VALID", None, 2, ("NCHW", "OIHW", "NCHW")),
]


def _run(impl, x, w, strides, padding, dilation, groups, dn):
    return grouped_conv(
        x,
        w,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=dn,
        feature_group_count=groups,
        conv_impl=impl,
    )


@pytest.mark.parametrize("case", CASES)
def test_per_group_equals_native_forward_and_gradients_under_jit(case):
    x_shape, w_shape, strides, padding, dilation, groups, dn = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    reference = lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=dn,
        feature_group_count=groups,
    )
    outs, grads = {}, {}
    for impl in ("native", "per_group"):
        f = lambda x, w, impl=impl: _run(impl, x, w, strides, padding, dilation, groups, dn)
        outs[impl] = jax.jit(f)(x, w)
        grads[impl] = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
    np.testing.assert_allclose(outs["native"], reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs["per_group"], outs["native"], rtol=1e-5, atol=1e-5)
    for g_native, g_split in zip(grads["native"], grads["per_group"], strict=True):
        np.testing.assert_allclose(g_split, g_native, rtol=1e-5, atol=1e-5)


def test_per_group_in_bfloat16_matches_float32():
    x_shape, w_shape, strides, padding, dilation, groups, dn = CASES[0]
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32) / 6
    want = _run("native", x, w, strides, padding, dilation, groups, dn)
    got = _run(
        "per_group",
        x.astype(jnp.bfloat16),
        w.astype(jnp.bfloat16),
        strides,
        padding,
        dilation,
        groups,
        dn,
    )
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0.05, atol=0.05)


def test_auto_resolves_per_backend_and_bad_values_are_refused():
    assert resolve_conv_impl("auto", backend="cpu") == "per_group"
    assert resolve_conv_impl("auto", backend="gpu") == "native"
    assert resolve_conv_impl("auto", backend="tpu") == "native"
    assert resolve_conv_impl("native", backend="cpu") == "native"
    assert resolve_conv_impl("auto") == "per_group"  # the tests run on CPU
    with pytest.raises(ValueError, match="'auto', 'native', 'per_group'"):
        resolve_conv_impl("grouped")
    with pytest.raises(ValueError, match="must divide"):
        _run(
            "per_group",
            jnp.ones((1, 4, 4, 6)),
            jnp.ones((3, 3, 2, 5)),
            (1, 1),
            "SAME",
            None,
            3,
            ("NHWC", "HWIO", "NHWC"),
        )
