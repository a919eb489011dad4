"""Proxy Norm against the baselines spec (section 7, PN-1 ... PN-13).

Golden values are float64 calculations from the spec's definitions; an independent numpy
implementation (scipy's `ndtri` quantiles) gives the finite-difference reference.
"""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf, ndtri

from experiments.configs.resnet import RESNET_NO_DECAY_PATTERNS
from nfnets_jax.models import ProxyNormActivation, ResNet, get_plain_activation, proxy_quantiles
from nfnets_jax.models.proxy_norm import proxy_moments
from nfnets_jax.optim import masks
from tests.models.resnet_helpers import abstract_variables, count, transform

NUMPY_ACTS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
}
# PN-5 setting: one channel, ReLU.
PN5 = dict(beta=0.1, gamma=1.2, proxy_beta=0.05, proxy_gamma=-0.1)
PN5_Y = np.array([-1.0, 0.0, 0.5, 2.0])


def numpy_pn(y, beta, gamma, proxy_beta, proxy_gamma, act="relu", eps=0.03, n=200):
    """Independent float64 PN-Act (scipy quantiles)."""
    phi = NUMPY_ACTS[act]
    u = ndtri((np.arange(n) + 0.5) / n)
    p = phi(gamma * ((1.0 + proxy_gamma) * u + proxy_beta) + beta)
    mu, var = p.mean(), ((p - p.mean()) ** 2).mean()
    return (phi(gamma * y + beta) - mu) / np.sqrt(var + eps), mu, var


def pn_params(beta, gamma, proxy_beta, proxy_gamma, channels=1):
    full = lambda v: jnp.full((channels,), v, jnp.float32)
    return {
        "proxy_norm_activation": {
            "beta": full(beta),
            "gamma": full(gamma),
            "proxy_beta": full(proxy_beta),
            "proxy_gamma": full(proxy_gamma),
        }
    }


pn_forward = hk.without_apply_rng(
    hk.transform(lambda y, act="relu": ProxyNormActivation(act)(y, is_training=True))
)


def test_pn1_quantiles():
    u = proxy_quantiles()
    assert u.shape == (200,)
    assert u[0] == pytest.approx(-2.8070337683, abs=1e-9)
    assert u[199] == pytest.approx(2.8070337683, abs=1e-9)
    np.testing.assert_allclose(u, ndtri((np.arange(200) + 0.5) / 200), rtol=1e-12, atol=1e-12)
    u32 = u.astype(np.float32)
    assert abs(float(u32.mean())) < 1e-6
    assert float(np.var(u)) == pytest.approx(0.9935962236, rel=1e-6)


@pytest.mark.parametrize(
    "act, mean, var",
    [
        ("relu", 0.3984511734, 0.3380347742),
        ("silu", 0.2060483651, 0.3100036398),
        ("gelu", 0.2815947818, 0.3427053570),
    ],
)
def test_pn2_initial_statistics(act, mean, var):
    moments = hk.transform(lambda: ProxyNormActivation(act).moments(3))
    params = moments.init(None)
    assert all(
        float(v.sum()) == 0.0 for k, v in params["proxy_norm_activation"].items() if k != "gamma"
    )
    mu, sigma2 = moments.apply(params, None)
    np.testing.assert_allclose(mu, mean, rtol=1e-5)
    np.testing.assert_allclose(sigma2, var, rtol=1e-5)


def test_pn3_exact_normalization_on_proxy_inputs():
    setting = dict(beta=-0.2, gamma=0.8, proxy_beta=0.3, proxy_gamma=0.5)
    y = (1.0 + setting["proxy_gamma"]) * proxy_quantiles() + setting["proxy_beta"]
    z = pn_forward.apply(pn_params(**setting), jnp.asarray(y, jnp.float32).reshape(1, 200, 1, 1))
    z = np.asarray(z, np.float64).ravel()
    _, _, sigma2 = numpy_pn(0.0, **setting)
    assert sigma2 == pytest.approx(0.5060418916, rel=1e-9)
    assert abs(z.mean()) < 1e-6
    assert z.var() == pytest.approx(0.9440342248, rel=1e-5)
    assert z.var() == pytest.approx(sigma2 / (sigma2 + 0.03), rel=1e-5)


def test_pn4_gaussian_inputs_have_zero_mean_and_the_proxy_variance_ratio():
    betas = np.array([0.0, -1.0, -0.5, 0.5, 1.0, -1.0, 0.3, 1.0])
    gammas = np.array([1.0, 0.9, 0.5, 2.0, 0.5, 2.0, 1.5, 1.2])
    params = {
        "proxy_norm_activation": {
            "beta": jnp.asarray(betas, jnp.float32),
            "gamma": jnp.asarray(gammas, jnp.float32),
            "proxy_beta": jnp.zeros(8),
            "proxy_gamma": jnp.zeros(8),
        }
    }
    y = jax.random.normal(jax.random.key(0), (1_000_000, 1, 1, 8))
    z = np.asarray(pn_forward.apply(params, y), np.float64).reshape(-1, 8)
    ratios = np.array(
        [numpy_pn(0.0, b, g, 0.0, 0.0)[2] for b, g in zip(betas, gammas, strict=True)]
    )
    ratios = ratios / (ratios + 0.03)
    assert ratios[0] == pytest.approx(0.918486, abs=1e-6)  # not 1: by design
    assert np.all(np.abs(z.mean(0)) < 0.01)
    np.testing.assert_allclose(z.var(0), ratios, atol=0.04)


def test_pn5_golden_forward():
    expected = [-0.73190448, -0.58979957, 0.26282988, 2.82071822]
    # float64: the pure proxy-moment function (what the module calls) and the formula.
    with jax.enable_x64(True):
        p = {k: jnp.array([v], jnp.float64) for k, v in PN5.items()}
        u = jnp.asarray(proxy_quantiles(), jnp.float64)
        mu, var = proxy_moments(
            jax.nn.relu, p["beta"], p["gamma"], p["proxy_beta"], p["proxy_gamma"], u
        )
        z64 = (jax.nn.relu(p["gamma"] * PN5_Y + p["beta"]) - mu) / jnp.sqrt(var + 0.03)
        np.testing.assert_allclose(mu, 0.5150451802, rtol=1e-9)
        np.testing.assert_allclose(var, 0.4652013784, rtol=1e-9)
        np.testing.assert_allclose(z64, expected, rtol=1e-6)
    # float32: the Haiku module.
    z32 = pn_forward.apply(pn_params(**PN5), jnp.asarray(PN5_Y, jnp.float32).reshape(1, 4, 1, 1))
    np.testing.assert_allclose(np.ravel(z32), expected, rtol=1e-4)


def test_pn6_gradients_flow_through_the_proxy_statistics():
    y = jnp.asarray(PN5_Y, jnp.float32).reshape(1, 4, 1, 1)
    grads = jax.grad(lambda p: jnp.sum(pn_forward.apply(p, y)))(pn_params(**PN5))
    grads = {k: float(v[0]) for k, v in grads["proxy_norm_activation"].items()}
    expected = {
        "beta": 0.2737215,
        "gamma": 0.0661357,
        "proxy_beta": -4.7873109,
        "proxy_gamma": -4.3826876,
    }
    for key, value in expected.items():
        assert grads[key] == pytest.approx(value, rel=1e-4), key
    # Central finite differences of the independent float64 implementation.
    h = 1e-6
    for key in expected:
        up, down = dict(PN5), dict(PN5)
        up[key] += h
        down[key] -= h
        fd = (numpy_pn(PN5_Y, **up)[0].sum() - numpy_pn(PN5_Y, **down)[0].sum()) / (2 * h)
        assert grads[key] == pytest.approx(fd, rel=1e-4), key
    # Not the values a stop_gradient on the proxy moments would give.
    stopped = {"beta": 4.2631472, "gamma": 3.5526227, "proxy_beta": 0.0, "proxy_gamma": 0.0}
    for key, value in stopped.items():
        assert abs(grads[key] - value) > 0.1, key


def test_pn9_zero_gamma_and_beta_give_zeros_and_dead_relu_gradients():
    y = jax.random.normal(jax.random.key(1), (2, 3, 3, 4))
    for act, dead in (("relu", True), ("silu", False)):
        forward = hk.without_apply_rng(hk.transform(lambda y, a=act: ProxyNormActivation(a)(y)))
        params = pn_params(0.0, 0.0, 0.0, 0.0, channels=4)
        z = forward.apply(params, y)
        assert float(jnp.max(jnp.abs(z))) == 0.0
        grads = jax.grad(lambda p, f=forward: jnp.sum(f.apply(p, y) * y))(params)
        g = grads["proxy_norm_activation"]
        if dead:
            assert float(jnp.abs(g["gamma"]).max()) == 0.0
            assert float(jnp.abs(g["beta"]).max()) == 0.0
        else:
            assert float(jnp.abs(g["gamma"]).min()) > 0.0


def test_pn10_monotone_so_max_pooling_commutes():
    params = pn_params(0.3, 1.4, -0.2, 0.25, channels=1)
    y = jax.random.normal(jax.random.key(2), (2, 9, 9, 1))
    pool = functools.partial(
        hk.max_pool, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME"
    )
    moments = hk.transform(lambda: ProxyNormActivation("relu").moments(1))
    mu, var = moments.apply(params, None)
    after = pool(pn_forward.apply(params, y))
    act = jax.nn.relu(1.4 * y + 0.3)
    before = (pool(act) - mu) / jnp.sqrt(var + 0.03)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_pn11_precision():
    def f(y):
        module = ProxyNormActivation("relu")
        return module(y), module.moments(y.shape[-1])

    forward = hk.transform(f)
    y = jax.random.normal(jax.random.key(3), (2, 4, 4, 8)).astype(jnp.bfloat16)
    params = forward.init(None, y)
    z, (mu, var) = forward.apply(params, None, y)
    assert z.dtype == jnp.bfloat16
    assert mu.dtype == var.dtype == jnp.float32
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    reference = numpy_pn(np.asarray(y, np.float64), 0.0, 1.0, 0.0, 0.0)[0]
    np.testing.assert_allclose(np.asarray(z, np.float64), reference, rtol=1e-2, atol=1e-2)


def test_pn12_weight_decay_mask_from_paths():
    forward = transform(lambda: ResNet(1000, 50, "v2", "group_proxy"))
    params, _ = abstract_variables(forward, px=64, batch=1)
    decay = masks.mask_from_patterns(params, RESNET_NO_DECAY_PATTERNS, invert=True)
    leaves = list(
        zip(
            jax.tree.leaves(masks.tree_paths(params)),
            jax.tree.leaves(params),
            jax.tree.leaves(decay),
            strict=True,
        )
    )
    decayed = {path.rsplit("/", 1)[1] for path, _, on in leaves if on}
    kept = {path.rsplit("/", 1)[1] for path, _, on in leaves if not on}
    assert decayed == {"w", "proxy_beta", "proxy_gamma"}
    assert kept == {"beta", "gamma", "b"}
    num_decayed = sum(int(np.prod(leaf.shape)) for _, leaf, on in leaves if on)
    # All weights (25,503,912 - 1,000 fc bias) + 2 proxy parameters x 22,720 channels.
    assert num_decayed == 25_503_912 - 1_000 + 2 * 22_720


@pytest.mark.parametrize(
    "version, norm, expected",
    [
        ("v2", "batch", 25_549_352),
        ("v2", "group_proxy", 25_594_792),
        ("v2", "layer_proxy", 25_594_792),
        ("v1b", "group_proxy", 25_553_320),
        ("v1d", "group_proxy", 25_572_680),
    ],
)
def test_pn13_parameter_counts(version, norm, expected):
    forward = transform(lambda: ResNet(1000, 50, version, norm))
    params, state = abstract_variables(forward, px=64, batch=1)
    assert count(params) == expected
    assert (count(state) > 0) == (norm == "batch")


def test_pn_act_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown activation 'tanh'"):
        hk.transform(lambda: ProxyNormActivation("tanh")).init(None)
    with pytest.raises(ValueError, match="eps must be > 0"):
        hk.transform(lambda: ProxyNormActivation("relu", eps=0.0)).init(None)
    with pytest.raises(ValueError, match="num_proxy_samples"):
        proxy_quantiles(1)
    assert get_plain_activation("swish") is get_plain_activation("silu")


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_recompute_keeps_the_numbers_and_saves_only_the_input(activation):
    """Optional remat (spec 1.2): same values and gradients; the backward pass keeps only
    the bf16 input instead of float32 activation-sized intermediates."""
    y = jax.random.normal(jax.random.key(0), (2, 8, 8, 16)).astype(jnp.bfloat16)
    results = {}
    for recompute in (False, True):
        f = hk.transform(lambda y: ProxyNormActivation(activation, recompute=recompute)(y))
        params = f.init(None, y)
        params = jax.tree.map(lambda p: p + 0.1, params)  # away from the init
        out, vjp = jax.vjp(lambda p, y: f.apply(p, None, y), params, y)
        grads = vjp(jnp.ones_like(out))
        big = [leaf for leaf in jax.tree.leaves(vjp) if leaf.shape == y.shape]
        results[recompute] = out, grads, big
    (out0, grads0, saved0), (out1, grads1, saved1) = results[False], results[True]
    np.testing.assert_array_equal(np.asarray(out1, np.float32), np.asarray(out0, np.float32))
    for g1, g0 in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads0), strict=True):
        np.testing.assert_allclose(
            np.asarray(g1, np.float32), np.asarray(g0, np.float32), rtol=1e-6
        )
    assert any(s.dtype == jnp.float32 for s in saved0)  # float32 intermediates kept
    assert [s.dtype for s in saved1] == [jnp.bfloat16]  # only the input itself


@pytest.mark.slow
def test_resnet_proxy_recompute_remats_every_pn_act():
    x = jnp.zeros((2, 16, 16, 3))
    counts = {}
    for recompute in (False, True):
        forward = transform(
            lambda: ResNet(
                10,
                50,
                "v2",
                "group_proxy",
                width_multiplier=0.125,
                depth_pattern=(1, 1, 1, 1),
                proxy_recompute=recompute,
            )
        )
        params, state = abstract_variables(forward)
        loss = lambda p: forward.apply(p, state, None, x, True)[0]["logits"].sum()  # noqa: E731
        counts[recompute] = str(jax.make_jaxpr(jax.grad(loss))(params)).count("remat")
    # v2 with 4 bottlenecks: 3 PN-Acts per block + the head's = 13.
    assert counts == {False: 0, True: 13}
