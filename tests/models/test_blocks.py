"""Residual blocks of the three families against float64 numpy re-implementations.

The order of operations inside a block (where beta, the activations, the stride, the
pooled shortcut, SE, skip_gain and alpha sit) is what makes DeepMind's checkpoints give
their accuracy; each block is recomputed here from the spec's description.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import NFBlock, NFRegNetBlock, NFResBlock, get_activation
from tests.models.conftest import random_params
from tests.models.test_activations import NUMPY_REFS, SPEC_GAMMAS
from tests.models.test_layers import np_conv, np_standardize

BETA, ALPHA = 0.9, 0.3


def act(name):
    return lambda x: SPEC_GAMMAS[name] * NUMPY_REFS[name](x)


def ws(p, x, stride=1, groups=1):
    w = np_standardize(np.asarray(p["w"], np.float64), np.asarray(p["gain"], np.float64))
    return np_conv(x, w, stride, groups) + np.asarray(p["bias"], np.float64)


def se(p, x):
    fc0, fc1 = p["squeeze_excite/~/linear"], p["squeeze_excite/~/linear_1"]
    h = x.mean(axis=(1, 2)) @ np.asarray(fc0["w"], np.float64) + np.asarray(fc0["b"])
    h = np.maximum(h, 0) @ np.asarray(fc1["w"], np.float64) + np.asarray(fc1["b"])
    return (1 / (1 + np.exp(-h)))[:, None, None]


def avg_pool_2x2(x):
    b, h, w, c = x.shape  # even sizes: SAME pooling has no padding
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def run_block(make_block, x):
    f = hk.transform(lambda x: make_block()(x, is_training=False))
    abstract = jax.eval_shape(f.init, jax.random.key(0), x)
    params = random_params(abstract, seed=1, skip_gain=0.7)
    out, res_var = jax.jit(f.apply)(params, None, x)
    # Strip the block's own name: {'nf_block/~/conv0': ...} -> {'conv0': ...}.
    sub = {}
    for module, leaves in params.items():
        name = module.split("/~/", 1)[1] if "/~/" in module else ""
        sub[name] = {k: np.asarray(v, np.float64) for k, v in leaves.items()}
    return np.asarray(out), float(res_var), sub


@pytest.mark.parametrize("in_ch,out_ch,stride", [(8, 16, 1), (16, 16, 1), (16, 32, 2)])
def test_nfnet_block(in_ch, out_ch, stride):
    x = np.random.default_rng(0).normal(size=(2, 8, 8, in_ch)).astype(np.float32)
    make = lambda: NFBlock(
        in_ch,
        out_ch,
        group_size=4,
        stride=stride,
        beta=BETA,
        alpha=ALPHA,
        activation=get_activation("gelu"),
        name="nf_block",
    )
    out, res_var, p = run_block(make, x)
    g, xd, groups = act("gelu"), x.astype(np.float64), (out_ch // 2) // 4
    a = g(xd) * BETA
    if stride > 1:
        shortcut = ws(p["conv_shortcut"], avg_pool_2x2(a))
    elif in_ch != out_ch:
        shortcut = ws(p["conv_shortcut"], a)
    else:
        shortcut = xd  # the raw input, not activated
    h = ws(p["conv0"], a)
    h = ws(p["conv1"], g(h), stride, groups)
    h = ws(p["conv1b"], g(h), 1, groups)
    h = ws(p["conv2"], g(h))
    h = 2 * se(p, h) * h
    want = h * p[""]["skip_gain"] * ALPHA + shortcut
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res_var, h.var(axis=(0, 1, 2)).mean(), rtol=1e-4)
    assert ("conv_shortcut" in p) == (stride > 1 or in_ch != out_ch)


@pytest.mark.parametrize("in_ch,out_ch,stride,use_se", [(8, 16, 1, False), (16, 32, 2, True)])
def test_nf_resnet_block(in_ch, out_ch, stride, use_se):
    x = np.random.default_rng(2).normal(size=(2, 8, 8, in_ch)).astype(np.float32)
    make = lambda: NFResBlock(
        in_ch,
        out_ch,
        stride=stride,
        beta=BETA,
        alpha=ALPHA,
        activation=get_activation("relu"),
        use_se=use_se,
        name="nf_res_block",
    )
    out, _, p = run_block(make, x)
    r, xd = act("relu"), x.astype(np.float64)
    a = r(xd) * BETA
    shortcut = ws(p["conv_shortcut"], a, stride)  # strided 1x1 conv, no pooling
    h = ws(p["conv0"], a)
    h = ws(p["conv1"], r(h), stride)
    h = ws(p["conv2"], r(h))
    if use_se:
        h = 2 * se(p, h) * h
    want = h * p[""]["skip_gain"] * ALPHA + shortcut
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert p["conv0"]["w"].shape == (1, 1, in_ch, out_ch // 4)


def test_nf_regnet_block():
    in_ch, out_ch = 8, 16
    x = np.random.default_rng(3).normal(size=(2, 8, 8, in_ch)).astype(np.float32)
    make = lambda: NFRegNetBlock(
        in_ch,
        out_ch,
        expansion=2.25,
        group_size=8,
        stride=2,
        beta=BETA,
        alpha=ALPHA,
        activation=get_activation("silu"),
    )
    out, _, p = run_block(make, x)
    s, xd = act("silu"), x.astype(np.float64)
    width = 8 * (int(in_ch * 2.25) // 8)
    assert p["conv0"]["w"].shape == (1, 1, in_ch, width) and width == 16
    a = s(xd) * BETA
    shortcut = ws(p["conv_shortcut"], avg_pool_2x2(a))
    h = ws(p["conv0"], a)
    h = ws(p["conv1"], s(h), 2, width // 8)
    h = 2 * se(p, h) * h  # SE on the expanded width, before the activation and conv2
    h = ws(p["conv2"], s(h))
    want = h * p[""]["skip_gain"] * ALPHA + shortcut
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_avg_pool_shortcut_counts_only_valid_elements_on_odd_sizes():
    """Haiku's SAME average pool divides by the valid count: a constant stays constant."""
    block = lambda: NFBlock(
        4,
        8,
        group_size=4,
        stride=2,
        beta=1.0,
        alpha=ALPHA,
        activation=get_activation("identity"),
        name="nf_block",
    )
    f = hk.transform(lambda x: block()(x, is_training=False))
    x = jnp.full((1, 7, 7, 4), 2.0)
    params = random_params(jax.eval_shape(f.init, jax.random.key(0), x), skip_gain=0.0)
    params["nf_block/~/conv_shortcut"] = {
        "w": jnp.asarray(np.random.default_rng(0).normal(size=(1, 1, 4, 8)), jnp.float32),
        "gain": jnp.ones(8),
        "bias": jnp.zeros(8),
    }
    out, _ = jax.jit(f.apply)(params, None, x)
    assert out.shape == (1, 4, 4, 8)
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1], out.shape), rtol=1e-6)
