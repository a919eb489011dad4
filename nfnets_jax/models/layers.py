"""The Normalizer-Free building blocks: WSConv2D, SqueezeExcite and StochDepth.

Parameter names and layouts match DeepMind's release (``w``/``gain``/``bias`` for WS convs,
HWIO kernels; ``w``/``b`` for linears) so released checkpoints load unchanged.

References:
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692 (Scaled Weight Standardization, section 4).
    Qiao et al. Micro-Batch Training with Batch-Channel Normalization and Weight
    Standardization. arXiv:1903.10520.
    Hu, Shen, Sun. Squeeze-and-Excitation Networks. arXiv:1709.01507.
    Huang et al. Deep Networks with Stochastic Depth. arXiv:1603.09382.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nfnets_jax.models.conv import grouped_conv, validate_conv_impl

# Floor on var * fan_in in the weight standardization (DeepMind's `WSConv2D`, spec 2.1).
WS_EPS = 1e-4


class WSConv2D(hk.Conv2D):
    """2D convolution with Scaled Weight Standardization, a learnable gain and a bias.

    Every output channel's kernel is standardized over its fan-in (H, W, I) before use:

    .. math::

        \\hat W = g \\, \\frac{W - \\mu}{\\sqrt{\\max(N \\sigma^2, \\epsilon)}}

    with :math:`\\mu, \\sigma^2` the mean and biased variance over (H, W, I), :math:`N =
    k_h k_w C_{in}/G` the fan-in, :math:`g` the per-channel ``gain`` and :math:`\\epsilon =
    10^{-4}` a floor on :math:`N\\sigma^2` (not added to it). The convolution uses
    TensorFlow/XLA ``'SAME'`` padding (stride 2 on an even input pads 0 before and 1 after).

    The standardization always runs in float32 on the float32 parameters; the standardized
    kernel is then cast to the input's dtype, so bfloat16 activations keep float32 weights
    statistics.

    Like DeepMind's class, every WSConv2D has a ``bias``: ``with_bias`` is accepted for
    signature compatibility with ``hk.Conv2D`` and ignored (released checkpoints have a
    bias on every WS conv).

    Example:
        >>> conv = hk.transform(lambda x: WSConv2D(16, 3, stride=2)(x))
        >>> params = conv.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
        >>> sorted(params['ws_conv2_d'])
        ['bias', 'gain', 'w']
    """

    #: Read by `nfnets_jax.models.precision`: this module's parameters stay float32 on use.
    keeps_float32_params = True

    def __init__(
        self,
        output_channels: int,
        kernel_shape: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        rate: int | Sequence[int] = 1,
        padding: str | Sequence[tuple[int, int]] = "SAME",
        with_bias: bool = True,
        w_init: hk.initializers.Initializer | None = None,
        b_init: hk.initializers.Initializer | None = None,
        data_format: str = "NHWC",
        mask: jax.Array | None = None,
        feature_group_count: int = 1,
        name: str | None = None,
        *,
        eps: float = WS_EPS,
        eps_mode: str = "floor",
        conv_impl: str = "auto",
    ):
        """Builds the convolution.

        Args:
            output_channels: number of output channels.
            kernel_shape: kernel size, an int or (kh, kw).
            stride: stride, an int or (sh, sw).
            rate: kernel dilation.
            padding: ``'SAME'`` (default), ``'VALID'`` or explicit (low, high) pairs.
            with_bias: ignored (see the class docstring).
            w_init: kernel initializer; default ``VarianceScaling(1, 'fan_in',
                'normal')``, an untruncated normal with stddev ``1/sqrt(fan_in)``.
            b_init: bias initializer; default zeros.
            data_format: ``'NHWC'`` (default) or ``'NCHW'``.
            mask: not supported (must be None).
            feature_group_count: number of groups (``C_in`` and ``C_out`` divisible by it).
            name: module name.
            eps: with ``eps_mode='floor'`` (DeepMind's), a floor on ``var * fan_in``;
                with ``'add'`` (timm's ``ScaledStdConv2d``), added to ``var``: the kernel
                is then ``g (W - mu) / sqrt(N (var + eps))``.
            eps_mode: ``'floor'`` (default) or ``'add'``.
            conv_impl: how the convolution runs: ``'auto'``, ``'native'``,
                ``'per_group'``, ``'dot'`` or ``'patches'`` (see
                :mod:`nfnets_jax.models.conv`).
        """
        del with_bias  # Always has a bias, as DeepMind's WSConv2D.
        if mask is not None:
            raise ValueError("WSConv2D does not support a weight mask; pass mask=None.")
        if int(feature_group_count) < 1:
            raise ValueError(f"feature_group_count must be >= 1, got {feature_group_count}.")
        super().__init__(
            output_channels=output_channels,
            kernel_shape=kernel_shape,
            stride=stride,
            rate=rate,
            padding=padding,
            with_bias=True,
            w_init=w_init or hk.initializers.VarianceScaling(1.0, "fan_in", "normal"),
            b_init=b_init,
            data_format=data_format,
            feature_group_count=int(feature_group_count),
            name=name,
        )
        if eps_mode not in ("floor", "add"):
            raise ValueError(f"eps_mode must be 'floor' or 'add', got {eps_mode!r}.")
        self.eps = eps
        self.eps_mode = eps_mode
        self.conv_impl = validate_conv_impl(conv_impl)

    def standardized_weight(self, in_channels: int) -> jax.Array:
        """Creates/reads ``w`` and ``gain`` and returns the standardized float32 kernel."""
        groups = self.feature_group_count
        shape = (*self.kernel_shape, in_channels // groups, self.output_channels)
        w = hk.get_parameter("w", shape, jnp.float32, init=self.w_init)
        gain = hk.get_parameter("gain", (self.output_channels,), w.dtype, init=jnp.ones)
        w, gain = w.astype(jnp.float32), gain.astype(jnp.float32)
        # Statistics over a [fan_in, C_out] view: XLA:CPU differentiates the reductions of
        # this 2-D form several times faster than those over (H, W, I) of the 4-D kernel.
        fan_in = int(np.prod(shape[:-1]))
        w2 = w.reshape(fan_in, self.output_channels)
        mean = jnp.mean(w2, axis=0)
        var = jnp.var(w2, axis=0)
        if self.eps_mode == "floor":
            scale = lax.rsqrt(jnp.maximum(var * float(fan_in), self.eps)) * gain
        else:
            scale = lax.rsqrt((var + self.eps) * float(fan_in)) * gain
        return (w2 * scale - mean * scale).reshape(shape)

    def __call__(self, inputs: jax.Array, *, precision=None) -> jax.Array:
        del precision
        if inputs.ndim != 4:
            raise ValueError(
                f"WSConv2D {self.module_name!r} expects a rank-4 {self.data_format} input, got "
                f"shape {inputs.shape}."
            )
        in_channels = inputs.shape[self.channel_index]
        if in_channels % self.feature_group_count:
            raise ValueError(
                f"WSConv2D {self.module_name!r}: {in_channels} input channels are not "
                f"divisible by feature_group_count={self.feature_group_count}."
            )
        weight = self.standardized_weight(in_channels).astype(inputs.dtype)
        out = grouped_conv(
            inputs,
            weight,
            window_strides=self.stride,
            padding=self.padding,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=self.dimension_numbers,
            feature_group_count=self.feature_group_count,
            conv_impl=self.conv_impl,
        )
        bias = hk.get_parameter("bias", (self.output_channels,), jnp.float32, init=self.b_init)
        bias_shape = [1] * out.ndim
        bias_shape[self.channel_index] = self.output_channels
        return out + bias.astype(out.dtype).reshape(bias_shape)


class SqueezeExcite(hk.Module):
    """Squeeze-and-Excite gate: ``sigmoid(fc1(act(fc0(mean_HW(x)))))``.

    Returns the gate only, shaped ``[B, 1, 1, out_ch]``; the caller applies it. All NF
    models apply ``2 * gate * x`` (the factor 2 keeps the signal variance at
    initialization, where the gate is about 0.5). The hidden activation is plain unscaled
    ReLU, as in DeepMind's code (the paper's text says GELU).

    Example:
        >>> se = hk.transform(lambda x: SqueezeExcite(8, 8, se_ratio=0.5)(x))
        >>> x = jnp.ones((2, 4, 4, 8))
        >>> se.apply(se.init(jax.random.key(0), x), None, x).shape
        (2, 1, 1, 8)
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        se_ratio: float | None = 0.5,
        hidden_ch: int | None = None,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        name: str | None = None,
    ):
        """Builds the two linear layers (named ``linear`` and ``linear_1``).

        Args:
            in_ch: channels of the input.
            out_ch: channels of the gate.
            se_ratio: hidden width as a fraction of ``in_ch``: ``max(1, int(in_ch *
                se_ratio))``. If None, ``hidden_ch`` must be given.
            hidden_ch: explicit hidden width, used when ``se_ratio`` is None.
            activation: hidden activation (plain ReLU by default).
            name: module name.
        """
        super().__init__(name=name)
        self.in_ch, self.out_ch = in_ch, out_ch
        if se_ratio is None:
            if hidden_ch is None:
                raise ValueError("SqueezeExcite needs se_ratio or hidden_ch; both are None.")
            self.hidden_ch = int(hidden_ch)
        else:
            self.hidden_ch = max(1, int(in_ch * se_ratio))
        self.activation = activation
        self.fc0 = hk.Linear(self.hidden_ch, with_bias=True, name="linear")
        self.fc1 = hk.Linear(self.out_ch, with_bias=True, name="linear_1")

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.mean(x, axis=(1, 2))  # NHWC: squeeze H and W.
        h = self.fc1(self.activation(self.fc0(h)))
        return jax.nn.sigmoid(h)[:, None, None]


class StochDepth(hk.Module):
    """Batchwise stochastic depth: drops a whole residual branch per example.

    In training, draws ``r ~ U[0, 1)`` of shape ``[B, 1, 1, 1]`` in the input's dtype and
    multiplies by ``floor(keep_prob + r)`` (1 with probability ``keep_prob = 1 - rate``).
    By default (``scale_by_keep=False``, what every NF model uses) the kept branches are
    **not** divided by ``keep_prob``, and evaluation is the identity.

    Example:
        >>> sd = hk.transform(lambda x, t: StochDepth(0.5)(x, t))
        >>> x = jnp.ones((4, 1, 1, 1))
        >>> bool(jnp.all(sd.apply({}, None, x, False) == x))
        True
    """

    def __init__(self, drop_rate: float, scale_by_keep: bool = False, name: str | None = None):
        super().__init__(name=name)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"StochDepth drop_rate must be in [0, 1), got {drop_rate}.")
        self.drop_rate = drop_rate
        self.scale_by_keep = scale_by_keep

    def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
        if not is_training:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        r = jax.random.uniform(hk.next_rng_key(), shape, dtype=x.dtype)
        keep_prob = 1.0 - self.drop_rate
        mask = jnp.floor(keep_prob + r)
        if self.scale_by_keep:
            x = x / keep_prob
        return x * mask
