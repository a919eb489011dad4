"""NFNets (F0-F7, F0+-F7+): Normalizer-Free SE-ResNeXt-D style networks.

Constructor, call and parameter tree match DeepMind's ``nfnets.nfnet.NFNet`` so code
written for it runs unchanged and the released ``F0..F6_haiku.npz`` weights load:

>>> net = hk.transform(lambda x: NFNet(num_classes=1000, variant='F0')(x, is_training=False))

References:
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171 (Table 1, section 4 and Appendix C).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models import signal_prop
from nfnets_jax.models.activations import get_activation
from nfnets_jax.models.conv import validate_conv_impl
from nfnets_jax.models.flops import count_conv_flops
from nfnets_jax.models.layers import WS_EPS, SqueezeExcite, StochDepth, WSConv2D
from nfnets_jax.models.precision import compute_dtype_scope, resolve_compute_dtype
from nfnets_jax.models.validation import (
    check_fraction,
    check_positive_int,
    check_positive_ints,
    per_stage,
)

# Stage widths of the F and F+ series (arXiv:2102.06171, Table 1 / Appendix C; spec 1.1).
_F_WIDTHS = (256, 512, 1536, 1536)
_F_PLUS_WIDTHS = (384, 768, 2048, 2048)
# Depth, train/test resolution, RandAugment level and dropout per variant (Table 1).
_F_TABLE = {
    "F0": ((1, 2, 6, 3), 192, 256, "405", 0.2),
    "F1": ((2, 4, 12, 6), 224, 320, "410", 0.3),
    "F2": ((3, 6, 18, 9), 256, 352, "410", 0.4),
    "F3": ((4, 8, 24, 12), 320, 416, "415", 0.4),
    "F4": ((5, 10, 30, 15), 384, 512, "415", 0.5),
    "F5": ((6, 12, 36, 18), 416, 544, "415", 0.5),
    "F6": ((7, 14, 42, 21), 448, 576, "415", 0.5),
    "F7": ((8, 16, 48, 24), 480, 608, "415", 0.5),
}

#: Variant hyperparameters, keyed like DeepMind's ``base.nfnet_params``. Keys not listed
#: default to expansion 0.5, group_width 128 and big_width True on every stage.
nfnet_params: dict[str, dict[str, Any]] = {}
for _name, (_depth, _train, _test, _ra, _drop) in _F_TABLE.items():
    for _suffix, _widths in (("", _F_WIDTHS), ("+", _F_PLUS_WIDTHS)):
        nfnet_params[_name + _suffix] = {
            "width": list(_widths),
            "depth": list(_depth),
            "train_imsize": _train,
            "test_imsize": _test,
            "RA_level": _ra,
            "drop_rate": _drop,
        }

#: Stride of each stage's first block (the stem already downsamples by 4).
STAGE_STRIDES = (1, 2, 2, 2)
#: Output channels of the first three stem convs; the fourth has width_pattern[0] // 2.
STEM_WIDTHS = (16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The two numerical details in which ports of NFNets differ (no parameter changes).

    Attributes:
        ws_eps: the weight standardization's epsilon.
        ws_eps_mode: ``'floor'``: ``max(N var, eps)`` (DeepMind's ``WSConv2D``) or
            ``'add'``: ``N (var + eps)`` (timm's ``ScaledStdConv2dSame``), see
            :class:`~nfnets_jax.models.layers.WSConv2D`.
        approximate_gelu: GELU's tanh approximation (``jax.nn.gelu``'s default,
            DeepMind's) or the exact erf form (PyTorch's ``F.gelu``, timm's).
    """

    ws_eps: float
    ws_eps_mode: str
    approximate_gelu: bool


#: ``numerics=`` choices of :class:`NFNet`. ``'timm'`` is timm's ``dm_nfnet_f*`` port
#: (timm 1.0.31, ``timm/models/nfnet.py``: ``NfCfg.std_conv_eps = 1e-5`` added to the
#: variance by ``ScaledStdConv2dSame``; ``GammaAct('gelu')`` calls ``F.gelu``, the erf
#: form, times the same gamma 1.7015043497085571). Everything else (TF 'SAME' padding,
#: stem, strides, the avg-pool shortcut, SE, skip gains, head) is the same in both.
NUMERICS: dict[str, Numerics] = {
    "deepmind": Numerics(ws_eps=WS_EPS, ws_eps_mode="floor", approximate_gelu=True),
    "timm": Numerics(ws_eps=1e-5, ws_eps_mode="add", approximate_gelu=False),
}


def get_numerics(name: str) -> Numerics:
    """The :class:`Numerics` called ``name`` (``'deepmind'`` or ``'timm'``).

    Raises:
        ValueError: an unknown name (the message lists the known ones).

    Example:
        >>> get_numerics('timm').ws_eps_mode
        'add'
    """
    if not isinstance(name, str) or name not in NUMERICS:
        raise ValueError(f"Unknown numerics {name!r}; expected one of {', '.join(NUMERICS)}.")
    return NUMERICS[name]


class NFBlock(hk.Module):
    """NFNet bottleneck block: 1x1, grouped 3x3 (x2), 1x1, SE, skip gain, alpha, shortcut.

    Forward (exact order of DeepMind's ``NFBlock``)::

        a = act(x) * beta
        shortcut = conv_shortcut(avg_pool(a)) if stride > 1 else (
                   conv_shortcut(a) if in_ch != out_ch else x)
        h = conv2(act(conv1b(act(conv1(act(conv0(a)))))))   # conv1 carries the stride
        h = 2 * se(h) * h
        h = stochdepth(h) * skip_gain                         # skip_gain starts at 0
        return h * alpha + shortcut, res_avg_var(h before stochdepth)
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expansion: float = 0.5,
        se_ratio: float = 0.5,
        kernel_shape: int = 3,
        group_size: int = 128,
        stride: int = 1,
        beta: float = 1.0,
        alpha: float = 0.2,
        which_conv: type[WSConv2D] = WSConv2D,
        activation: Any = jax.nn.gelu,
        big_width: bool = True,
        use_two_convs: bool = True,
        stochdepth_rate: float | None = None,
        name: str | None = None,
        *,
        conv_impl: str = "auto",
    ):
        """Builds the block (arguments as DeepMind's ``NFBlock``).

        Args:
            in_ch: input channels.
            out_ch: output channels.
            expansion: bottleneck ratio (0.5 in every F variant).
            se_ratio: Squeeze-Excite hidden ratio of ``out_ch``.
            kernel_shape: size of the grouped convs.
            group_size: channels per group of the grouped convs (128).
            stride: stride of ``conv1`` and of the pooled shortcut.
            beta: multiplier on the activated input, ``1 / expected_std``.
            alpha: residual branch scale.
            which_conv: the convolution class (``WSConv2D``).
            activation: the (gamma-scaled) activation callable.
            big_width: bottleneck width from ``out_ch`` (True) or ``in_ch``.
            use_two_convs: include ``conv1b``.
            stochdepth_rate: this block's rate; a module exists only if in (0, 1).
            name: module name (``nf_block`` / ``nf_block_{k}`` in NFNets).
            conv_impl: convolution lowering (see :mod:`nfnets_jax.models.conv`).

        Example:
            >>> block = hk.transform(lambda x: NFBlock(16, 16, group_size=8)(x, False))
            >>> x = jnp.ones((1, 8, 8, 16))
            >>> out, _ = block.apply(block.init(jax.random.key(0), x), None, x)
            >>> out.shape, bool((out == x).all())  # skip_gain starts at 0: an identity
            ((1, 8, 8, 16), True)
        """
        super().__init__(name=name)
        self.in_ch, self.out_ch = in_ch, out_ch
        self.expansion, self.se_ratio = expansion, se_ratio
        self.kernel_shape, self.stride = kernel_shape, stride
        self.beta, self.alpha = beta, alpha
        self.activation = activation
        self.big_width, self.use_two_convs = big_width, use_two_convs
        # The bottleneck width comes from the output channels (big_width) or the input
        # channels, rounded down to a whole number of groups of `group_size` channels.
        width = int((out_ch if big_width else in_ch) * expansion)
        self.groups = width // group_size
        if self.groups < 1:
            raise ValueError(
                f"NFNet block {self.module_name!r}: bottleneck width {width} = int("
                f"{out_ch if big_width else in_ch} x expansion {expansion}) is smaller than "
                f"group_width {group_size}, which gives 0 groups. Use group_width <= {width} "
                "or a larger width_pattern/expansion."
            )
        self.width = group_size * self.groups
        self.use_projection = stride > 1 or in_ch != out_ch

        conv = lambda ch, k, s, g, n: which_conv(
            ch, k, stride=s, padding="SAME", feature_group_count=g, name=n, conv_impl=conv_impl
        )
        self.conv0 = conv(self.width, 1, 1, 1, "conv0")
        self.conv1 = conv(self.width, kernel_shape, stride, self.groups, "conv1")
        if use_two_convs:
            self.conv1b = conv(self.width, kernel_shape, 1, self.groups, "conv1b")
        self.conv2 = conv(out_ch, 1, 1, 1, "conv2")
        if self.use_projection:
            self.conv_shortcut = conv(out_ch, 1, 1, 1, "conv_shortcut")
        self.se = SqueezeExcite(out_ch, out_ch, se_ratio, name="squeeze_excite")
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
        if self.use_two_convs:
            out = self.conv1b(self.activation(out))
        out = self.conv2(self.activation(out))
        out = (self.se(out) * 2) * out
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
        if self.use_two_convs:
            flops += count_conv_flops(self.width, self.conv1b, h, w)
        if self.use_projection:
            flops += count_conv_flops(self.in_ch, self.conv_shortcut, h, w)
        flops += count_conv_flops(self.width, self.conv2, h, w)
        flops += 2 * self.se.hidden_ch * self.out_ch  # SE: two linears, no spatial extent.
        return flops


class NFNet(hk.Module):
    """Normalizer-Free Network (NFNet-F0..F7, F0+..F7+).

    ``__call__(x, is_training=True, return_metrics=False)`` takes NHWC images and returns
    ``{'pool': [B, C], 'logits': [B, num_classes]}`` (both float32, whatever the compute
    dtype), plus with ``return_metrics`` the signal-propagation statistics
    ``avg_sq_mean_{i}``, ``avg_var_{i}`` (``i = 0`` stem, ``i = k`` after block ``k - 1``)
    and ``res_avg_var_{k}`` of every block. Softmax is never applied.

    Example:
        ``jax.eval_shape`` runs ``init`` and ``apply`` abstractly: the full-size trees and
        shapes, nothing computed (call ``forward.init``/``forward.apply`` for values).
        NFNet-F0 has as many parameters as DeepMind's released ``F0_haiku.npz``:

        >>> forward = hk.transform(
        ...     lambda x: NFNet(num_classes=1000, variant='F0')(x, is_training=False))
        >>> x = jnp.zeros((2, 192, 192, 3))
        >>> params = jax.eval_shape(forward.init, jax.random.key(0), x)
        >>> sum(p.size for p in jax.tree.leaves(params))
        71489284
        >>> jax.eval_shape(forward.apply, params, None, x)['logits'].shape
        (2, 1000)
    """

    variant_dict = nfnet_params

    def __init__(
        self,
        num_classes: int,
        variant: str = "F0",
        width: float = 1.0,
        se_ratio: float = 0.5,
        alpha: float = 0.2,
        stochdepth_rate: float = 0.1,
        drop_rate: float | None = None,
        activation: str = "gelu",
        fc_init: hk.initializers.Initializer | None = None,
        final_conv_mult: float | None = 2,
        final_conv_ch: int | None = None,
        use_two_convs: bool = True,
        name: str = "NFNet",
        *,
        width_pattern: Sequence[int] | None = None,
        depth_pattern: Sequence[int] | None = None,
        expansion: float | Sequence[float] | None = None,
        group_width: int | Sequence[int] | None = None,
        big_width: bool | Sequence[bool] | None = None,
        stem_widths: Sequence[int] = STEM_WIDTHS,
        compute_dtype: Any = None,
        conv_impl: str = "auto",
        numerics: str = "deepmind",
    ):
        """Builds the network.

        Args:
            num_classes: classifier outputs.
            variant: ``'F0'`` .. ``'F7'`` or ``'F0+'`` .. ``'F7+'`` (see ``nfnet_params``).
            width: multiplier on the stage widths (not on the stem).
            se_ratio: Squeeze-Excite hidden width as a fraction of the block output.
            alpha: residual branch scale.
            stochdepth_rate: stochastic-depth rate reached at the last block (block ``i``
                of ``N`` gets ``rate * i / N``). DeepMind's training config uses 0.25.
            drop_rate: dropout before the classifier; None takes the variant's value.
            activation: a key of ``nfnets_jax.models.activations.nonlinearities``.
            fc_init: classifier weight initializer; default N(0, 0.01) untruncated.
            final_conv_mult: final 1x1 conv width as a multiple of the last stage width.
            final_conv_ch: final conv width, used when ``final_conv_mult`` is None.
            use_two_convs: whether blocks have the second grouped 3x3 conv (``conv1b``).
            name: module name (parameter paths start with it).
            width_pattern: override of the variant's stage widths (beyond the original).
            depth_pattern: override of the variant's blocks per stage (1 to 4 stages).
            expansion: bottleneck ratio, one value or one per stage (default 0.5).
            group_width: channels per group of the 3x3 convs, one or per stage (128).
            big_width: bottleneck from output (True) or input channels, one or per stage.
            stem_widths: output channels of the first three stem convs (16, 32, 64).
            compute_dtype: activation dtype (None/float32, bfloat16, float16); parameters
                are stored in float32 either way.
            conv_impl: convolution lowering, ``'auto'``, ``'native'``, ``'per_group'``,
                ``'dot'`` or ``'patches'`` (see :mod:`nfnets_jax.models.conv`).
            numerics: ``'deepmind'`` (default: DeepMind's weight-standardization floor
                and tanh GELU, what their released weights were trained with) or
                ``'timm'`` (timm's ``dm_nfnet_f*``: eps added to the variance, erf GELU),
                see :data:`NUMERICS`. The parameter tree is the same either way.
        """
        super().__init__(name=name)
        if variant not in nfnet_params:
            raise ValueError(
                f"Unknown NFNet variant {variant!r}. Known variants: {', '.join(nfnet_params)}."
            )
        params = nfnet_params[variant]
        self.variant = variant
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.width_pattern = check_positive_ints(
            "width_pattern", params["width"] if width_pattern is None else width_pattern
        )
        self.depth_pattern = check_positive_ints(
            "depth_pattern", params["depth"] if depth_pattern is None else depth_pattern
        )
        n_stages = len(self.depth_pattern)
        if not 1 <= n_stages <= len(STAGE_STRIDES) or len(self.width_pattern) != n_stages:
            raise ValueError(
                f"width_pattern {self.width_pattern} and depth_pattern {self.depth_pattern} "
                f"must have the same length, between 1 and {len(STAGE_STRIDES)} stages."
            )
        self.expansion = per_stage("expansion", expansion, params.get("expansion", 0.5), n_stages)
        self.group_width = per_stage(
            "group_width", group_width, params.get("group_width", 128), n_stages
        )
        self.big_width = per_stage("big_width", big_width, params.get("big_width", True), n_stages)
        check_positive_ints("group_width", self.group_width)
        if any(e <= 0 for e in self.expansion):
            raise ValueError(f"expansion must be positive, got {self.expansion}.")
        self.stem_widths = check_positive_ints("stem_widths", stem_widths)
        if len(self.stem_widths) != 3:
            raise ValueError(f"stem_widths needs 3 values (stem_conv0..2), got {stem_widths}.")
        self.width = width
        self.se_ratio = check_fraction("se_ratio", se_ratio, allow_one=True)
        self.alpha = alpha
        self.stochdepth_rate = check_fraction("stochdepth_rate", stochdepth_rate)
        drop_rate = params["drop_rate"] if drop_rate is None else drop_rate
        self.drop_rate = check_fraction("drop_rate", drop_rate)
        self.numerics = numerics
        numbers = get_numerics(numerics)
        self.activation = get_activation(activation, approximate_gelu=numbers.approximate_gelu)
        self.fc_init = fc_init or hk.initializers.RandomNormal(0.01, 0)
        self.use_two_convs = use_two_convs
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        self.conv_impl = validate_conv_impl(conv_impl)
        stem_out = self.width_pattern[0] // 2
        if stem_out < 1:
            raise ValueError(f"width_pattern[0] must be >= 2, got {self.width_pattern[0]}.")

        ws_conv = functools.partial(WSConv2D, eps=numbers.ws_eps, eps_mode=numbers.ws_eps_mode)
        conv = lambda ch, k, s, n: ws_conv(
            ch, k, stride=s, padding="SAME", name=n, conv_impl=conv_impl
        )
        # Stem: /4 in total; no activation after the last conv (the block applies it).
        self.stem_convs = [
            conv(self.stem_widths[0], 3, 2, "stem_conv0"),
            conv(self.stem_widths[1], 3, 1, "stem_conv1"),
            conv(self.stem_widths[2], 3, 1, "stem_conv2"),
            conv(stem_out, 3, 2, "stem_conv3"),
        ]

        self.block_specs = signal_prop.block_schedule(
            self.depth_pattern, STAGE_STRIDES[:n_stages], alpha, self.stochdepth_rate
        )
        self.blocks = []
        in_ch = stem_out
        for spec in self.block_specs:
            out_ch = int(self.width_pattern[spec.stage] * width)
            self.blocks.append(
                NFBlock(
                    in_ch,
                    out_ch,
                    expansion=self.expansion[spec.stage],
                    se_ratio=se_ratio,
                    group_size=self.group_width[spec.stage],
                    stride=spec.stride,
                    beta=spec.beta,
                    alpha=alpha,
                    which_conv=ws_conv,
                    activation=self.activation,
                    big_width=self.big_width[spec.stage],
                    use_two_convs=use_two_convs,
                    stochdepth_rate=spec.stochdepth_rate,
                    name="nf_block" if spec.index == 0 else f"nf_block_{spec.index}",
                    conv_impl=conv_impl,
                )
            )
            in_ch = out_ch

        if final_conv_mult is None:
            if final_conv_ch is None:
                raise ValueError("Pass final_conv_mult or final_conv_ch; both are None.")
            final_ch = check_positive_int("final_conv_ch", final_conv_ch)
        else:
            final_ch = int(final_conv_mult * in_ch)
        self.final_conv = conv(final_ch, 1, 1, "final_conv")
        self.fc = hk.Linear(self.num_classes, w_init=self.fc_init, with_bias=True, name="linear")

    def __call__(
        self, x: jax.Array, is_training: bool = True, return_metrics: bool = False
    ) -> dict[str, jax.Array]:
        outputs = {}
        with compute_dtype_scope(self.compute_dtype) as dtype:
            out = x.astype(dtype)
            for i, stem_conv in enumerate(self.stem_convs):
                out = stem_conv(out)
                if i < len(self.stem_convs) - 1:
                    out = self.activation(out)
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
        """Analytic MACs at input size ``h x w``: ``(per-layer list, total)``.

        Counts every convolution, the SE linears and the classifier, as DeepMind's
        ``NFNet.count_flops`` (the papers' "FLOPs"); F0 at 256 px gives 12.384e9.
        """
        flops = []
        ch = 3
        for conv in self.stem_convs:
            flops.append(count_conv_flops(ch, conv, h, w))
            h, w = h / conv.stride[0], w / conv.stride[1]
            ch = conv.output_channels
        for block in self.blocks:
            flops.append(block.count_flops(h, w))
            h, w = h / block.stride, w / block.stride
        flops.append(count_conv_flops(self.blocks[-1].out_ch, self.final_conv, h, w))
        flops.append(self.final_conv.output_channels * self.num_classes)
        return flops, sum(flops)
