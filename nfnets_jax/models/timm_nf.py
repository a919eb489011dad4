"""timm's own Normalizer-Free family: NFNet-L0, ECA-NFNet-L0..L3, NF-ResNets, NF-RegNets.

Ross Wightman's ``timm`` library defines NF models that are not DeepMind's: the "light"
NFNets (``nfnet_l0``, ``eca_nfnet_l0``..``l3``: SiLU, group width 64, bottleneck 0.25,
ECA or a narrow SE), and its own pre-activation NF-ResNets and NF-RegNets (channels
rounded to multiples of 8). This module rebuilds them exactly, so timm's published
weights load (see :mod:`nfnets_jax.checkpoints`) and give timm's logits. How they differ
from DeepMind's models (:class:`~nfnets_jax.models.NFNet`, ``NFResNet``, ``NFRegNet``):

* **The activation gain lives in the convolutions.** Activations are the plain functions
  (``silu``, ``relu``); every weight-standardized conv, the very first stem conv
  included, multiplies its standardized kernel by the activation's gamma
  (:data:`~nfnets_jax.models.activations.GAMMAS`, the same constants as DeepMind's).
* **Weight standardization adds eps to the variance**: ``gain * gamma * (W - mean) /
  sqrt(fan_in * (var + 1e-5))`` (``WSConv2D(eps_mode='add')``), not DeepMind's floor.
* **Symmetric (PyTorch) padding** ``((s - 1) + (k - 1)) // 2`` on both sides, not
  TensorFlow's SAME (which pads a stride-2 conv on an even input only after).
* **No skip gain**: the last conv of every residual branch (``conv3``) starts with a
  zero gain instead, so every block is the identity on its shortcut at initialization.
* **Attention**: ECA (a 1-D conv across channels, kernel from ``log2(C)``) or SE with
  timm's rounding of the hidden width; either is multiplied by 2 (``attn_gain``).
* **Shortcut pooling** is ``AvgPool2d(2, ceil_mode=True, count_include_pad=False)``; the
  NF-ResNet stem is ``7x7/2 conv -> 3x3/2 max pool`` with no activation between.
* **Stochastic depth** (``drop_path_rate``) rises linearly from 0 at the first block to
  the rate at the last and rescales kept branches by ``1 / keep_prob`` (timm's DropPath).

Parameter paths are ``TimmNFNet/~/stem_conv1``, ``TimmNFNet/~/stages_2_5/~/conv2b``,
``.../attn_last`` (ECA kernel ``w``), ``.../squeeze_excite[_last]/~/linear`` (SE),
``final_conv`` and the classifier ``linear`` (named as in :class:`~nfnets_jax.models.NFNet`,
so the NFNet recipe's AGC and weight-decay groups, head replacement and checkpoint tools
apply unchanged): each maps one to one onto timm's ``state_dict`` keys
(:mod:`nfnets_jax.checkpoints._src.timm_models`).

Every timm name is registered in the model registry under its own name (``'eca_nfnet_l0'``
...), so a config says ``config.model = 'eca_nfnet_l0'``; ``'TimmNFNet'`` with
``variant=`` is the generic form.

References:
    Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition Without
    Normalization. arXiv:2102.06171.
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692.
    Wang et al. ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
    Networks. arXiv:1910.03151.
    Wightman. PyTorch Image Models (timm), ``timm/models/nfnet.py`` (v1.0.31).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nfnets_jax.models import signal_prop
from nfnets_jax.models.activations import GAMMAS, get_plain_activation
from nfnets_jax.models.conv import validate_conv_impl
from nfnets_jax.models.layers import SqueezeExcite, StochDepth, WSConv2D
from nfnets_jax.models.precision import compute_dtype_scope, resolve_compute_dtype
from nfnets_jax.models.validation import check_fraction, check_positive_int

# timm's ScaledStdConv2d epsilon for the NF family (``NfCfg.std_conv_eps``).
STD_CONV_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class TimmNFConfig:
    """One timm NF architecture (the fields of timm's ``NfCfg`` these models use).

    Attributes:
        depths: blocks per stage.
        channels: output channels per stage, before ``width_factor`` and rounding.
        stem_type: ``'deep_quad'`` (4 convs, /4), ``'3x3'`` (one conv, /2) or
            ``'7x7_pool'`` (7x7 conv and 3x3 max pool, /4).
        stem_chs: stem output channels (None: ``channels[0]``), before ``width_factor``.
        group_size: channels per group of the 3x3 convs (None: dense).
        attn: ``'se'``, ``'eca'`` or None.
        attn_rd_ratio: SE hidden width as a fraction of its channels.
        attn_rd_divisor: SE hidden width rounding.
        width_factor: multiplier on every width.
        bottle_ratio: bottleneck width ratio.
        num_features: final 1x1 conv width before ``width_factor`` (0: no final conv).
        reg: RegNet style: bottleneck from the input width, attention on the bottleneck
            (between conv2 and conv3), first block of the network with ratio 1.
        extra_conv: a second grouped 3x3 conv (``conv2b``), as NFNets.
        activation: ``'silu'`` or ``'relu'`` (plain; its gamma goes in the convs).
        alpha: residual branch scale.
        ch_div: channel rounding (timm rounds to multiples of 8).
    """

    depths: tuple[int, ...]
    channels: tuple[int, ...]
    stem_type: str
    stem_chs: int | None = None
    group_size: int | None = None
    attn: str | None = None
    attn_rd_ratio: float = 0.5
    attn_rd_divisor: int = 8
    width_factor: float = 1.0
    bottle_ratio: float = 0.5
    num_features: int = 0
    reg: bool = False
    extra_conv: bool = False
    activation: str = "silu"
    alpha: float = 0.2
    ch_div: int = 8


def _light_nfnet(depths, feat_mult, attn, rd_ratio=0.5):
    # timm's `_nfnet_cfg` with the "light" options (group 64, bottleneck 0.25, SiLU).
    channels = (256, 512, 1536, 1536)
    return TimmNFConfig(
        depths=depths,
        channels=channels,
        stem_type="deep_quad",
        stem_chs=128,
        group_size=64,
        attn=attn,
        attn_rd_ratio=rd_ratio,
        bottle_ratio=0.25,
        num_features=int(channels[-1] * feat_mult),
        extra_conv=True,
        activation="silu",
    )


def _nf_regnet(depths, channels=(48, 104, 208, 440)):
    # timm's `_nfreg_cfg`: EfficientNet-like head width 1280 * C_last / 440, x0.75.
    return TimmNFConfig(
        depths=depths,
        channels=channels,
        stem_type="3x3",
        group_size=8,
        attn="se",
        attn_rd_ratio=0.5,
        width_factor=0.75,
        bottle_ratio=2.25,
        num_features=1280 * channels[-1] // 440,
        reg=True,
        activation="silu",
    )


def _nf_resnet(depths):
    # timm's `_nfres_cfg`: pre-activation ResNet-D-like, no attention, no final conv.
    return TimmNFConfig(
        depths=depths,
        channels=(256, 512, 1024, 2048),
        stem_type="7x7_pool",
        stem_chs=64,
        bottle_ratio=0.25,
        activation="relu",
    )


#: timm name -> architecture, from timm's ``model_cfgs`` (timm 1.0.31 ``models/nfnet.py``).
TIMM_NF_CONFIGS: dict[str, TimmNFConfig] = {
    "nfnet_l0": _light_nfnet((1, 2, 6, 3), 1.5, "se", rd_ratio=0.25),
    "eca_nfnet_l0": _light_nfnet((1, 2, 6, 3), 1.5, "eca"),
    "eca_nfnet_l1": _light_nfnet((2, 4, 12, 6), 2.0, "eca"),
    "eca_nfnet_l2": _light_nfnet((3, 6, 18, 9), 2.0, "eca"),
    "eca_nfnet_l3": _light_nfnet((4, 8, 24, 12), 2.0, "eca"),
    "nf_resnet26": _nf_resnet((2, 2, 2, 2)),
    "nf_resnet50": _nf_resnet((3, 4, 6, 3)),
    "nf_resnet101": _nf_resnet((3, 4, 23, 3)),
    "nf_regnet_b0": _nf_regnet((1, 3, 6, 6)),
    "nf_regnet_b1": _nf_regnet((2, 4, 7, 7)),
    "nf_regnet_b2": _nf_regnet((2, 4, 8, 8), (56, 112, 232, 488)),
    "nf_regnet_b3": _nf_regnet((2, 5, 9, 9), (56, 128, 248, 528)),
    "nf_regnet_b4": _nf_regnet((2, 6, 11, 11), (64, 144, 288, 616)),
    "nf_regnet_b5": _nf_regnet((3, 7, 14, 14), (80, 168, 336, 704)),
}


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's channel rounding: nearest multiple of ``divisor``, at least ``divisor``.

    If rounding down loses more than ``1 - round_limit`` of ``v``, one more ``divisor``
    is added.

    Example:
        >>> make_divisible(36), make_divisible(1536 * 0.25 * 0.25, round_limit=0.0)
        (40, 96)
    """
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if rounded < round_limit * v:
        rounded += divisor
    return rounded


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA's adaptive kernel: ``t = int(|log2(C) + beta| / gamma)``, made odd, at least 3.

    Example:
        >>> eca_kernel_size(256), eca_kernel_size(1536)
        (5, 5)
    """
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


def symmetric_padding(kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch-style padding of timm's convs: ``((s - 1) + (k - 1)) // 2`` on each side."""
    p = ((stride - 1) + (kernel - 1)) // 2
    return ((p, p), (p, p))


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class ScaledStdConv(WSConv2D):
    """timm's ``ScaledStdConv2d``: WS conv with eps added to the variance and gamma inside.

    .. math::  \\hat W = g \\, \\gamma \\, \\frac{W - \\mu}{\\sqrt{N (\\sigma^2 + \\epsilon)}}

    with symmetric padding, ``epsilon = 1e-5`` and the activation gain ``gamma`` of the
    nonlinearity that precedes it. ``gain_init`` is 0 for the last conv of a residual
    branch. Parameters ``w`` (HWIO), ``gain`` (C,), ``bias`` (C,) as :class:`WSConv2D`.
    """

    def __init__(
        self,
        output_channels: int,
        kernel: int,
        stride: int = 1,
        feature_group_count: int = 1,
        *,
        gamma: float = 1.0,
        gain_init: float = 1.0,
        eps: float = STD_CONV_EPS,
        conv_impl: str = "auto",
        name: str | None = None,
    ):
        super().__init__(
            output_channels,
            kernel,
            stride=stride,
            padding=symmetric_padding(kernel, stride),
            feature_group_count=feature_group_count,
            eps=eps,
            eps_mode="add",
            conv_impl=conv_impl,
            name=name,
        )
        self.gamma = gamma
        self.gain_init = gain_init

    def standardized_weight(self, in_channels: int) -> jax.Array:
        shape = (*self.kernel_shape, in_channels // self.feature_group_count, self.output_channels)
        w = hk.get_parameter("w", shape, jnp.float32, init=self.w_init).astype(jnp.float32)
        gain = hk.get_parameter(
            "gain",
            (self.output_channels,),
            jnp.float32,
            init=hk.initializers.Constant(self.gain_init),
        ).astype(jnp.float32)
        axes = tuple(range(w.ndim - 1))
        mean = jnp.mean(w, axis=axes, keepdims=True)
        var = jnp.var(w, axis=axes, keepdims=True)
        # The order of timm's batch_norm: normalize, then times gain * gamma / sqrt(fan_in).
        fan_in = float(np.prod(shape[:-1]))
        return (w - mean) * lax.rsqrt(var + self.eps) * (gain * (self.gamma * fan_in**-0.5))

    def count_flops(self, in_ch: int, h: int, w: int) -> tuple[int, int, int]:
        """``(MACs, out_h, out_w)`` with the exact integer output size."""
        (k, _), (s, _), (p, _) = self.kernel_shape, self.stride, self.padding[0]
        oh, ow = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        return oh * ow * self.output_channels * (in_ch // self.feature_group_count) * k * k, oh, ow


class ECA(hk.Module):
    """Efficient Channel Attention gate: ``sigmoid(conv1d_k(mean_HW(x)))`` across channels.

    Returns the gate only, ``[B, 1, 1, C]``, as :class:`SqueezeExcite`. The 1-D kernel
    ``w`` (shape ``(k,)``, no bias) slides over the channel axis with zero padding
    ``(k - 1) // 2`` on each side (a cross-correlation, as PyTorch's Conv1d).
    """

    def __init__(self, channels: int, name: str | None = None):
        super().__init__(name=name)
        self.channels = channels
        self.kernel_size = eca_kernel_size(channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        bound = 1.0 / math.sqrt(k)  # PyTorch's default Conv1d init range.
        w = hk.get_parameter(
            "w", (k,), jnp.float32, init=hk.initializers.RandomUniform(-bound, bound)
        )
        y = jnp.mean(x, axis=(1, 2))
        pad = (k - 1) // 2
        y = jnp.pad(y, ((0, 0), (pad, pad)))
        c = x.shape[-1]
        y = sum(w[j].astype(y.dtype) * y[:, j : j + c] for j in range(k))
        return jax.nn.sigmoid(y)[:, None, None, :]


def _avg_pool_ceil(x: jax.Array) -> jax.Array:
    """``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)`` on NHWC."""
    pads = [(0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)]
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
    count = lax.reduce_window(jnp.ones_like(x[:1, ..., :1]), 0.0, lax.add, window, strides, pads)
    return total / count


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``MaxPool2d(3, stride=2, padding=1)`` on NHWC (padding never wins the max)."""
    pads = [(0, 0), (1, 1), (1, 1), (0, 0)]
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads)


class TimmNFBlock(hk.Module):
    """timm's ``NormFreeBlock``: pre-activation bottleneck with ScaledStdConvs.

    Forward::

        a = act(x) * beta
        shortcut = downsample_conv(avg_pool(a) if stride > 1 else a) if projecting else x
        h = conv2(act(conv1(a)))                     # conv2 is grouped, carries the stride
        h = conv2b(act(h))                           # NFNet-L only
        h = 2 * attn(h)                              # RegNet: SE on the bottleneck
        h = conv3(act(h))                            # gain starts at 0
        h = 2 * attn_last(h)                         # NFNet-L: ECA / SE on the output
        return drop_path(h) * alpha + shortcut
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        stride: int,
        beta: float,
        alpha: float,
        bottle_ratio: float,
        cfg: TimmNFConfig,
        drop_path_rate: float = 0.0,
        conv_impl: str = "auto",
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.beta, self.alpha = beta, alpha
        self.activation = get_plain_activation(cfg.activation)
        mid = make_divisible((in_chs if cfg.reg else out_chs) * bottle_ratio, cfg.ch_div)
        groups = mid // cfg.group_size if cfg.group_size else 1
        if cfg.group_size and cfg.group_size % cfg.ch_div == 0:
            mid = cfg.group_size * groups
        self.mid_chs, self.groups = mid, groups
        gamma = GAMMAS[cfg.activation]
        conv = lambda ch, k, s, g, n, gain=1.0: ScaledStdConv(
            ch, k, s, g, gamma=gamma, gain_init=gain, conv_impl=conv_impl, name=n
        )
        self.downsample = None
        if in_chs != out_chs or stride != 1:
            self.downsample = conv(out_chs, 1, 1, 1, "downsample_conv")
        self.conv1 = conv(mid, 1, 1, 1, "conv1")
        self.conv2 = conv(mid, 3, stride, groups, "conv2")
        self.conv2b = conv(mid, 3, 1, groups, "conv2b") if cfg.extra_conv else None
        self.conv3 = conv(out_chs, 1, 1, 1, "conv3", gain=0.0)
        self.attn = self.attn_last = None
        if cfg.attn is not None:
            channels = mid if cfg.reg else out_chs
            if cfg.attn == "eca":
                module = ECA(channels, name="attn" if cfg.reg else "attn_last")
            else:
                hidden = make_divisible(channels * cfg.attn_rd_ratio, cfg.attn_rd_divisor, 0.0)
                # Named like the NFNet's SE so the recipe's AGC and weight-decay
                # patterns treat it the same (clipped, decayed).
                module = SqueezeExcite(
                    channels,
                    channels,
                    None,
                    hidden,
                    name="squeeze_excite" if cfg.reg else "squeeze_excite_last",
                )
            if cfg.reg:
                self.attn = module
            else:
                self.attn_last = module
        self.drop_path_rate = drop_path_rate
        self.drop_path = None
        if drop_path_rate > 0.0:
            self.drop_path = StochDepth(drop_path_rate, scale_by_keep=True, name="drop_path")

    def __call__(self, x: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
        out = self.activation(x) * self.beta
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(_avg_pool_ceil(out) if self.stride > 1 else out)
        out = self.conv1(out)
        out = self.conv2(self.activation(out))
        if self.conv2b is not None:
            out = self.conv2b(self.activation(out))
        if self.attn is not None:
            out = 2.0 * (out * self.attn(out))
        out = self.conv3(self.activation(out))
        if self.attn_last is not None:
            out = 2.0 * (out * self.attn_last(out))
        res_avg_var = signal_prop.average_channel_variance(out)
        if self.drop_path is not None:
            out = self.drop_path(out, is_training)
        return out * self.alpha + shortcut, res_avg_var

    def count_flops(self, h: int, w: int) -> tuple[int, int, int]:
        """``(MACs, out_h, out_w)``: convs, attention (SE linears / ECA taps)."""
        flops, _, _ = self.conv1.count_flops(self.in_chs, h, w)
        f, oh, ow = self.conv2.count_flops(self.mid_chs, h, w)
        flops += f
        if self.conv2b is not None:
            flops += self.conv2b.count_flops(self.mid_chs, oh, ow)[0]
        flops += self.conv3.count_flops(self.mid_chs, oh, ow)[0]
        if self.downsample is not None:
            ph, pw = (-(-h // 2), -(-w // 2)) if self.stride > 1 else (h, w)
            flops += self.downsample.count_flops(self.in_chs, ph, pw)[0]
        for attn in (self.attn, self.attn_last):
            if isinstance(attn, ECA):
                flops += attn.channels * attn.kernel_size
            elif attn is not None:
                flops += 2 * attn.in_ch * attn.hidden_ch
        return flops, oh, ow


class TimmNFNet(hk.Module):
    """One of timm's NF models (``variant`` = its timm name), exactly as timm builds it.

    ``__call__(x, is_training=True, return_metrics=False)`` takes NHWC images and returns
    ``{'pool': [B, C], 'logits': [B, num_classes]}`` in float32, plus with
    ``return_metrics`` the signal-propagation statistics ``avg_sq_mean_{i}``,
    ``avg_var_{i}`` and ``res_avg_var_{k}`` as :class:`~nfnets_jax.models.NFNet`.

    Example:
        ECA-NFNet-L0 has timm's 24,143,924 parameters:

        >>> forward = hk.transform(
        ...     lambda x: TimmNFNet(1000, 'eca_nfnet_l0')(x, is_training=False))
        >>> params = jax.eval_shape(forward.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
        >>> sum(p.size for p in jax.tree.leaves(params))
        24143924
    """

    #: The variant a registry alias (``'eca_nfnet_l0'`` ...) builds when none is given.
    default_variant = "eca_nfnet_l0"

    def __init__(
        self,
        num_classes: int,
        variant: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        name: str = "TimmNFNet",
        *,
        compute_dtype: Any = None,
        conv_impl: str = "auto",
    ):
        """Builds the network.

        Args:
            num_classes: classifier outputs.
            variant: a key of :data:`TIMM_NF_CONFIGS` (None: the class's default, e.g.
                the registry alias's own name).
            drop_rate: dropout before the classifier (timm's default 0).
            drop_path_rate: stochastic depth at the last block, rising linearly from 0
                (timm's default 0).
            name: module name (parameter paths start with it).
            compute_dtype: activation dtype (None/float32, bfloat16, float16).
            conv_impl: convolution lowering, ``'auto'``, ``'native'``, ``'per_group'``,
                ``'dot'`` or ``'patches'`` (see :mod:`nfnets_jax.models.conv`).
        """
        super().__init__(name=name)
        variant = self.default_variant if variant is None else variant
        if variant not in TIMM_NF_CONFIGS:
            raise ValueError(
                f"Unknown timm NF variant {variant!r}. Known variants: "
                f"{', '.join(TIMM_NF_CONFIGS)}."
            )
        cfg = TIMM_NF_CONFIGS[variant]
        self.variant, self.cfg = variant, cfg
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.drop_rate = check_fraction("drop_rate", drop_rate)
        self.drop_path_rate = check_fraction("drop_path_rate", drop_path_rate)
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        self.conv_impl = validate_conv_impl(conv_impl)
        self.activation = get_plain_activation(cfg.activation)
        gamma = GAMMAS[cfg.activation]
        conv = lambda ch, k, s, n: ScaledStdConv(ch, k, s, gamma=gamma, conv_impl=conv_impl, name=n)

        stem_chs = make_divisible((cfg.stem_chs or cfg.channels[0]) * cfg.width_factor, cfg.ch_div)
        if cfg.stem_type == "deep_quad":
            widths = (stem_chs // 8, stem_chs // 4, stem_chs // 2, stem_chs)
            strides = (2, 1, 1, 2)
            self.stem = [
                conv(c, 3, s, f"stem_conv{i + 1}")
                for i, (c, s) in enumerate(zip(widths, strides, strict=True))
            ]
            stem_stride = 4
        elif cfg.stem_type == "3x3":
            self.stem, stem_stride = [conv(stem_chs, 3, 2, "stem_conv")], 2
        else:  # '7x7_pool'
            self.stem, stem_stride = [conv(stem_chs, 7, 2, "stem_conv")], 4
        self.stem_chs = stem_chs

        total = sum(cfg.depths)
        # timm: torch.linspace(0, drop_path_rate, total) over all blocks.
        rates = [self.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.blocks = []
        prev, expected_var, index = stem_chs, 1.0, 0
        for stage, depth in enumerate(cfg.depths):
            stride = 1 if stage == 0 and stem_stride > 2 else 2
            out_chs = make_divisible(cfg.channels[stage] * cfg.width_factor, cfg.ch_div)
            for j in range(depth):
                first = stage == 0 and j == 0
                self.blocks.append(
                    TimmNFBlock(
                        prev,
                        out_chs,
                        stride=stride if j == 0 else 1,
                        beta=1.0 / expected_var**0.5,
                        alpha=cfg.alpha,
                        bottle_ratio=1.0 if cfg.reg and first else cfg.bottle_ratio,
                        cfg=cfg,
                        drop_path_rate=rates[index],
                        conv_impl=conv_impl,
                        name=f"stages_{stage}_{j}",
                    )
                )
                # The expected variance resets after each stage's first block.
                expected_var = (1.0 if j == 0 else expected_var) + cfg.alpha**2
                prev, index = out_chs, index + 1
        self.final_conv = None
        self.num_features = prev
        if cfg.num_features:
            self.num_features = make_divisible(cfg.width_factor * cfg.num_features, cfg.ch_div)
            self.final_conv = conv(self.num_features, 1, 1, "final_conv")
        self.fc = hk.Linear(
            self.num_classes, w_init=hk.initializers.RandomNormal(0.01, 0), name="linear"
        )

    def __call__(
        self, x: jax.Array, is_training: bool = True, return_metrics: bool = False
    ) -> dict[str, jax.Array]:
        outputs = {}
        with compute_dtype_scope(self.compute_dtype) as dtype:
            out = x.astype(dtype)
            for i, stem_conv in enumerate(self.stem):
                if i > 0:
                    out = self.activation(out)
                out = stem_conv(out)
            if self.cfg.stem_type == "7x7_pool":
                out = _max_pool_3x3_s2(out)
            if return_metrics:
                outputs.update(signal_prop.signal_metrics(out, 0))
            for i, block in enumerate(self.blocks):
                out, res_avg_var = block(out, is_training=is_training)
                if return_metrics:
                    outputs.update(signal_prop.signal_metrics(out, i + 1))
                    outputs[f"res_avg_var_{i}"] = res_avg_var
            if self.final_conv is not None:
                out = self.final_conv(out)
            out = self.activation(out)
            pool = jnp.mean(out, axis=(1, 2))
            outputs["pool"] = pool.astype(jnp.float32)
            if is_training and self.drop_rate > 0.0:
                pool = hk.dropout(hk.next_rng_key(), self.drop_rate, pool)
            outputs["logits"] = self.fc(pool).astype(jnp.float32)
        return outputs

    def count_flops(self, h: int, w: int) -> tuple[list[int], int]:
        """MACs at input size ``h x w``: ``(per-layer list, total)``.

        Counts every convolution (with the exact integer output sizes of symmetric
        padding), the SE linears, the ECA taps and the classifier; as
        ``torch.utils.flop_counter`` counts timm's model (divided by 2).
        """
        flops, ch = [], 3
        for conv in self.stem:
            f, h, w = conv.count_flops(ch, h, w)
            flops.append(f)
            ch = conv.output_channels
        if self.cfg.stem_type == "7x7_pool":
            h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        for block in self.blocks:
            f, h, w = block.count_flops(h, w)
            flops.append(f)
        if self.final_conv is not None:
            flops.append(self.final_conv.count_flops(self.blocks[-1].out_chs, h, w)[0])
        flops.append(self.num_features * self.num_classes)
        return flops, sum(flops)


def _alias(variant: str) -> type:
    class_name = "Timm_" + variant
    doc = f"timm's ``{variant}`` (:class:`TimmNFNet` with ``variant={variant!r}``)."
    namespace = {"default_variant": variant, "__doc__": doc, "__module__": __name__}
    return type(class_name, (TimmNFNet,), namespace)


#: Registry aliases: timm name -> a :class:`TimmNFNet` subclass defaulting to it.
TIMM_NF_MODELS: dict[str, type] = {variant: _alias(variant) for variant in TIMM_NF_CONFIGS}


def timm_nf_names() -> Sequence[str]:
    """The timm names this module builds, in timm's order."""
    return tuple(TIMM_NF_CONFIGS)
