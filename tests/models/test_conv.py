"""Native vs per-group vs dot vs patches convolutions: same numbers and gradients, any layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import print_saved_residuals

from nfnets_jax.models import conv
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
    for impl in ("native", "per_group", "patches"):
        f = lambda x, w, impl=impl: _run(impl, x, w, strides, padding, dilation, groups, dn)
        outs[impl] = jax.jit(f)(x, w)
        grads[impl] = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
    np.testing.assert_allclose(outs["native"], reference, rtol=1e-6, atol=1e-6)
    for impl in ("per_group", "patches"):
        np.testing.assert_allclose(outs[impl], outs["native"], rtol=1e-5, atol=1e-5)
        for g_native, g_split in zip(grads["native"], grads[impl], strict=True):
            # The kernel gradient sums B H W products of N(0, 1) entries (up to ~30).
            scale = float(jnp.max(jnp.abs(g_native)))
            np.testing.assert_allclose(g_split, g_native, rtol=1e-5, atol=1e-6 * scale)


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
    assert resolve_conv_impl("auto", backend="cpu") == "patches"
    assert resolve_conv_impl("auto", backend="gpu") == "native"
    assert resolve_conv_impl("auto", backend="tpu") == "native"
    assert resolve_conv_impl("native", backend="cpu") == "native"
    assert resolve_conv_impl("per_group", backend="cpu") == "per_group"
    assert resolve_conv_impl("dot", backend="cpu") == "dot"
    assert resolve_conv_impl("auto") == "patches"  # the tests run on CPU
    with pytest.raises(ValueError, match="'auto', 'native', 'per_group', 'dot', 'patches'"):
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


NHWC = ("NHWC", "HWIO", "NHWC")
POINTWISE_CASES = [
    # (input shape, kernel shape, strides, padding, dilation, groups, dimension numbers)
    ((1, 8, 8, 16), (1, 1, 16, 24), (1, 1), "SAME", None, 1, NHWC),
    ((3, 5, 7, 24), (1, 1, 24, 8), (1, 1), "VALID", None, 1, NHWC),
    ((2, 9, 8, 12), (1, 1, 12, 20), (2, 2), "SAME", None, 1, NHWC),  # odd size, stride 2
    ((4, 7, 10, 6), (1, 1, 6, 5), (3, 2), "SAME", (2, 2), 1, NHWC),  # dilation is a no-op
    ((2, 6, 6, 8), (1, 1, 8, 6), (2, 1), [(1, 2), (0, 1)], None, 1, NHWC),
    ((2, 6, 6, 8), (1, 1, 8, 6), (1, 1), [(-1, 1), (2, -2)], None, 1, NHWC),
    ((2, 8, 6, 6), (12, 8, 1, 1), (2, 2), "SAME", None, 1, ("NCHW", "OIHW", "NCHW")),
    ((2, 6, 5, 8), (1, 8, 10, 1), (1, 1), "SAME", None, 1, ("NHWC", "HIOW", "NCHW")),
    ((2, 6, 6, 12), (1, 1, 4, 9), (1, 1), "SAME", None, 3, NHWC),  # grouped: per-group dots
]


def _conv_primitives(impl, x, w, *conv_args):
    """The convolution and dot primitives of the forward and backward passes."""
    loss = lambda x, w: jnp.sum(_run(impl, x, w, *conv_args))
    eqns = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).jaxpr.eqns
    return {str(e.primitive) for e in eqns} & {"conv_general_dilated", "dot_general"}


@pytest.mark.parametrize("case", POINTWISE_CASES)
def test_pointwise_as_dot_equals_native_forward_and_gradients(case):
    x_shape, w_shape, strides, padding, dilation, groups, dn = case
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    assert _conv_primitives("native", x, w, *case[2:]) == {"conv_general_dilated"}
    assert _conv_primitives("dot", x, w, *case[2:]) == {"dot_general"}
    outs, grads = {}, {}
    for impl in ("native", "dot"):
        f = lambda x, w, impl=impl: _run(impl, x, w, strides, padding, dilation, groups, dn)
        outs[impl] = jax.jit(f)(x, w)
        grads[impl] = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
    # Entries are sums of C_in ~ N(0, 1) products (|y| up to ~15, the kernel gradient sums
    # B H W of them); float32 summation order alone differs by ~1e-6 relative.
    assert outs["dot"].shape == outs["native"].shape
    scale = float(jnp.max(jnp.abs(outs["native"])))
    np.testing.assert_allclose(outs["dot"], outs["native"], rtol=1e-5, atol=1e-5 * scale)
    for g_native, g_dot in zip(grads["native"], grads["dot"], strict=True):
        scale = float(jnp.max(jnp.abs(g_native)))
        np.testing.assert_allclose(g_dot, g_native, rtol=1e-5, atol=1e-5 * scale)


def test_dot_keeps_native_convs_where_the_kernel_is_not_pointwise():
    x = jnp.ones((1, 6, 6, 8))
    assert _conv_primitives("dot", x, jnp.ones((3, 3, 8, 4)), (1, 1), "SAME", None, 1, NHWC) == {
        "conv_general_dilated"
    }
    # A grouped 3x3 is split per group as for 'per_group', and stays a convolution.
    grouped = _conv_primitives("dot", x, jnp.ones((3, 3, 2, 8)), (1, 1), "SAME", None, 4, NHWC)
    assert grouped == {"conv_general_dilated"}
    # Padding that leaves no input is left to the convolution (an empty output).
    empty = _run("dot", x, jnp.ones((1, 1, 8, 4)), (1, 1), [(-6, 0), (0, 0)], None, 1, NHWC)
    assert empty.shape == (1, 0, 6, 4)


def test_dot_in_bfloat16_stays_bfloat16_and_matches_float32():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(1, 1, 16, 8)), jnp.float32) / 4
    want = _run("native", x, w, (2, 2), "SAME", None, 1, NHWC)
    got = _run("dot", x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (2, 2), "SAME", None, 1, NHWC)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0.05, atol=0.05)


PATCH_CASES = [
    # (input shape, kernel shape, strides, padding, dilation): dense convolutions, NHWC
    ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), "SAME", None),
    ((2, 9, 8, 5), (3, 3, 5, 4), (2, 2), "SAME", None),  # TF 'SAME' pads (0, 1) and (1, 1)
    ((1, 9, 9, 3), (3, 2, 3, 4), (2, 1), [(1, 2), (0, 1)], (2, 1)),
    ((2, 7, 6, 3), (3, 3, 3, 2), (1, 2), [(-1, 1), (2, 0)], None),  # negative padding crops
    ((2, 10, 10, 3), (5, 5, 3, 4), (2, 2), "VALID", (1, 2)),
]


@pytest.fixture
def patches_everywhere(monkeypatch):
    """'patches' on every dense k x k convolution, however small its output."""
    monkeypatch.setattr(conv, "PATCHES_MIN_POSITIONS", 1)


def _stablehlo_ops(f, *args) -> dict[str, int]:
    text = jax.jit(f).lower(*args).as_text()
    return {op: text.count(f"stablehlo.{op}") for op in ("convolution", "dot_general")}


@pytest.mark.parametrize("case", PATCH_CASES)
@pytest.mark.usefixtures("patches_everywhere")
def test_patches_kernel_gradient_is_a_matrix_product_with_native_numbers(case):
    x_shape, w_shape, strides, padding, dilation = case
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    ct = jnp.asarray(rng.normal(size=_run("native", x, w, *case[2:], 1, NHWC).shape), jnp.float32)
    results = {}
    for impl in ("native", "patches"):
        f = lambda x, w, impl=impl: _run(impl, x, w, strides, padding, dilation, 1, NHWC)
        y, vjp = jax.vjp(f, x, w)
        results[impl] = (y, *vjp(ct))
        # The kernel gradient alone: native transposes the convolution into a second
        # convolution; patches computes it as one dot_general of the input's patches.
        kernel_grad = lambda x, w, f=f: jax.vjp(lambda w: f(x, w), w)[1](ct)[0]
        ops = _stablehlo_ops(kernel_grad, x, w)
        assert ops == ({"convolution": 1, "dot_general": 0} if impl == "native" else
                       {"convolution": 0, "dot_general": 1}), ops  # fmt: skip
        # The input gradient alone stays a (transposed) native convolution for both.
        input_grad = lambda x, w, f=f: jax.vjp(lambda x: f(x, w), x)[1](ct)[0]
        assert _stablehlo_ops(input_grad, x, w) == {"convolution": 1, "dot_general": 0}
    for native, patches in zip(results["native"], results["patches"], strict=True):
        scale = float(jnp.max(jnp.abs(native)))
        np.testing.assert_allclose(patches, native, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.usefixtures("patches_everywhere")
def test_patches_supports_forward_mode_and_second_order_derivatives():
    x_shape, w_shape, strides, padding, dilation = PATCH_CASES[1]
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32) / 4
    dx = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    dw = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    f = {
        impl: lambda x, w, impl=impl: _run(impl, x, w, strides, padding, dilation, 1, NHWC)
        for impl in ("native", "patches")
    }
    tangents = {impl: jax.jvp(g, (x, w), (dx, dw))[1] for impl, g in f.items()}
    scale = float(jnp.max(jnp.abs(tangents["native"])))
    np.testing.assert_allclose(tangents["patches"], tangents["native"], atol=1e-6 * scale)
    loss = {impl: lambda w, g=g: jnp.sum(jnp.sin(g(x, w))) for impl, g in f.items()}
    hessian = {impl: jax.jit(jax.hessian(g))(w) for impl, g in loss.items()}
    assert hessian["patches"].shape == w_shape * 2
    scale = float(jnp.max(jnp.abs(hessian["native"])))
    np.testing.assert_allclose(hessian["patches"], hessian["native"], atol=1e-5 * scale)


@pytest.mark.usefixtures("patches_everywhere")
def test_patches_keeps_the_input_not_its_patches_for_the_backward_pass(capsys):
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 6))
    f = lambda x, w: jnp.sum(jnp.sin(_run("patches", x, w, (1, 1), "SAME", None, 1, NHWC)))
    print_saved_residuals(f, x, w)
    saved = capsys.readouterr().out.splitlines()
    # What the native convolution keeps too: x, w, and the loss's cos(y).
    assert [line.split(" ")[0] for line in saved] == [
        "f32[2,8,8,4]",
        "f32[3,3,4,6]",
        "f32[2,8,8,6]",
    ], saved  # no [2 8 8, 9 4] patches, no padded x


@pytest.mark.usefixtures("patches_everywhere")
def test_patches_in_bfloat16_stays_bfloat16_and_matches_float32():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 8, 4)), jnp.float32) / 8
    loss = lambda impl, x, w: jnp.sum(_run(impl, x, w, (1, 1), "SAME", None, 1, NHWC) ** 2)
    want = jax.grad(lambda w: loss("native", x, w))(w)
    got = jax.grad(lambda w: loss("patches", x.astype(jnp.bfloat16), w))(w.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        got.astype(jnp.float32), want, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(want)))
    )


def test_patches_keeps_native_kernel_gradients_below_32x32_output_positions():
    assert conv.PATCHES_MIN_POSITIONS == 32 * 32
    w = jnp.ones((3, 3, 2, 2))

    def kernel_grad_ops(size, stride):
        x = jnp.ones((1, size, size, 2))
        loss = lambda w: jnp.sum(_run("patches", x, w, (stride, stride), "SAME", None, 1, NHWC))
        return _stablehlo_ops(jax.grad(loss), w)

    matrix_product = {"convolution": 0, "dot_general": 1}
    assert kernel_grad_ops(32, 1) == matrix_product  # 32 x 32 outputs
    assert kernel_grad_ops(64, 2) == matrix_product  # 64 x 64 inputs, 32 x 32 outputs
    assert kernel_grad_ops(31, 1) == {"convolution": 1, "dot_general": 0}
    assert kernel_grad_ops(62, 2) == {"convolution": 1, "dot_general": 0}
    # The output size per image decides, whatever the batch (an empty one included).
    empty = lambda w: jnp.sum(
        _run("patches", jnp.ones((0, 32, 32, 2)), w, (1, 1), "SAME", None, 1, NHWC)
    )
    assert _stablehlo_ops(jax.grad(empty), w) == matrix_product
    assert float(jnp.abs(jax.grad(empty)(w)).max()) == 0.0
    # A grouped convolution is judged per group, by the same output size.
    x = jnp.ones((1, 32, 32, 4))
    loss = lambda w: jnp.sum(_run("patches", x, w, (1, 1), "SAME", None, 2, NHWC))
    assert _stablehlo_ops(jax.grad(loss), jnp.ones((3, 3, 2, 4))) == {
        "convolution": 0,
        "dot_general": 2,
    }
