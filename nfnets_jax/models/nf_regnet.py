"""NF-RegNets (B0-B8): Normalizer-Free inverted-bottleneck RegNets with SE.

Parameter paths match DeepMind's ``nf_regnet.NF_RegNet`` (``NF_RegNet/~/initial_conv``,
``NF_RegNet/~/nf_block[_k]/~/conv0|conv1|conv2|conv_shortcut|squeeze_excite``,
``NF_RegNet/~/final_conv``, ``NF_RegNet/~/linear``).

Fix of the original's broken default: ``activation='swish'`` is not a key of the
nonlinearity table and raised ``KeyError``; the default here is ``'silu'`` (the same
function, and what DeepMind's NF-RegNet experiment config passes).

References:
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692 (NF-RegNets, section 5 and Appendix).
    Radosavovic et al. Designing Network Design Spaces. arXiv:2003.13678.
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

# Base stage widths, depths, train/test resolution and dropout per variant (DeepMind's
# `base.nf_regnet_params`; spec section 1.2).
_B_TABLE = {
    "B0": ((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2),
    "B1": ((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
    "B2": ((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
    "B3": ((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
    "B4": ((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
    "B5": ((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
    "B6": ((88, 184, 376, 792), (3, 8, 16, 16), 448, 528, 0.5),
    "B7": ((96, 208, 416, 880), (4, 10, 19, 19), 512, 600, 0.5),
    "B8": ((104, 232, 456, 968), (4, 11, 22, 22), 600, 672, 0.5),
}
nf_regnet_params: dict[str, dict[str, Any]] = {
    name: {
        "width": list(widths),
        "depth": list(depths),
        "train_imsize": train,
        "test_imsize": test,
        "drop_rate": drop,
    }
    for name, (widths, depths, train, test, drop) in _B_TABLE.items()
}
#: Every stage opens with a stride-2 block (the stem conv is /2 too: /32 in total).
STAGE_STRIDES = (2, 2, 2, 2)
# Final conv width: int(1280 * last_width // 440), i.e. 1280 channels for the base B0
# width 440 (EfficientNet-B0's head width), scaled with the last stage.
_FINAL_CONV_BASE = (1280, 440)


class NFRegNetBlock(hk.Module):
    """NF-RegNet inverted bottleneck (module name ``nf_block``, as in DeepMind's code).

    ``width = group_size * (int(in_ch * expansion) // group_size)``. Forward::

        a = act(x) * beta
        shortcut = conv_shortcut(avg_pool(a)) if stride > 1 else (
                   conv_shortcut(a) if in_ch != out_ch else x)
        h = conv1(act(conv0(a)))          # 1x1 expand, grouped 3x3 (groups of group_size)
        h = 2 * se(h) * h                 # SE on the expanded width, before the activation
        h = conv2(act(h))                 # 1x1 project
        return stochdepth(h) * skip_gain * alpha + shortcut, res_avg_var(h)
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expansion: float = 2.25,
        se_ratio: float = 0.5,
        kernel_size: int = 3,
        group_size: int = 8,
        stride: int = 1,
        beta: float = 1.0,
        alpha: float = 0.2,
        which_conv: type[WSConv2D] = WSConv2D,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        stochdepth_rate: float | None = None,
        name: str | None = "nf_block",
        *,
        conv_impl: str = "auto",
    ):
        """Builds the block (arguments as DeepMind's NF-RegNet ``NFBlock``).

        Args:
            in_ch: input channels.
            out_ch: output channels.
            expansion: expansion of ``in_ch`` (1 for the network's first block).
            se_ratio: Squeeze-Excite hidden ratio of the expanded width.
            kernel_size: size of the grouped ``conv1``.
            group_size: channels per group of ``conv1`` (8).
            stride: stride of ``conv1`` and of the pooled shortcut.
            beta: multiplier on the activated input, ``1 / expected_std``.
            alpha: residual branch scale.
            which_conv: the convolution class (``WSConv2D``).
            activation: the (gamma-scaled) activation callable.
            stochdepth_rate: this block's rate; a module exists only if in (0, 1).
            name: module name (``nf_block`` / ``nf_block_{k}``).
            conv_impl: convolution lowering (see :mod:`nfnets_jax.models.conv`).
        """
        super().__init__(name=name)
        self.in_ch, self.out_ch = in_ch, out_ch
        self.stride, self.beta, self.alpha = stride, beta, alpha
        self.activation = activation
        self.width = group_size * (int(in_ch * expansion) // group_size)
        if self.width < 1:
            raise ValueError(
                f"NF-RegNet block {self.module_name!r}: expanded width int({in_ch} x "
                f"{expansion}) is smaller than group_size {group_size}; use a smaller "
                "group_size or a larger width."
            )
        self.groups = self.width // group_size
        self.use_projection = stride > 1 or in_ch != out_ch
        conv = lambda ch, k, s, g, n: which_conv(
            ch, k, stride=s, feature_group_count=g, name=n, conv_impl=conv_impl
        )
        self.conv0 = conv(self.width, 1, 1, 1, "conv0")
        self.conv1 = conv(self.width, kernel_size, stride, self.groups, "conv1")
        self.conv2 = conv(out_ch, 1, 1, 1, "conv2")
        if self.use_projection:
            self.conv_shortcut = conv(out_ch, 1, 1, 1, "conv_shortcut")
        self.se = SqueezeExcite(self.width, self.width, se_ratio, name="squeeze_excite")
        self.use_stochdepth = stochdepth_rate is not None and 0.0 < stochdepth_rate < 1.0
        if self.use_stochdepth:
            self.stoch_depth = StochDepth(stochdepth_rate, name="stoch_depth")

    def __call__(self, x: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
        out = self.activation(x) * self.beta
        if self.stride > 1:
            shortcut = hk.avg_pool(
                out, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="SAME"
            )
            if self.use_projection:
                shortcut = self.conv_shortcut(shortcut)
        elif self.use_projection:
            shortcut = self.conv_shortcut(out)
        else:
            shortcut = x
        out = self.conv0(out)
        out = self.conv1(self.activation(out))
        out = 2 * self.se(out) * out
        out = self.conv2(self.activation(out))
        res_avg_var = signal_prop.average_channel_variance(out)
        if self.use_stochdepth:
            out = self.stoch_depth(out, is_training)
        skip_gain = hk.get_parameter("skip_gain", (), jnp.float32, init=jnp.zeros)
        out = out * skip_gain.astype(out.dtype)
        return out * self.alpha + shortcut, res_avg_var

    def count_flops(self, h: float, w: float) -> float:
        """Analytic MACs of the block at input size ``h x w``."""
        flops = count_conv_flops(self.in_ch, self.conv0, h, w)
        flops += count_conv_flops(self.width, self.conv1, h, w)
        h, w = h / self.stride, w / self.stride
        flops += 2 * self.se.hidden_ch * self.width
        flops += count_conv_flops(self.width, self.conv2, h, w)
        if self.use_projection:
            flops += count_conv_flops(self.in_ch, self.conv_shortcut, h, w)
        return flops


class NFRegNet(hk.Module):
    """Normalizer-Free RegNet (module name ``NF_RegNet``, as in DeepMind's release).

    Stem: one 3x3/2 WS conv with ``int(width_pattern[0] * width)`` channels (no
    activation; the first block applies it). Four stages of :class:`NFRegNetBlock`, each
    opening with a stride-2 block; the network's very first block uses expansion 1. Head:
    1x1 ``final_conv`` to ``int(1280 * last_ch // 440)`` channels, activation, mean pool,
    dropout, linear (zero init).

    Example:
        ``jax.eval_shape`` runs ``init`` and ``apply`` abstractly: the full-size trees and
        shapes, nothing computed (call ``forward.init``/``forward.apply`` for values).
        NF-RegNet-B0 has the parameter count of DeepMind's original:

        >>> forward = hk.transform(lambda x: NFRegNet(1000, 'B0')(x, is_training=False))
        >>> x = jnp.zeros((1, 192, 192, 3))
        >>> params = jax.eval_shape(forward.init, jax.random.key(0), x)
        >>> sum(p.size for p in jax.tree.leaves(params))
        8595372
        >>> jax.eval_shape(forward.apply, params, None, x)['logits'].shape
        (1, 1000)
    """

    variant_dict = nf_regnet_params

    def __init__(
        self,
        num_classes: int,
        variant: str = "B0",
        width: float = 0.75,
        expansion: float = 2.25,
        group_size: int = 8,
        se_ratio: float = 0.5,
        alpha: float = 0.2,
        stochdepth_rate: float = 0.1,
        drop_rate: float | None = None,
        activation: str = "silu",
        fc_init: hk.initializers.Initializer | None = None,
        name: str = "NF_RegNet",
        *,
        depth_pattern: Sequence[int] | None = None,
        compute_dtype: Any = None,
        conv_impl: str = "auto",
    ):
        """Builds the network.

        Args:
            num_classes: classifier outputs.
            variant: ``'B0'`` .. ``'B8'``.
            width: multiplier on the variant's base widths (0.75 in the paper).
            expansion: inverted-bottleneck expansion of every block but the first (1).
            group_size: channels per group of the 3x3 convs.
            se_ratio: Squeeze-Excite hidden ratio (of the expanded width).
            alpha: residual branch scale.
            stochdepth_rate: stochastic-depth rate reached at the last block.
            drop_rate: dropout before the classifier; None takes the variant's value.
            activation: a key of ``nfnets_jax.models.activations.nonlinearities``;
                ``'silu'`` by default (the original's ``'swish'`` default crashed).
            fc_init: classifier weight initializer; default zeros.
            name: module name.
            depth_pattern: override of the variant's blocks per stage (beyond the
                original; for small experiments and tests).
            compute_dtype: activation dtype (None/float32, bfloat16, float16).
            conv_impl: convolution lowering, ``'auto'``, ``'native'``, ``'per_group'``,
                ``'dot'`` or ``'patches'`` (see :mod:`nfnets_jax.models.conv`).
        """
        super().__init__(name=name)
        if variant not in nf_regnet_params:
            raise ValueError(
                f"Unknown NF-RegNet variant {variant!r}. Known variants: "
                f"{', '.join(nf_regnet_params)}."
            )
        params = nf_regnet_params[variant]
        self.variant = variant
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.width_pattern = [int(ch * width) for ch in params["width"]]
        if min(self.width_pattern) < 1:
            raise ValueError(f"width={width} makes a stage width 0: {self.width_pattern}.")
        self.depth_pattern = check_positive_ints(
            "depth_pattern", params["depth"] if depth_pattern is None else depth_pattern
        )
        if len(self.depth_pattern) != len(STAGE_STRIDES):
            raise ValueError(
                f"depth_pattern needs {len(STAGE_STRIDES)} stages, got {self.depth_pattern}."
            )
        group_size = check_positive_int("group_size", group_size)
        if expansion <= 0:
            raise ValueError(f"expansion must be positive, got {expansion}.")
        drop_rate = params["drop_rate"] if drop_rate is None else drop_rate
        self.drop_rate = check_fraction("drop_rate", drop_rate)
        self.stochdepth_rate = check_fraction("stochdepth_rate", stochdepth_rate)
        self.activation = get_activation(activation)
        self.fc_init = fc_init or jnp.zeros
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        validate_conv_impl(conv_impl)

        in_ch = self.width_pattern[0]
        self.initial_conv = WSConv2D(
            in_ch, 3, stride=2, padding="SAME", name="initial_conv", conv_impl=conv_impl
        )
        self.block_specs = signal_prop.block_schedule(
            self.depth_pattern, STAGE_STRIDES, alpha, self.stochdepth_rate
        )
        self.blocks = []
        for spec in self.block_specs:
            out_ch = self.width_pattern[spec.stage]
            self.blocks.append(
                NFRegNetBlock(
                    in_ch,
                    out_ch,
                    expansion=1.0 if spec.index == 0 else expansion,
                    se_ratio=se_ratio,
                    group_size=group_size,
                    stride=spec.stride,
                    beta=spec.beta,
                    alpha=alpha,
                    activation=self.activation,
                    stochdepth_rate=spec.stochdepth_rate,
                    name="nf_block" if spec.index == 0 else f"nf_block_{spec.index}",
                    conv_impl=conv_impl,
                )
            )
            in_ch = out_ch
        final_ch = int(_FINAL_CONV_BASE[0] * in_ch // _FINAL_CONV_BASE[1])
        self.final_conv = WSConv2D(final_ch, 1, name="final_conv", conv_impl=conv_impl)
        self.fc = hk.Linear(self.num_classes, w_init=self.fc_init, with_bias=True, name="linear")

    def __call__(
        self, x: jax.Array, is_training: bool = True, return_metrics: bool = False
    ) -> dict[str, jax.Array]:
        outputs = {}
        with compute_dtype_scope(self.compute_dtype) as dtype:
            out = self.initial_conv(x.astype(dtype))
            if return_metrics:
                outputs.update(signal_prop.signal_metrics(out, 0))
            for i, block in enumerate(self.blocks):
                out, res_avg_var = block(out, is_training=is_training)
                if return_metrics:
                    outputs.update(signal_prop.signal_metrics(out, i + 1))
                    outputs[f"res_avg_var_{i}"] = res_avg_var
            out = self.activation(self.final_conv(out))
            pool = jnp.mean(out, axis=(1, 2))
            outputs["pool"] = pool.astype(jnp.float32)
            if is_training and self.drop_rate > 0.0:
                pool = hk.dropout(hk.next_rng_key(), self.drop_rate, pool)
            outputs["logits"] = self.fc(pool).astype(jnp.float32)
        return outputs

    def count_flops(self, h: float, w: float) -> tuple[list[float], float]:
        """Analytic MACs at input size ``h x w``: ``(per-layer list, total)``."""
        flops = [count_conv_flops(3, self.initial_conv, h, w)]
        h, w = h / 2, w / 2
        for block in self.blocks:
            flops.append(block.count_flops(h, w))
            h, w = h / block.stride, w / block.stride
        flops.append(count_conv_flops(self.blocks[-1].out_ch, self.final_conv, h, w))
        flops.append(self.final_conv.output_channels * self.num_classes)
        return flops, sum(flops)


#: DeepMind's spelling.
NF_RegNet = NFRegNet
