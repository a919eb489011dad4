"""Gamma-scaled nonlinearities: ``gamma * f(x)`` with ``Var[gamma * f(z)] ~= 1`` for z ~ N(0, 1).

Normalizer-Free networks keep activations at unit variance at initialization without
batch statistics. A nonlinearity ``f`` applied to a unit Gaussian changes the variance,
so each ``f`` is multiplied by a constant

.. math::  \\gamma_f = 1 / \\sqrt{\\mathrm{Var}_{z \\sim N(0,1)}[f(z)]}

which restores unit variance. The constants below are the ones hard-coded in DeepMind's
release (empirical estimates that differ from the analytic value by up to ~0.1%); they
must be used bit-for-bit for the released checkpoints to give the published accuracy.

References:
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692, section 4.
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# The gamma of every nonlinearity, exactly as DeepMind's `base.nonlinearities` hard-codes
# it (spec section 2.2). GELU is JAX's default tanh approximation.
GAMMAS: dict[str, float] = {
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

# The unscaled functions. `jax.nn.gelu` defaults to approximate=True (the tanh form),
# which is what the constant above was estimated for.
_BASE_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "celu": jax.nn.celu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "glu": jax.nn.glu,
    "leaky_relu": jax.nn.leaky_relu,
    "log_sigmoid": jax.nn.log_sigmoid,
    "log_softmax": jax.nn.log_softmax,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "selu": jax.nn.selu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "soft_sign": jax.nn.soft_sign,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}


def _scaled(fn: Callable[[jax.Array], jax.Array], gamma: float) -> Callable:
    def activation(x: jax.Array) -> jax.Array:
        # Multiply by a Python float so the result keeps x's dtype (bf16 stays bf16).
        return fn(x) * gamma

    activation.__name__ = f"scaled_{getattr(fn, '__name__', 'fn')}"
    activation.gamma = gamma  # type: ignore[attr-defined]
    return activation


def _identity(x: jax.Array) -> jax.Array:
    return x


_identity.gamma = 1.0  # type: ignore[attr-defined]

#: Name -> gamma-scaled callable, the same keys as DeepMind's ``base.nonlinearities``.
nonlinearities: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": _identity,
    **{name: _scaled(fn, GAMMAS[name]) for name, fn in _BASE_FUNCTIONS.items()},
}


# GELU's exact erf form with the same gamma: what PyTorch ports (timm's GammaAct, which
# calls F.gelu) compute with DeepMind's constant.
_EXACT_GELU = _scaled(lambda x: jax.nn.gelu(x, approximate=False), GAMMAS["gelu"])


def get_activation(name: str, *, approximate_gelu: bool = True) -> Callable[[jax.Array], jax.Array]:
    """Returns the gamma-scaled nonlinearity called ``name``.

    Args:
        name: a key of :data:`nonlinearities`, e.g. ``'gelu'`` (NFNets), ``'relu'``
            (NF-ResNets) or ``'silu'`` (NF-RegNets).
        approximate_gelu: for ``'gelu'``, the tanh approximation (default, DeepMind's) or,
            if False, the exact erf form (PyTorch's ``F.gelu``, timm's); both times the same
            gamma. Other names ignore it.

    Returns:
        ``x -> gamma * f(x)`` (or the identity for ``'identity'``).

    Raises:
        ValueError: if ``name`` is unknown; the message lists the known names. The
            original NF-RegNet default ``'swish'`` is reported with a pointer to
            ``'silu'`` (the same function under the name JAX uses).

    Example:
        >>> act = get_activation('relu')
        >>> float(act(jnp.ones(())))
        1.7139588594436646
    """
    if not isinstance(name, str) or name not in nonlinearities:
        hint = " ('swish' is called 'silu' here, as in jax.nn)" if name == "swish" else ""
        raise ValueError(
            f"Unknown activation {name!r}{hint}. Known activations: "
            f"{', '.join(sorted(nonlinearities))}."
        )
    if name == "gelu" and not approximate_gelu:
        return _EXACT_GELU
    return nonlinearities[name]


# Unscaled nonlinearities of the normalized baselines (BN/GN/LN ResNets, Proxy Norm,
# SkipInit, Fixup): normalization, not a gamma, controls their variance. GELU is the
# exact erf form, the one the Proxy Norm constants of the baselines spec are computed for.
PLAIN_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": _identity,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def get_plain_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the unscaled nonlinearity called ``name`` (for normalized networks).

    Args:
        name: ``'relu'``, ``'silu'`` (alias ``'swish'``), ``'gelu'`` (exact erf form) or
            ``'identity'``.

    Returns:
        The function ``x -> f(x)``.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the known names.

    Example:
        >>> float(get_plain_activation('relu')(jnp.ones(())))
        1.0
    """
    if not isinstance(name, str) or name not in PLAIN_ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r} for a normalized network. Known activations: "
            f"{', '.join(sorted(PLAIN_ACTIVATIONS))}."
        )
    return PLAIN_ACTIVATIONS[name]
