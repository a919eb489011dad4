"""WSConv2D, SqueezeExcite and StochDepth against numpy closed forms."""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import SqueezeExcite, StochDepth, WSConv2D


def np_standardize(w, gain, eps=1e-4):
    """Scaled WS per output channel: gain * (w - mean) / sqrt(max(var * fan_in, eps))."""
    axes = tuple(range(w.ndim - 1))
    mean = w.mean(axis=axes, keepdims=True)
    var = w.var(axis=axes, keepdims=True)
    fan_in = np.prod(w.shape[:-1])
    return gain * (w - mean) / np.sqrt(np.maximum(var * fan_in, eps))


def tf_same_pads(size, kernel, stride):
    """TensorFlow 'SAME': output ceil(size / stride), extra padding goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def np_conv(x, w, stride, groups=1, pads=None):
    """Explicit NHWC x HWIO convolution with TF SAME padding (or explicit pads)."""
    b, h, wd, _ = x.shape
    kh, kw, ci, co = w.shape
    pads = pads or (tf_same_pads(h, kh, stride), tf_same_pads(wd, kw, stride))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((b, ho, wo, co))
    cog = co // groups
    for g in range(groups):
        xs = xp[..., g * ci : (g + 1) * ci]
        ws = w[..., g * cog : (g + 1) * cog]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i : i + stride * ho : stride, j : j + stride * wo : stride]
                out[..., g * cog : (g + 1) * cog] += np.einsum("bhwc,co->bhwo", patch, ws[i, j])
    return out


def apply_conv(params, x, **kwargs):
    f = hk.transform(lambda x: WSConv2D(name="conv", **kwargs)(x))
    return np.asarray(f.apply(params, None, x))


def random_conv_params(rng, kh, cin_per_group, cout):
    return {
        "conv": {
            "w": rng.normal(size=(kh, kh, cin_per_group, cout)).astype(np.float32),
            "gain": rng.uniform(0.5, 1.5, size=cout).astype(np.float32),
            "bias": rng.normal(size=cout).astype(np.float32),
        }
    }


def test_tf_same_padding_of_stride_2_is_zero_before_one_after():
    assert tf_same_pads(8, 3, 2) == (0, 1)
    assert tf_same_pads(7, 3, 2) == (1, 1)
    assert tf_same_pads(8, 3, 1) == (1, 1)


@pytest.mark.parametrize(
    "size,stride,groups,conv_impl,kernel",
    [
        (8, 2, 1, "auto", 3),
        (8, 2, 2, "per_group", 3),
        (8, 2, 2, "native", 3),
        (7, 1, 3, "per_group", 3),
        (7, 2, 1, "dot", 1),  # 1x1 as a matrix product, strided on an odd size
        (8, 1, 3, "dot", 1),  # a grouped 1x1: one product per group
        (64, 2, 3, "patches", 3),  # 32 x 32 outputs: kernel gradients from patches
    ],
)
def test_wsconv_matches_numpy_closed_form(size, stride, groups, conv_impl, kernel):
    rng = np.random.default_rng(0)
    cin, cout = 6, 6
    params = random_conv_params(rng, kernel, cin // groups, cout)
    x = rng.normal(size=(2, size, size, cin)).astype(np.float32)
    got = apply_conv(
        params,
        x,
        output_channels=cout,
        kernel_shape=kernel,
        stride=stride,
        feature_group_count=groups,
        conv_impl=conv_impl,
    )
    p = params["conv"]
    w_hat = np_standardize(p["w"].astype(np.float64), p["gain"])
    want = np_conv(x.astype(np.float64), w_hat, stride, groups) + p["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if stride == 2 and size % 2 == 0 and kernel == 3:
        # A symmetric (PyTorch padding=1) convolution is measurably different.
        sym = np_conv(x.astype(np.float64), w_hat, stride, groups, pads=((1, 1), (1, 1)))
        assert np.max(np.abs(sym + p["bias"] - got)) > 0.1


def ws_conv_params(var_times_fan_in, seed):
    """A 3x3 4->5 WSConv2D's parameters whose weights have exactly this var * fan_in.

    Returns ``(noise, w, gain, params)``: ``noise`` has zero mean and unit variance per
    output channel, ``w`` is it scaled to the variance.
    """
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(3, 3, 4, 5))
    noise = (noise - noise.mean(axis=(0, 1, 2))) / noise.std(axis=(0, 1, 2))
    w = (noise * math.sqrt(var_times_fan_in / (3 * 3 * 4))).astype(np.float32)
    gain = np.linspace(0.5, 2.0, 5).astype(np.float32)
    return noise, w, gain, {"conv": {"w": w, "gain": gain, "bias": np.zeros(5, np.float32)}}


def np_standardize_grads(w, gain, upstream, eps=1e-4):
    """Closed-form gradients of ``sum(upstream * np_standardize(w, gain))``.

    With ``c = w - mean`` and ``r = 1 / sqrt(max(sum c^2, eps))`` per output channel,
    ``dw = gain r [(G - mean G) - r^2 c sum(G c)]`` (the second term vanishes where the
    floor holds) and ``dgain = r sum(G c)``.
    """
    axes = tuple(range(w.ndim - 1))
    c = w - w.mean(axis=axes, keepdims=True)
    ss = (c * c).sum(axis=axes, keepdims=True)
    r = 1 / np.sqrt(np.maximum(ss, eps))
    gc = (upstream * c).sum(axis=axes, keepdims=True)
    centred = upstream - upstream.mean(axis=axes, keepdims=True)
    dw = gain * r * (centred - np.where(ss > eps, r * r, 0.0) * c * gc)
    return dw, (r * gc).reshape(-1)


@pytest.mark.parametrize(
    "kernel,cin,cout,var_times_fan_in",
    [(3, 4, 5, 2.0), (1, 16, 3, 0.5), (3, 4, 5, 1e-6)],
)
def test_ws_gradients_match_closed_form(kernel, cin, cout, var_times_fan_in):
    """The 2-D statistics view differentiates to the same numbers as the 4-D maths."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(kernel, kernel, cin, cout))
    w *= np.sqrt(var_times_fan_in / (kernel * kernel * cin)) / w.std(axis=(0, 1, 2))
    gain = rng.uniform(0.5, 1.5, size=cout)
    upstream = rng.normal(size=w.shape)
    f = hk.transform(lambda: WSConv2D(cout, kernel, name="conv").standardized_weight(cin))

    def loss(w, gain):
        params = {"conv": {"w": w, "gain": gain, "bias": jnp.zeros(cout)}}
        return jnp.sum(f.apply(params, None) * upstream.astype(np.float32))

    dw, dgain = jax.grad(loss, argnums=(0, 1))(w.astype(np.float32), gain.astype(np.float32))
    want_dw, want_dgain = np_standardize_grads(w, gain, upstream)
    scale = np.abs(want_dw).max()
    np.testing.assert_allclose(np.asarray(dw), want_dw, atol=2e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(dgain), want_dgain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("var_times_fan_in", [2e-4, 1e-6])
def test_ws_eps_is_a_floor_on_var_times_fan_in(var_times_fan_in):
    fan_in = 3 * 3 * 4
    noise, w, gain, params = ws_conv_params(var_times_fan_in, seed=1)
    f = hk.transform(lambda: WSConv2D(5, 3, name="conv").standardized_weight(4))
    got = np.asarray(f.apply(params, None))
    want = np_standardize(w.astype(np.float64), gain)
    np.testing.assert_allclose(got, want, rtol=2e-3)  # float32 variance of tiny values
    expected_scale = 1 / math.sqrt(max(var_times_fan_in, 1e-4))
    np.testing.assert_allclose(
        got / gain,
        noise * math.sqrt(var_times_fan_in / fan_in) * expected_scale,
        rtol=2e-3,
        atol=1e-6,
    )
    if var_times_fan_in > 1e-4:  # eps added instead of used as a floor would give this:
        added = 1 / math.sqrt(var_times_fan_in + 1e-4)
        assert not np.allclose(
            got / gain, noise * math.sqrt(var_times_fan_in / fan_in) * added, rtol=0.05
        )


def test_wsconv_parameters_names_shapes_and_always_a_bias():
    f = hk.transform(lambda x: WSConv2D(8, 3, feature_group_count=2, with_bias=False)(x))
    x = jnp.ones((1, 5, 5, 4), jnp.bfloat16)
    params = f.init(jax.random.key(0), x)
    assert list(params) == ["ws_conv2_d"]
    shapes = {k: (v.shape, v.dtype) for k, v in params["ws_conv2_d"].items()}
    assert shapes == {
        "w": ((3, 3, 2, 8), jnp.float32),
        "gain": ((8,), jnp.float32),
        "bias": ((8,), jnp.float32),
    }
    np.testing.assert_array_equal(params["ws_conv2_d"]["gain"], np.ones(8))
    np.testing.assert_array_equal(params["ws_conv2_d"]["bias"], np.zeros(8))
    assert f.apply(params, None, x).dtype == jnp.bfloat16


def test_wsconv_init_is_untruncated_normal_with_fan_in_scale():
    f = hk.transform(lambda x: WSConv2D(256, 3)(x))
    w = np.asarray(f.init(jax.random.key(0), jnp.ones((1, 3, 3, 64)))["ws_conv2_d"]["w"])
    assert abs(w.std() - 1 / math.sqrt(3 * 3 * 64)) < 0.01 / math.sqrt(576)
    assert np.abs(w).max() > 2.5 / math.sqrt(576)  # beyond a 2-sigma truncation


def test_wsconv_rejects_bad_inputs():
    with pytest.raises(ValueError, match="divisible by feature_group_count=4"):
        hk.transform(lambda x: WSConv2D(8, 3, feature_group_count=4)(x)).init(
            jax.random.key(0), jnp.ones((1, 4, 4, 6))
        )
    with pytest.raises(ValueError, match="rank-4"):
        hk.transform(lambda x: WSConv2D(8, 3)(x)).init(jax.random.key(0), jnp.ones((4, 4, 6)))
    with pytest.raises(ValueError, match="conv_impl"):
        hk.transform(lambda: WSConv2D(8, 3, conv_impl="fast")).init(jax.random.key(0))


def test_squeeze_excite_matches_numpy_and_sizes_hidden_layer():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 5, 8)).astype(np.float32)
    f = hk.transform(lambda x: SqueezeExcite(8, 6, se_ratio=0.5)(x))
    params = f.init(jax.random.key(0), x)
    assert sorted(params) == ["squeeze_excite/~/linear", "squeeze_excite/~/linear_1"]
    fc0, fc1 = params["squeeze_excite/~/linear"], params["squeeze_excite/~/linear_1"]
    assert fc0["w"].shape == (8, 4) and fc1["w"].shape == (4, 6)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    fc0, fc1 = params["squeeze_excite/~/linear"], params["squeeze_excite/~/linear_1"]
    h = x.mean(axis=(1, 2)) @ np.asarray(fc0["w"]) + np.asarray(fc0["b"])
    h = np.maximum(h, 0) @ np.asarray(fc1["w"]) + np.asarray(fc1["b"])
    want = (1 / (1 + np.exp(-h)))[:, None, None]
    got = f.apply(params, None, x)
    assert got.shape == (3, 1, 1, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5)

    build = lambda **kw: hk.transform(lambda: SqueezeExcite(3, 3, **kw).hidden_ch).apply({}, None)
    assert build(se_ratio=0.25) == 1  # max(1, int(0.75))
    assert build(se_ratio=None, hidden_ch=7) == 7
    with pytest.raises(ValueError, match="se_ratio or hidden_ch"):
        build(se_ratio=None)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_stochdepth_mask_is_floor_keep_plus_uniform_unscaled(dtype):
    rate, batch = 0.3, 4000
    x = jnp.asarray(np.random.default_rng(3).normal(size=(batch, 2, 2, 3)) + 5.0, dtype)
    f = hk.transform(lambda x, t: StochDepth(rate)(x, t))
    rng = jax.random.key(42)
    out = f.apply({}, rng, x, True)
    key = hk.transform(lambda: hk.next_rng_key()).apply({}, rng)  # StochDepth's key
    u = jax.random.uniform(key, (batch, 1, 1, 1), dtype=dtype)
    np.testing.assert_array_equal(out, x * jnp.floor((1.0 - rate) + u))
    kept = np.asarray(jnp.all(out == x, axis=(1, 2, 3)))
    dropped = np.asarray(jnp.all(out == 0, axis=(1, 2, 3)))
    assert np.all(kept ^ dropped)  # each example whole: kept unscaled or zero
    assert abs(kept.mean() - (1 - rate)) < 4 * math.sqrt(rate * (1 - rate) / batch)
    assert out.dtype == dtype
    # Evaluation is the identity, without keep-prob scaling, and needs no RNG.
    np.testing.assert_array_equal(f.apply({}, None, x, False), x)


def test_stochdepth_scale_by_keep_and_validation():
    x = jnp.ones((64, 1, 1, 1))
    out = hk.transform(lambda x: StochDepth(0.5, scale_by_keep=True)(x, True)).apply(
        {}, jax.random.key(0), x
    )
    assert set(np.unique(np.asarray(out))) <= {0.0, 2.0}
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        hk.transform(lambda: StochDepth(1.0)).apply({}, None)


@pytest.mark.parametrize("var_times_fan_in", [2e-4, 1e-6])
def test_ws_eps_mode_add_is_timms_scaled_std_conv(var_times_fan_in):
    """eps_mode='add': g (w - mean) / sqrt(fan_in * (var + eps)), timm's formula."""
    fan_in = 3 * 3 * 4
    noise, w, gain, params = ws_conv_params(var_times_fan_in, seed=2)
    f = hk.transform(
        lambda: WSConv2D(5, 3, eps=1e-5, eps_mode="add", name="conv").standardized_weight(4)
    )
    got = np.asarray(f.apply(params, None))
    w64 = w.astype(np.float64)
    mean, var = w64.mean(axis=(0, 1, 2)), w64.var(axis=(0, 1, 2))
    want = gain * (w64 - mean) / np.sqrt(fan_in * (var + 1e-5))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    # Not the floor: for small weights the two differ by far more than rounding.
    floor = np.asarray(
        hk.transform(lambda: WSConv2D(5, 3, eps=1e-5, name="conv").standardized_weight(4)).apply(
            params, None
        )
    )
    assert np.max(np.abs(floor - got)) > 0.05 * np.max(np.abs(got))


def test_ws_eps_mode_is_checked():
    with pytest.raises(ValueError, match="eps_mode must be 'floor' or 'add'"):
        hk.transform(lambda: WSConv2D(5, 3, eps_mode="clip")).init(None)
