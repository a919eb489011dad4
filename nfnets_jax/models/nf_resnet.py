"""NF-ResNets: Normalizer-Free pre-activation bottleneck ResNets (ResNet-26 ... ResNet-600).

Parameter paths match DeepMind's ``nf_resnet.NF_ResNet`` (``NF_ResNet/~/initial_conv``,
``NF_ResNet/~/nf_res_block[_k]/~/conv0|conv1|conv2|conv_shortcut``, ``NF_ResNet/~/linear``).

Fixes of the original's broken defaults (spec section 1.3):

* ``drop_rate=None`` raised ``KeyError`` (no variant has a dropout entry). Here it takes
  a per-variant default: 0.25 up to ResNet-101 and 0.3 from ResNet-152 on. These values
  are our choice (the release ships no NF-ResNet config); pass ``drop_rate`` to override.
* ``count_flops`` read a Squeeze-Excite module that exists only with ``use_se=True`` and
  forgot the stem max-pool's /2. Here it counts SE only when present and divides by 4 in
  the stem (7x7/2 conv, then 3x3/2 max-pool).

References:
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692.
    He, Zhang, Ren, Sun. Identity Mappings in Deep Residual Networks. arXiv:1603.05027.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models import signal_prop
from nfnets_jax.models.activations import get_activation
from nfnets_jax.models.conv import validate_conv_impl
from nfnets_jax.models.flops import count_conv_flops
from nfnets_jax.models.layers import SqueezeExcite, StochDepth, WSConv2D
from nfnets_jax.models.precision import compute_dtype_scope, resolve_compute_dtype
from nfnets_jax.models.validation import check_fraction, check_positive_int, check_positive_ints

#: Blocks per stage (He et al. 2016; ResNet-26/288/600 as in the NF papers) and our
#: default dropout per variant (see the module docstring).
nf_resnet_params: dict[str, dict[str, Any]] = {
    "ResNet26": {"depth": [2, 2, 2, 2], "drop_rate": 0.25},
    "ResNet50": {"depth": [3, 4, 6, 3], "drop_rate": 0.25},
    "ResNet101": {"depth": [3, 4, 23, 3], "drop_rate": 0.25},
    "ResNet152": {"depth": [3, 8, 36, 3], "drop_rate": 0.3},
    "ResNet200": {"depth": [3, 24, 36, 3], "drop_rate": 0.3},
    "ResNet288": {"depth": [24, 24, 24, 24], "drop_rate": 0.3},
    "ResNet600": {"depth": [50, 50, 50, 50], "drop_rate": 0.3},
}
#: Stage output channels before the width multiplier, and stage strides.
BASE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class NFResBlock(hk.Module):
    """Normalizer-Free pre-activation bottleneck block.

    Forward::

        a = act(x) * beta
        shortcut = conv_shortcut(a) if stride > 1 or in_ch != out_ch else x  # 1x1, strided
        h = conv2(act(conv1(act(conv0(a)))))                 # conv1: 3x3 with the stride
        h = 2 * se(h) * h                                    # only with use_se
        return stochdepth(h) * skip_gain * alpha + shortcut, res_avg_var(h)
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        bottleneck_ratio: float = 0.25,
        kernel_size: int = 3,
        stride: int = 1,
        beta: float = 1.0,
        alpha: float = 0.2,
        which_conv: type[WSConv2D] = WSConv2D,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        skipinit_gain: hk.initializers.Initializer = jnp.zeros,
        stochdepth_rate: float | None = None,
        use_se: bool = False,
        se_ratio: float = 0.25,
        name: str | None = None,
        *,
        conv_impl: str = "auto",
    ):
        """Builds the block (arguments as DeepMind's ``NFResBlock``).

        Args:
            in_ch: input channels.
            out_ch: output channels; the bottleneck has ``int(out_ch * bottleneck_ratio)``.
            bottleneck_ratio: bottleneck width ratio (0.25).
            kernel_size: size of ``conv1``.
            stride: stride of ``conv1`` and of the 1x1 projection shortcut.
            beta: multiplier on the activated input, ``1 / expected_std``.
            alpha: residual branch scale.
            which_conv: the convolution class (``WSConv2D``).
            activation: the (gamma-scaled) activation callable.
            skipinit_gain: initializer of the scalar ``skip_gain`` (zeros).
            stochdepth_rate: this block's rate; a module exists only if in (0, 1).
            use_se: add Squeeze-Excite (``2 * gate``) after ``conv2``.
            se_ratio: Squeeze-Excite hidden ratio.
            name: module name.
            conv_impl: convolution lowering (see :mod:`nfnets_jax.models.conv`; no grouped
                convs here: only ``'dot'`` and ``'patches'`` (``'auto'`` on CPU) change
                anything, the 1x1s and, for ``'patches'``, the 3x3 kernel gradients).
        """
        super().__init__(name=name)
        self.in_ch, self.out_ch = in_ch, out_ch
        self.stride, self.beta, self.alpha = stride, beta, alpha
        self.activation = activation
        self.skipinit_gain = skipinit_gain
        self.width = int(out_ch * bottleneck_ratio)
        if self.width < 1:
            raise ValueError(
                f"NF-ResNet block {self.module_name!r}: bottleneck width int({out_ch} x "
                f"{bottleneck_ratio}) is 0; use a larger width."
            )
        self.use_projection = stride > 1 or in_ch != out_ch
        conv = lambda ch, k, s, n: which_conv(ch, k, stride=s, name=n, conv_impl=conv_impl)
        self.conv0 = conv(self.width, 1, 1, "conv0")
        self.conv1 = conv(self.width, kernel_size, stride, "conv1")
        self.conv2 = conv(out_ch, 1, 1, "conv2")
        if self.use_projection:
            self.conv_shortcut = conv(out_ch, 1, stride, "conv_shortcut")
        self.use_se = use_se
        if use_se:
            self.se = SqueezeExcite(out_ch, out_ch, se_ratio, name="squeeze_excite")
        self.use_stochdepth = stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0
        if self.use_stochdepth:
            self.stoch_depth = StochDepth(stochdepth_rate, name="stoch_depth")

    def __call__(self, x: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
        out = self.activation(x) * self.beta
        shortcut = self.conv_shortcut(out) if self.use_projection else x
        out = self.conv0(out)
        out = self.conv1(self.activation(out))
        out = self.conv2(self.activation(out))
        if self.use_se:
            out = (self.se(out) * 2) * out
        res_avg_var = signal_prop.average_channel_variance(out)
        if self.use_stochdepth:
            out = self.stoch_depth(out, is_training)
        skip_gain = hk.get_parameter("skip_gain", (), jnp.float32, init=self.skipinit_gain)
        out = out * skip_gain.astype(out.dtype)
        return out * self.alpha + shortcut, res_avg_var

    def count_flops(self, h: float, w: float) -> float:
        """Analytic MACs of the block at input size ``h x w``."""
        flops = count_conv_flops(self.in_ch, self.conv0, h, w)
        flops += count_conv_flops(self.width, self.conv1, h, w)
        if self.use_projection:
            flops += count_conv_flops(self.in_ch, self.conv_shortcut, h, w)
        h, w = h / self.stride, w / self.stride
        flops += count_conv_flops(self.width, self.conv2, h, w)
        if self.use_se:
            flops += 2 * self.se.hidden_ch * self.out_ch
        return flops


class NFResNet(hk.Module):
    """Normalizer-Free ResNet (module name ``NF_ResNet``, as in DeepMind's release).

    Stem: 7x7/2 WS conv with ``16 * width`` channels, then a 3x3/2 SAME max-pool (no
    activation in between). Four stages of :class:`NFResBlock` with output channels
    ``[64, 128, 256, 512] * width`` and strides ``[1, 2, 2, 2]``. Head: activation,
    global mean pool, dropout, linear (N(0, 0.01) init). No final conv.

    ``__call__(x, is_training=True, return_metrics=False)`` returns ``{'pool', 'logits'}``
    (float32) plus the signal-propagation metrics when asked (``i = 0`` is the max-pool
    output).

    Example:
        ``jax.eval_shape`` runs ``init`` and ``apply`` abstractly: the full-size trees and
        shapes, nothing computed (call ``forward.init``/``forward.apply`` for values).
        NF-ResNet-50 has the parameter count of DeepMind's original:

        >>> forward = hk.transform(lambda x: NFResNet(1000, 'ResNet50')(x, is_training=False))
        >>> x = jnp.zeros((1, 224, 224, 3))
        >>> params = jax.eval_shape(forward.init, jax.random.key(0), x)
        >>> sum(p.size for p in jax.tree.leaves(params))
        25557048
        >>> jax.eval_shape(forward.apply, params, None, x)['logits'].shape
        (1, 1000)
    """

    variant_dict = nf_resnet_params

    def __init__(
        self,
        num_classes: int,
        variant: str = "ResNet50",
        width: int = 4,
        se_ratio: float = 0.25,
        alpha: float = 0.2,
        stochdepth_rate: float = 0.1,
        drop_rate: float | None = None,
        activation: str = "relu",
        fc_init: hk.initializers.Initializer | None = None,
        skipinit_gain: hk.initializers.Initializer = jnp.zeros,
        use_se: bool = False,
        name: str = "NF_ResNet",
        *,
        depth_pattern: Sequence[int] | None = None,
        compute_dtype: Any = None,
        conv_impl: str = "auto",
    ):
        """Builds the network.

        Args:
            num_classes: classifier outputs.
            variant: ``'ResNet26'``, ``'ResNet50'``, ``'ResNet101'``, ``'ResNet152'``,
                ``'ResNet200'``, ``'ResNet288'`` or ``'ResNet600'``.
            width: channel multiplier on ``[64, 128, 256, 512]`` (and the 16-ch stem).
            se_ratio: Squeeze-Excite hidden ratio (only with ``use_se``).
            alpha: residual branch scale.
            stochdepth_rate: stochastic-depth rate reached at the last block.
            drop_rate: dropout before the classifier; None takes the variant default.
            activation: a key of ``nfnets_jax.models.activations.nonlinearities``.
            fc_init: classifier weight initializer; default N(0, 0.01).
            skipinit_gain: initializer of each block's scalar ``skip_gain`` (zeros).
            use_se: add Squeeze-Excite (``2 * gate``) after ``conv2``.
            name: module name.
            depth_pattern: override of the variant's blocks per stage (beyond the
                original; for small experiments and tests).
            compute_dtype: activation dtype (None/float32, bfloat16, float16).
            conv_impl: convolution lowering (NF-ResNets have no grouped convs; ``'dot'``,
                ``'patches'`` and ``'auto'`` on CPU run their 1x1 convs as matrix products).
        """
        super().__init__(name=name)
        if variant not in nf_resnet_params:
            raise ValueError(
                f"Unknown NF-ResNet variant {variant!r}. Known variants: "
                f"{', '.join(nf_resnet_params)}."
            )
        self.variant = variant
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.width = check_positive_int("width", width)
        self.depth_pattern = check_positive_ints(
            "depth_pattern",
            nf_resnet_params[variant]["depth"] if depth_pattern is None else depth_pattern,
        )
        if len(self.depth_pattern) != len(STAGE_STRIDES):
            raise ValueError(
                f"depth_pattern needs {len(STAGE_STRIDES)} stages, got {self.depth_pattern}."
            )
        drop_rate = nf_resnet_params[variant]["drop_rate"] if drop_rate is None else drop_rate
        self.drop_rate = check_fraction("drop_rate", drop_rate)
        self.stochdepth_rate = check_fraction("stochdepth_rate", stochdepth_rate)
        self.activation = get_activation(activation)
        self.fc_init = fc_init or hk.initializers.RandomNormal(0.01, 0)
        self.use_se = use_se
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        validate_conv_impl(conv_impl)

        self.initial_conv = WSConv2D(
            16 * self.width, 7, stride=2, padding="SAME", name="initial_conv", conv_impl=conv_impl
        )
        self.block_specs = signal_prop.block_schedule(
            self.depth_pattern, STAGE_STRIDES, alpha, self.stochdepth_rate
        )
        self.blocks = []
        in_ch = 16 * self.width
        for spec in self.block_specs:
            out_ch = BASE_WIDTHS[spec.stage] * self.width
            self.blocks.append(
                NFResBlock(
                    in_ch,
                    out_ch,
                    stride=spec.stride,
                    beta=spec.beta,
                    alpha=alpha,
                    activation=self.activation,
                    skipinit_gain=skipinit_gain,
                    stochdepth_rate=spec.stochdepth_rate,
                    use_se=use_se,
                    se_ratio=se_ratio,
                    name="nf_res_block" if spec.index == 0 else f"nf_res_block_{spec.index}",
                    conv_impl=conv_impl,
                )
            )
            in_ch = out_ch
        self.fc = hk.Linear(self.num_classes, w_init=self.fc_init, with_bias=True, name="linear")

    def __call__(
        self, x: jax.Array, is_training: bool = True, return_metrics: bool = False
    ) -> dict[str, jax.Array]:
        outputs = {}
        with compute_dtype_scope(self.compute_dtype) as dtype:
            out = self.initial_conv(x.astype(dtype))
            out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
            if return_metrics:
                outputs.update(signal_prop.signal_metrics(out, 0))
            for i, block in enumerate(self.blocks):
                out, res_avg_var = block(out, is_training=is_training)
                if return_metrics:
                    outputs.update(signal_prop.signal_metrics(out, i + 1))
                    outputs[f"res_avg_var_{i}"] = res_avg_var
            pool = jnp.mean(self.activation(out), axis=(1, 2))
            outputs["pool"] = pool.astype(jnp.float32)
            if is_training and self.drop_rate > 0.0:
                pool = hk.dropout(hk.next_rng_key(), self.drop_rate, pool)
            outputs["logits"] = self.fc(pool).astype(jnp.float32)
        return outputs

    def count_flops(self, h: float, w: float) -> tuple[list[float], float]:
        """Analytic MACs at input size ``h x w``: ``(per-layer list, total)``."""
        flops = [count_conv_flops(3, self.initial_conv, h, w)]
        h, w = h / 4, w / 4  # 7x7/2 conv, then 3x3/2 max-pool.
        for block in self.blocks:
            flops.append(block.count_flops(h, w))
            h, w = h / block.stride, w / block.stride
        flops.append(self.blocks[-1].out_ch * self.num_classes)
        return flops, sum(flops)


#: DeepMind's spelling.
NF_ResNet = NFResNet
