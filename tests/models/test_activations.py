"""Gamma-scaled nonlinearities: exact constants, numpy references, unit variance on N(0,1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import activations

# Spec section 2.2: the code constants (bit-exact) and the float64 analytic 1/std(f(z)).
SPEC_GAMMAS = {
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "glu": 1.8484294414520264,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "log_softmax": 1.0002083778381348,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "soft_sign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}
SPEC_ANALYTIC = {
    "celu": 1.27084,
    "elu": 1.27084,
    "gelu": 1.70092,
    "leaky_relu": 1.70483,
    "log_sigmoid": 1.91913,
    "relu": 1.712859,
    "relu6": 1.71286,
    "selu": 1.00000,
    "sigmoid": 4.80131,
    "silu": 1.78719,
    "soft_sign": 2.33753,
    "softplus": 1.91913,
    "tanh": 1.59254,
}

_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# Independent float64 numpy references of the unscaled functions.
NUMPY_REFS = {
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "log_sigmoid": lambda x: -np.logaddexp(0.0, -x),
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "soft_sign": lambda x: x / (1 + np.abs(x)),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "tanh": np.tanh,
}


@functools.cache
def _gaussian_std(name: str) -> float:
    """std of f(z), z ~ N(0, 1), by trapezoidal quadrature on a fine float64 grid."""
    fn = NUMPY_REFS[name]
    z = np.linspace(-12.0, 12.0, 600_001)
    pdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    f = fn(z)
    mean = np.trapezoid(f * pdf, z)
    second = np.trapezoid(f * f * pdf, z)
    return float(np.sqrt(second - mean**2))


def test_constants_are_the_released_ones_exactly():
    assert activations.GAMMAS == SPEC_GAMMAS
    assert set(activations.nonlinearities) == set(SPEC_GAMMAS) | {"identity"}
    for name, gamma in SPEC_GAMMAS.items():
        assert activations.nonlinearities[name].gamma == gamma


@pytest.mark.parametrize("name", sorted(NUMPY_REFS))
def test_analytic_gamma_matches_spec_digits(name):
    analytic = 1.0 / _gaussian_std(name)
    digits = len(str(SPEC_ANALYTIC[name]).split(".")[1])
    assert round(analytic, digits) == pytest.approx(SPEC_ANALYTIC[name], abs=10 ** (-digits))


@pytest.mark.parametrize("name", sorted(NUMPY_REFS))
def test_scaled_activation_has_unit_variance_on_standard_normal(name):
    # The code constants deviate from 1/std by at most 0.09% (spec 2.2), so the variance of
    # gamma * f(z) is 1 within 0.2%.
    std = SPEC_GAMMAS[name] * _gaussian_std(name)
    assert abs(std**2 - 1.0) < 2e-3


@pytest.mark.parametrize("name", sorted(NUMPY_REFS))
def test_jax_activation_equals_numpy_reference(name):
    x = np.linspace(-8.0, 8.0, 4001).astype(np.float32)
    got = np.asarray(activations.get_activation(name)(jnp.asarray(x)))
    want = SPEC_GAMMAS[name] * NUMPY_REFS[name](x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def test_gelu_is_the_tanh_approximation():
    x = jnp.linspace(-3.0, 3.0, 61)
    exact = jax.nn.gelu(x, approximate=False) * SPEC_GAMMAS["gelu"]
    tanh_form = activations.get_activation("gelu")(x)
    assert float(jnp.max(jnp.abs(tanh_form - exact))) > 1e-4  # really the other form
    np.testing.assert_allclose(tanh_form, jax.nn.gelu(x) * SPEC_GAMMAS["gelu"], rtol=1e-6)


def test_glu_and_log_softmax_are_scaled():
    x = jnp.arange(8.0).reshape(2, 4) / 4
    np.testing.assert_allclose(
        activations.get_activation("glu")(x), jax.nn.glu(x) * SPEC_GAMMAS["glu"], rtol=1e-6
    )
    np.testing.assert_allclose(
        activations.get_activation("log_softmax")(x),
        jax.nn.log_softmax(x) * SPEC_GAMMAS["log_softmax"],
        rtol=1e-6,
    )


def test_identity_and_dtype_preservation():
    x = jnp.array([-1.5, 0.0, 2.0], jnp.bfloat16)
    assert activations.get_activation("identity")(x) is x
    assert activations.get_activation("gelu")(x).dtype == jnp.bfloat16


def test_unknown_activation_lists_names_and_points_swish_to_silu():
    with pytest.raises(ValueError, match="'silu'") as info:
        activations.get_activation("swish")
    assert "gelu" in str(info.value) and "relu" in str(info.value)
    with pytest.raises(ValueError, match="Known activations"):
        activations.get_activation("mish")
