"""Normalization layers for the normalized baselines: BatchNorm, GroupNorm, LayerNorm.

All three normalize channels-last activations with statistics computed in float32 (a
bfloat16 ``E[x^2] - E[x]^2`` loses every digit), then apply an optional per-channel
affine transform and cast back to the input dtype. Their parameters (``scale``,
``offset``) stay float32 under :func:`~nfnets_jax.models.precision.compute_dtype_scope`.

* :class:`BatchNorm` normalizes over (N, H, W) with the batch's statistics when training
  and with running averages (Haiku state ``mean``/``var``) when evaluating. With
  ``cross_replica_axis='data'`` the training statistics are averaged over every device of
  the mapped step, i.e. computed on the global batch. Outside a mapped function (the
  loop's ``jax.jit(init)``, ``jax.eval_shape``) that axis name is unbound; the layer then
  uses the local batch, which gives the same parameters and state shapes.
* :class:`GroupNorm` normalizes each example over (H, W, channels of one group), with
  ``G_eff = min(G, C)`` contiguous groups; it has no state and does not depend on the
  other examples. LayerNorm in a CNN is the ``G = 1`` case (normalize over H, W and C),
  not ``hk.LayerNorm`` over the channel axis only.

References:
    Ioffe, Szegedy. Batch Normalization. arXiv:1502.03167.
    Wu, He. Group Normalization. arXiv:1803.08494.
    Ba, Kiros, Hinton. Layer Normalization. arXiv:1607.06450.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

__all__ = ["BatchNorm", "GroupNorm", "axis_is_bound", "layer_norm"]

# Haiku's BatchNorm and GroupNorm default epsilon, also GluonCV's (baselines spec 2).
DEFAULT_EPS = 1e-5
# Running-average decay of the original's BN ResNet config (`decay_rate=0.9`, spec 4.2).
DEFAULT_DECAY = 0.9


def axis_is_bound(axis_name: str) -> bool:
    """Whether ``axis_name`` is a named axis of the enclosing ``pmap``/``shard_map``.

    Example:
        >>> axis_is_bound('data')
        False
    """
    try:
        jax.lax.axis_index(axis_name)
    except NameError:  # JAX raises NameError("unbound axis name ...") outside a mapping.
        return False
    return True


def _affine(
    module: hk.Module,
    y: jax.Array,
    channels: int,
    create_scale: bool,
    create_offset: bool,
    scale_init: hk.initializers.Initializer,
) -> jax.Array:
    if create_scale:
        y = y * hk.get_parameter("scale", (channels,), jnp.float32, init=scale_init)
    if create_offset:
        y = y + hk.get_parameter("offset", (channels,), jnp.float32, init=jnp.zeros)
    return y


class BatchNorm(hk.Module):
    """Batch normalization with float32 statistics and optional cross-device statistics.

    .. math::  y = \\gamma \\frac{x - \\mu_B}{\\sqrt{\\sigma_B^2 + \\epsilon}} + \\beta

    Training: :math:`\\mu_B, \\sigma_B^2` are the mean and biased variance over every axis
    but the last (averaged over ``cross_replica_axis`` when it is bound), and the running
    averages move as ``m <- d m + (1 - d) mu_B`` (same for ``var``). Evaluation uses the
    running averages, so an example's output does not depend on the rest of the batch.
    The state starts at ``mean = 0``, ``var = 1``.

    Example:
        >>> f = hk.transform_with_state(lambda x, t: BatchNorm()(x, is_training=t))
        >>> x = jnp.arange(8.0).reshape(4, 1, 1, 2)
        >>> params, state = f.init(None, x, True)
        >>> sorted(params['batch_norm']), sorted(state['batch_norm'])
        (['offset', 'scale'], ['mean', 'var'])
    """

    keeps_float32_params = True  # read by nfnets_jax.models.precision

    def __init__(
        self,
        decay_rate: float = DEFAULT_DECAY,
        eps: float = DEFAULT_EPS,
        create_scale: bool = True,
        create_offset: bool = True,
        scale_init: hk.initializers.Initializer | None = None,
        cross_replica_axis: str | None = None,
        name: str | None = None,
    ):
        """Builds the layer.

        Args:
            decay_rate: running-average decay ``d`` (0.9 in the original BN ResNet).
            eps: added to the variance.
            create_scale: learn a per-channel ``scale`` (gamma).
            create_offset: learn a per-channel ``offset`` (beta).
            scale_init: initializer of ``scale`` (ones; zeros for zero-gamma).
            cross_replica_axis: named device axis over which training statistics are
                averaged (``'data'`` in the training step), or None for per-device.
            name: module name.
        """
        super().__init__(name=name)
        if not 0.0 <= decay_rate < 1.0:
            raise ValueError(f"BatchNorm decay_rate must be in [0, 1), got {decay_rate}.")
        if eps <= 0:
            raise ValueError(f"BatchNorm eps must be > 0, got {eps}.")
        self.decay_rate, self.eps = float(decay_rate), float(eps)
        self.create_scale, self.create_offset = create_scale, create_offset
        self.scale_init = scale_init or jnp.ones
        self.cross_replica_axis = cross_replica_axis

    def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
        channels = x.shape[-1]
        x32 = x.astype(jnp.float32)
        running_mean = hk.get_state("mean", (channels,), jnp.float32, init=jnp.zeros)
        running_var = hk.get_state("var", (channels,), jnp.float32, init=jnp.ones)
        if is_training:
            axes = tuple(range(x.ndim - 1))
            axis = self.cross_replica_axis
            sync = axis is not None and axis_is_bound(axis)
            mean = jnp.mean(x32, axis=axes)
            if sync:
                mean = jax.lax.pmean(mean, axis)
            # Two passes (mean, then mean of squared deviations): stable in float32.
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if sync:
                var = jax.lax.pmean(var, axis)
            if not hk.running_init():
                d = self.decay_rate
                hk.set_state("mean", d * running_mean + (1.0 - d) * mean)
                hk.set_state("var", d * running_var + (1.0 - d) * var)
        else:
            mean, var = running_mean, running_var
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = _affine(self, y, channels, self.create_scale, self.create_offset, self.scale_init)
        return y.astype(x.dtype)


class GroupNorm(hk.Module):
    """Group normalization per example, float32 statistics, optional affine.

    Channels (last axis) are split into ``G_eff = min(groups, C)`` contiguous groups; each
    example and group is normalized with the mean and biased variance over (H, W,
    channels of the group):

    .. math::  y = \\gamma \\frac{x - \\mu_{n,g}}{\\sqrt{\\sigma_{n,g}^2 + \\epsilon}} + \\beta

    ``groups=1`` is LayerNorm over (H, W, C). There is no state and no train/eval
    difference; ``is_training`` is accepted for a uniform call convention.

    Example:
        >>> f = hk.transform(lambda x: GroupNorm(2, create_offset=False)(x))
        >>> x = jnp.arange(16.0).reshape(1, 2, 2, 4)
        >>> params = f.init(None, x)
        >>> list(params['group_norm']), f.apply(params, None, x).shape
        (['scale'], (1, 2, 2, 4))
    """

    keeps_float32_params = True  # read by nfnets_jax.models.precision

    def __init__(
        self,
        groups: int = 32,
        eps: float = DEFAULT_EPS,
        create_scale: bool = True,
        create_offset: bool = True,
        scale_init: hk.initializers.Initializer | None = None,
        name: str | None = None,
    ):
        """Builds the layer.

        Args:
            groups: requested number of groups ``G`` (32 for GN, 1 for LN); the layer
                uses ``min(G, C)``, which must divide the channel count.
            eps: added to the variance (1e-5; unrelated to Proxy Norm's 0.03).
            create_scale: learn a per-channel ``scale``.
            create_offset: learn a per-channel ``offset``.
            scale_init: initializer of ``scale`` (ones; zeros for zero-gamma).
            name: module name.
        """
        super().__init__(name=name)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"GroupNorm groups must be a positive integer, got {groups!r}.")
        if eps <= 0:
            raise ValueError(f"GroupNorm eps must be > 0, got {eps}.")
        self.groups, self.eps = groups, float(eps)
        self.create_scale, self.create_offset = create_scale, create_offset
        self.scale_init = scale_init or jnp.ones

    def __call__(self, x: jax.Array, is_training: bool = True) -> jax.Array:
        del is_training
        channels = x.shape[-1]
        groups = min(self.groups, channels)
        if channels % groups:
            raise ValueError(
                f"GroupNorm {self.module_name!r}: {channels} channels are not divisible into "
                f"{groups} groups; choose a group count that divides every layer's width."
            )
        x32 = x.astype(jnp.float32)
        grouped = x32.reshape(x.shape[:-1] + (groups, channels // groups))
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # spatial axes and the group members
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        y = ((grouped - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        y = _affine(self, y, channels, self.create_scale, self.create_offset, self.scale_init)
        return y.astype(x.dtype)


def layer_norm(
    eps: float = DEFAULT_EPS,
    create_scale: bool = True,
    create_offset: bool = True,
    scale_init: hk.initializers.Initializer | None = None,
    name: str | None = None,
) -> GroupNorm:
    """LayerNorm for CNNs: :class:`GroupNorm` with one group (over H, W and C).

    Example:
        >>> f = hk.transform(lambda x: layer_norm(create_scale=False, create_offset=False)(x))
        >>> y = f.apply({}, None, jnp.arange(8.0).reshape(1, 2, 2, 2))
        >>> round(float(y.mean()), 6), round(float(y.var()), 4)
        (0.0, 1.0)
    """
    return GroupNorm(1, eps, create_scale, create_offset, scale_init, name=name)
