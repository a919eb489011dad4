"""Proxy Normalization: a batch-independent activation step for GroupNorm/LayerNorm nets.

A normalized layer is split into an affine-free normalization (GN or LN, giving ``y``)
and an activation step. Proxy Norm (PN) replaces the activation step by PN-Act: the
activation output is re-centred and re-scaled with the moments of a *proxy* variable
``Y~_c ~ N(beta~_c, (1 + gamma~_c)^2)`` pushed through the same affine transform and
nonlinearity. For channel ``c``, with the 200 fixed standard-normal quantiles ``u_k``:

.. math::

    \\tilde y_{k,c} &= (1 + \\tilde\\gamma_c) u_k + \\tilde\\beta_c, \\qquad
    p_{k,c} = \\phi(\\gamma_c \\tilde y_{k,c} + \\beta_c) \\\\
    \\tilde\\mu_c &= \\tfrac1N \\textstyle\\sum_k p_{k,c}, \\qquad
    \\tilde\\sigma_c^2 = \\tfrac1N \\textstyle\\sum_k (p_{k,c} - \\tilde\\mu_c)^2 \\\\
    z &= \\frac{\\phi(\\gamma_c y + \\beta_c) - \\tilde\\mu_c}{\\sqrt{\\tilde\\sigma_c^2
        + \\epsilon_{PN}}}, \\qquad \\epsilon_{PN} = 0.03

The proxy moments are functions of the parameters only: they are recomputed in every
forward pass and differentiated by ordinary autodiff (no stored statistics, no
``stop_gradient``), which is mathematically what Graphcore's two-step optimizer wrapper
computes. PN keeps no state, uses no batch statistics and behaves identically in
training and evaluation.

At initialization (``beta = proxy_beta = proxy_gamma = 0``, ``gamma = 1``) a unit
Gaussian input gives outputs of mean about 0 and variance ``s/(s + 0.03)`` with ``s`` the
proxy variance (0.918 for ReLU), by design below 1.

References:
    Labatie, Masters, Eaton-Rosen, Luschi. Proxy-Normalizing Activations to Match Batch
    Normalization while Removing Batch Dependence. NeurIPS 2021, arXiv:2106.03743.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax.models.activations import get_plain_activation

__all__ = ["PROXY_EPS", "ProxyNorm", "ProxyNormActivation", "proxy_moments", "proxy_quantiles"]

# Defaults of Graphcore's reference (`--proxy-epsilon 0.03`, `get_rand(num_rand=200)`),
# baselines spec section 1.1.
PROXY_EPS = 0.03
NUM_PROXY_SAMPLES = 200


def proxy_quantiles(num: int = NUM_PROXY_SAMPLES) -> np.ndarray:
    """The fixed proxy samples ``u_k = Phi^{-1}((k + 1/2) / num)``, k = 0..num-1.

    Standard-normal quantiles at the cell midpoints (not random draws), in float64.

    Example:
        >>> u = proxy_quantiles()
        >>> u.shape, round(float(u[0]), 8), round(float(u.var()), 8)
        ((200,), -2.80703377, 0.99359622)
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num_proxy_samples must be an integer >= 2, got {num!r}.")
    normal = statistics.NormalDist()
    return np.array([normal.inv_cdf((k + 0.5) / num) for k in range(num)], np.float64)


def proxy_moments(
    activation: Callable[[jax.Array], jax.Array],
    beta: jax.Array,
    gamma: jax.Array,
    proxy_beta: jax.Array,
    proxy_gamma: jax.Array,
    quantiles: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Mean and population variance of ``phi(gamma * Y~ + beta)`` over the proxy samples.

    Args:
        activation: the nonlinearity ``phi``.
        beta, gamma, proxy_beta, proxy_gamma: per-channel parameters ``[C]``.
        quantiles: the proxy samples ``[N]``.

    Returns:
        ``(mu~, sigma~^2)``, each ``[C]``, in the parameters' dtype (float32 in models).

    Example:
        >>> z = jnp.zeros(1)
        >>> mu, var = proxy_moments(jax.nn.relu, z, z + 1, z, z, jnp.asarray(proxy_quantiles()))
        >>> round(float(mu[0]), 6), round(float(var[0]), 6)
        (0.398451, 0.338035)
    """
    proxy = (1.0 + proxy_gamma) * quantiles[:, None] + proxy_beta  # [N, C]
    p = activation(gamma * proxy + beta)
    mean = jnp.mean(p, axis=0)
    var = jnp.mean(jnp.square(p - mean), axis=0)
    return mean, var


class ProxyNormActivation(hk.Module):
    """PN-Act: ``(phi(gamma * y + beta) - mu~) / sqrt(sigma~^2 + eps)`` per channel.

    Parameters (channels last, float32, created on first call):

    ============= ====== ========================================= ============
    name          init   role                                      weight decay
    ============= ====== ========================================= ============
    ``beta``      0      shift of the pre-activation               no
    ``gamma``     1      scale of the pre-activation               no
    ``proxy_beta`` 0     mean of the proxy variable                yes
    ``proxy_gamma`` 0    proxy standard deviation is ``1 + .``     yes
    ============= ====== ========================================= ============

    The proxy moments and the subtraction run in float32; the output has the input's
    dtype (the compute dtype). No Haiku state is created.

    Example:
        >>> f = hk.transform(lambda y: ProxyNormActivation('relu')(y))
        >>> y = jnp.zeros((2, 4, 4, 8))
        >>> params = f.init(None, y)
        >>> sorted(params['proxy_norm_activation'])
        ['beta', 'gamma', 'proxy_beta', 'proxy_gamma']
    """

    keeps_float32_params = True  # read by nfnets_jax.models.precision

    def __init__(
        self,
        activation: str | Callable[[jax.Array], jax.Array] = "relu",
        eps: float = PROXY_EPS,
        num_proxy_samples: int = NUM_PROXY_SAMPLES,
        gamma_init: hk.initializers.Initializer | None = None,
        recompute: bool = False,
        name: str | None = None,
    ):
        """Builds the activation step.

        Args:
            activation: the nonlinearity ``phi``: a name (``'relu'``, ``'silu'``/
                ``'swish'``, ``'gelu'`` (exact erf form), ``'identity'``) or a callable.
            eps: ``epsilon_PN`` added to the proxy variance (0.03).
            num_proxy_samples: number of proxy quantiles (200).
            gamma_init: initializer of ``gamma`` (ones).
            recompute: recompute the elementwise PN-Act in the backward pass
                (``jax.checkpoint``) instead of keeping its float32 intermediates, which
                are two activation-sized float32 tensors per PN-Act: less memory, the
                same numbers, some extra elementwise work (baselines spec 1.2, optional;
                the reference's ``--proxy-recompute``).
            name: module name.
        """
        super().__init__(name=name)
        self.activation = (
            get_plain_activation(activation) if isinstance(activation, str) else activation
        )
        if not callable(self.activation):
            raise ValueError(f"activation must be a name or a callable, got {activation!r}.")
        if not eps > 0:
            raise ValueError(f"ProxyNormActivation eps must be > 0, got {eps}.")
        self.eps = float(eps)
        # A trace-time constant: float32 quantiles, identical on every call.
        self.quantiles = jnp.asarray(proxy_quantiles(num_proxy_samples), jnp.float32)
        self.gamma_init = gamma_init or jnp.ones
        self.recompute = bool(recompute)

    def parameters(self, channels: int) -> tuple[jax.Array, ...]:
        """Creates/reads ``(beta, gamma, proxy_beta, proxy_gamma)`` as float32 ``[C]``."""
        shape = (channels,)
        values = (
            hk.get_parameter("beta", shape, jnp.float32, init=jnp.zeros),
            hk.get_parameter("gamma", shape, jnp.float32, init=self.gamma_init),
            hk.get_parameter("proxy_beta", shape, jnp.float32, init=jnp.zeros),
            hk.get_parameter("proxy_gamma", shape, jnp.float32, init=jnp.zeros),
        )
        return tuple(v.astype(jnp.float32) for v in values)

    def moments(self, channels: int) -> tuple[jax.Array, jax.Array]:
        """The proxy ``(mu~, sigma~^2)`` of the current parameters, float32 ``[C]``."""
        return proxy_moments(self.activation, *self.parameters(channels), self.quantiles)

    def __call__(self, y: jax.Array, is_training: bool = True) -> jax.Array:
        """Applies PN-Act to the affine-free normalized ``y`` (channels last)."""
        del is_training  # PN is the same function in training and evaluation.
        channels = y.shape[-1]
        beta, gamma, proxy_beta, proxy_gamma = self.parameters(channels)
        mean, var = proxy_moments(
            self.activation, beta, gamma, proxy_beta, proxy_gamma, self.quantiles
        )
        apply = jax.checkpoint(self._apply) if self.recompute else self._apply
        return apply(y, beta, gamma, mean, var)

    def _apply(self, y, beta, gamma, mean, var):
        """The elementwise part: pure (no Haiku calls), so it can be rematerialised."""
        act = self.activation(gamma * y.astype(jnp.float32) + beta)
        z = (act - mean) * jax.lax.rsqrt(var + self.eps)
        return z.astype(y.dtype)


#: Short name.
ProxyNorm = ProxyNormActivation
