"""Normalized ResNet baselines: v1/B/C/D/E/S and pre-activation v2, BN/GN/LN/+Proxy Norm.

One table-driven Haiku module covers the ResNets the NF papers compare against:

* depths 18 and 34 (basic blocks) and 50, 101, 152, 200 (bottlenecks), He et al. 2016;
* versions (baselines spec section 6.1): ``'v1'`` (stride on the first 1x1 of a
  downsampling block), ``'v1b'`` (ResNet-B / v1.5: stride on the 3x3), ``'v1c'`` (B with
  the deep stem 3x3/2 32 -> 3x3 32 -> 3x3 64), ``'v1d'`` (C with an average-pool-then-1x1
  shortcut), ``'v1e'``/``'v1s'`` (deep stem 64-64-128 with/without the pooled shortcut),
  ``'v2'`` (pre-activation, Haiku's ``resnet_v2`` layout; DeepMind's baseline default);
* normalization ``'batch'`` (BatchNorm, running averages in Haiku state, optional
  cross-device statistics), ``'group'`` (GroupNorm, G = 32), ``'layer'`` (LayerNorm =
  one group over H, W, C), ``'group_proxy'`` and ``'layer_proxy'`` (affine-free GN/LN
  followed by Proxy Norm's PN-Act wherever an activation follows; a norm that no
  activation follows keeps a per-channel scale and no shift: baselines spec 1.3);
* optional Squeeze-Excite (gate without the NF models' factor 2) on the residual branch.

Layouts (bottleneck, ``F`` = stage width, ``stride`` = 2 in the first block of stages
2-4; ``NA`` = norm + activation, or affine-free norm + PN-Act)::

    v1 family:  h = NA(conv1x1(x, F))            # stride here for v1
                h = NA(conv3x3(h, F))            # stride here for B/C/D/E/S
                h = norm(conv1x1(h, 4F))         # gamma = 0 at init with zero_init_residual
                s = x, or norm(conv1x1/stride(x)), or norm(conv1x1(avgpool2x2/2(x)))  # D/E
                out = relu(h + s)
    v2:         a = NA(x); s = x, or conv1x1/stride(a)
                h = conv1x1(NA(conv3x3/stride(NA(conv1x1(a, F)), F)), 4F)  # last kernel 0
                out = h + s                      # head: NA, then pool and linear

Zero-init of the residual (Bag of Tricks' zero gamma) sets the last norm's scale of every
v1 block to 0, and the last convolution of every v2 block to 0, so every block is the
identity on non-negative (v1) or any (v2) input at initialization. (For v2 with Proxy
Norm a zero PN gamma would kill the ReLU gradient forever: baselines spec 1.3.)

Stems, pooling and paddings follow Haiku (SAME convs, 3x3/2 SAME max-pool). The
classifier is initialised to zero, as in DeepMind's ``resnet.py`` and Haiku.

References:
    He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. arXiv:1512.03385.
    He, Zhang, Ren, Sun. Identity Mappings in Deep Residual Networks. arXiv:1603.05027.
    He, Zhang, Zhang, Zhang, Xie, Li. Bag of Tricks for Image Classification with
    Convolutional Neural Networks. arXiv:1812.01187.
    Labatie et al. Proxy-Normalizing Activations. arXiv:2106.03743.
    Hu, Shen, Sun. Squeeze-and-Excitation Networks. arXiv:1709.01507.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models import signal_prop
from nfnets_jax.models.activations import get_plain_activation
from nfnets_jax.models.layers import SqueezeExcite
from nfnets_jax.models.normalization import DEFAULT_DECAY, DEFAULT_EPS, BatchNorm, GroupNorm
from nfnets_jax.models.precision import compute_dtype_scope, resolve_compute_dtype
from nfnets_jax.models.proxy_norm import PROXY_EPS, ProxyNormActivation
from nfnets_jax.models.validation import check_positive_int, check_positive_ints

__all__ = ["NORMS", "VERSIONS", "NormFactory", "ResNet", "ResNetBlock", "resnet_params"]

#: Blocks per stage and block type (He et al. 2016, Table 1; ResNet-200: He et al. 2016b).
resnet_params: dict[int, dict[str, Any]] = {
    18: {"depth": (2, 2, 2, 2), "bottleneck": False},
    34: {"depth": (3, 4, 6, 3), "bottleneck": False},
    50: {"depth": (3, 4, 6, 3), "bottleneck": True},
    101: {"depth": (3, 4, 23, 3), "bottleneck": True},
    152: {"depth": (3, 8, 36, 3), "bottleneck": True},
    200: {"depth": (3, 24, 36, 3), "bottleneck": True},
}

#: Version -> (stride on the 3x3, deep-stem width or None, avg-pool shortcut, pre-act).
#: Baselines spec section 6.1 (GluonCV's resnetv1b family and Haiku's v2).
VERSIONS: dict[str, dict[str, Any]] = {
    "v1": dict(stride_on_3x3=False, deep_stem=None, avg_down=False, preact=False),
    "v1b": dict(stride_on_3x3=True, deep_stem=None, avg_down=False, preact=False),
    "v1c": dict(stride_on_3x3=True, deep_stem=32, avg_down=False, preact=False),
    "v1d": dict(stride_on_3x3=True, deep_stem=32, avg_down=True, preact=False),
    "v1e": dict(stride_on_3x3=True, deep_stem=64, avg_down=True, preact=False),
    "v1s": dict(stride_on_3x3=True, deep_stem=64, avg_down=False, preact=False),
    "v2": dict(stride_on_3x3=True, deep_stem=None, avg_down=False, preact=True),
}
_VERSION_ALIASES = {"v1.5": "v1b", "B": "v1b", "C": "v1c", "D": "v1d", "E": "v1e", "S": "v1s"}

#: Normalization choices -> (GroupNorm groups or None for BatchNorm, Proxy Norm).
NORMS: dict[str, tuple[int | None, bool]] = {
    "batch": (None, False),
    "group": (32, False),
    "layer": (1, False),
    "group_proxy": (32, True),
    "layer_proxy": (1, True),
}

BASE_WIDTHS = (64, 128, 256, 512)  # stage widths F (bottleneck outputs are 4F).
STAGE_STRIDES = (1, 2, 2, 2)
STEM_WIDTH = 64  # the 7x7/2 stem convolution
BOTTLENECK_EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class NormFactory:
    """Builds the normalization (+ activation) layers of one network.

    Attributes:
        groups: GroupNorm groups (1 = LayerNorm), or None for BatchNorm.
        proxy: affine-free norm + PN-Act wherever an activation follows; scale-only
            norms elsewhere (baselines spec 1.3).
        eps: norm epsilon.
        decay: BatchNorm running-average decay.
        cross_replica_axis: BatchNorm statistics axis (or None).
        proxy_eps: Proxy Norm epsilon.
        proxy_recompute: rematerialise PN-Act in the backward pass (saves memory).
        activation_name: the activation of norm + activation pairs (PN's ``phi``).
    """

    groups: int | None = None
    proxy: bool = False
    eps: float = DEFAULT_EPS
    decay: float = DEFAULT_DECAY
    cross_replica_axis: str | None = None
    proxy_eps: float = PROXY_EPS
    proxy_recompute: bool = False
    activation_name: str = "relu"

    @classmethod
    def from_name(cls, norm: str, num_groups: int | None = None, **kwargs: Any) -> NormFactory:
        """The factory for ``norm`` (a key of :data:`NORMS`), e.g. ``'group_proxy'``.

        Example:
            >>> NormFactory.from_name('layer_proxy').groups
            1
        """
        if norm not in NORMS:
            raise ValueError(f"Unknown norm {norm!r}: use one of {', '.join(NORMS)}.")
        groups, proxy = NORMS[norm]
        if num_groups is not None:
            if groups is None or groups == 1:
                raise ValueError(
                    f"num_groups applies to norm='group' or 'group_proxy', not {norm!r}."
                )
            groups = check_positive_int("num_groups", num_groups)
        return cls(groups=groups, proxy=proxy, **kwargs)

    def _norm(self, name: str, *, scale: bool, offset: bool, zero: bool) -> hk.Module:
        scale_init = jnp.zeros if zero else jnp.ones
        if self.groups is None:
            return BatchNorm(
                self.decay, self.eps, scale, offset, scale_init, self.cross_replica_axis, name
            )
        return GroupNorm(self.groups, self.eps, scale, offset, scale_init, name=name)

    def norm_act(self, suffix: str) -> Callable[[jax.Array, bool], jax.Array]:
        """A norm followed by the activation (PN-Act after an affine-free norm for PN).

        Builds the modules now (call it in a module's ``__init__`` so their names are
        ``.../~/norm{suffix}`` and ``.../~/act{suffix}``) and returns ``(x, is_training)
        -> activated``.
        """
        if self.proxy:
            norm = self._norm(f"norm{suffix}", scale=False, offset=False, zero=False)
            pn = ProxyNormActivation(
                self.activation_name,
                self.proxy_eps,
                recompute=self.proxy_recompute,
                name=f"act{suffix}",
            )
            return lambda x, is_training: pn(norm(x, is_training), is_training)
        norm = self._norm(f"norm{suffix}", scale=True, offset=True, zero=False)
        act = get_plain_activation(self.activation_name)
        return lambda x, is_training: act(norm(x, is_training))

    def norm(self, suffix: str, zero: bool = False) -> hk.Module:
        """A norm that no activation follows: scale only under PN (spec 1.3, rule 2)."""
        return self._norm(f"norm{suffix}", scale=True, offset=not self.proxy, zero=zero)


def _conv(channels: int, kernel: int, stride: int, name: str, zero: bool = False) -> hk.Conv2D:
    # He (MSRA) initialization for ReLU networks; zeros for the v2 zero-init residual.
    w_init = jnp.zeros if zero else hk.initializers.VarianceScaling(2.0, "fan_in", "normal")
    return hk.Conv2D(
        channels, kernel, stride=stride, padding="SAME", with_bias=False, w_init=w_init, name=name
    )


class ResNetBlock(hk.Module):
    """One residual block (basic or bottleneck; v1 family or pre-activation v2).

    ``__call__(x, is_training)`` returns ``(output, residual_branch_output)``; the branch
    output (before the addition) feeds the signal-propagation metrics. Submodules:
    ``conv0..2``, ``norm0..2`` (+ ``act0..2`` with Proxy Norm), ``conv_shortcut`` and
    ``norm_shortcut`` (v1 family) in projection blocks, ``squeeze_excite``.

    Example:
        >>> f = hk.transform_with_state(lambda x: ResNetBlock(
        ...     8, 2, 1, bottleneck=True, version=VERSIONS['v1b'],
        ...     norms=NormFactory(), zero_init_residual=True)(x, True)[0])
        >>> x = jnp.ones((1, 4, 4, 8))
        >>> params, state = f.init(jax.random.key(0), x)
        >>> bool((f.apply(params, state, None, x)[0] == x).all())  # zero gamma: identity
        True
    """

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        *,
        bottleneck: bool,
        version: dict[str, Any],
        norms: NormFactory,
        zero_init_residual: bool,
        use_se: bool = False,
        se_ratio: float = 0.25,
        name: str | None = None,
    ):
        """Builds the block.

        Args:
            in_ch: input channels.
            width: stage width F (bottleneck outputs have ``4F`` channels).
            stride: the block's stride.
            bottleneck: bottleneck (1x1-3x3-1x1) or basic (3x3-3x3) block.
            version: a :data:`VERSIONS` entry.
            norms: builds the norm layers.
            zero_init_residual: zero the last norm scale (v1) or conv kernel (v2).
            use_se: add Squeeze-Excite on the branch.
            se_ratio: its hidden ratio.
            name: module name.
        """
        super().__init__(name=name)
        self.in_ch, self.width, self.stride = in_ch, width, stride
        self.bottleneck = bottleneck
        self.out_ch = width * (BOTTLENECK_EXPANSION if bottleneck else 1)
        self.version, self.norms = version, norms
        self.zero_init_residual = zero_init_residual
        self.use_se, self.se_ratio = use_se, se_ratio
        self.use_projection = stride > 1 or in_ch != self.out_ch
        convs = self._branch_convs()
        last = len(convs) - 1
        preact = version["preact"]
        # Zero-init residual: the last conv kernel (v2) or the last norm's scale (v1).
        self.convs = [
            _conv(ch, k, s, f"conv{i}", zero=preact and zero_init_residual and i == last)
            for i, (ch, k, s) in enumerate(convs)
        ]
        if preact:
            self.norm_acts = [norms.norm_act(str(i)) for i in range(len(convs))]
        else:
            self.norm_acts = [norms.norm_act(str(i)) for i in range(last)]
            self.last_norm = norms.norm(str(last), zero=zero_init_residual)
        self.pool_shortcut = False
        if self.use_projection:
            # ResNet-D pools first and keeps the conv at stride 1 (only where stride > 1).
            self.pool_shortcut = version["avg_down"] and stride > 1 and not preact
            self.conv_shortcut = _conv(
                self.out_ch, 1, 1 if self.pool_shortcut else stride, "conv_shortcut"
            )
            if not preact:  # v2 projects the pre-activated input, with no norm after it.
                self.norm_shortcut = norms.norm("_shortcut")
        if use_se:
            self.se = SqueezeExcite(self.out_ch, self.out_ch, se_ratio, name="squeeze_excite")

    def _branch_convs(self) -> list[tuple[int, int, int]]:
        """(channels, kernel, stride) of the branch convolutions, in order."""
        s = self.stride
        if not self.bottleneck:
            return [(self.width, 3, s), (self.out_ch, 3, 1)]
        on_3x3 = self.version["stride_on_3x3"]
        return [
            (self.width, 1, 1 if on_3x3 else s),
            (self.width, 3, s if on_3x3 else 1),
            (self.out_ch, 1, 1),
        ]

    def _excite(self, h: jax.Array) -> jax.Array:
        if not self.use_se:
            return h
        return h * self.se(h).astype(h.dtype)  # no factor 2 (DeepMind's resnet.py)

    def __call__(self, x: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
        if self.version["preact"]:
            a = self.norm_acts[0](x, is_training)
            shortcut = self.conv_shortcut(a) if self.use_projection else x
            h = a
            for i, conv in enumerate(self.convs):
                if i > 0:
                    h = self.norm_acts[i](h, is_training)
                h = conv(h)
            h = self._excite(h)
            return h + shortcut, h

        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.norm_acts):
                h = self.norm_acts[i](h, is_training)
        h = self._excite(self.last_norm(h, is_training))
        shortcut = x
        if self.use_projection:
            if self.pool_shortcut:
                # SAME padding with hk.avg_pool divides by the number of real inputs in each
                # window: GluonCV's ceil_mode=True, count_include_pad=False.
                shortcut = hk.avg_pool(shortcut, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
            shortcut = self.norm_shortcut(self.conv_shortcut(shortcut), is_training)
        return jax.nn.relu(h + shortcut), h

    def count_flops(self, h: float, w: float) -> float:
        """Convolution MACs at input size ``h x w`` (SE linears included)."""
        flops, in_ch = 0.0, self.in_ch
        for ch, k, s in self._branch_convs():
            h, w = h / s, w / s
            flops += ch * in_ch * k * k * h * w
            in_ch = ch
        if self.use_projection:
            flops += self.out_ch * self.in_ch * h * w  # output size == branch output size
        if self.use_se:
            hidden = max(1, int(self.out_ch * self.se_ratio))
            flops += 2 * hidden * self.out_ch
        return flops


class ResNet(hk.Module):
    """A normalized ResNet (module name ``ResNet``): BN, GN, LN, GN+PN or LN+PN.

    ``ResNet(num_classes, depth=50, version='v2', norm='batch')(x, is_training)`` returns
    ``{'pool', 'logits'}`` (float32) and, with ``return_metrics=True``, the signal
    propagation metrics of the NF models: ``avg_sq_mean_i``/``avg_var_i`` of the max-pool
    output (``i = 0``) and of every block's output (``i = 1..N``), and
    ``res_avg_var_i`` of every residual branch (``i = 0..N-1``). Use it through
    ``hk.transform_with_state``: BatchNorm keeps running averages in the state (the
    other norms create none).

    Example:
        ``jax.eval_shape`` runs ``init`` and ``apply`` abstractly: the full-size trees and
        shapes, nothing computed (call ``f.init``/``f.apply`` for values). ResNet-50 v1b
        is torchvision's ``resnet50`` layout, with its 25,557,032 parameters:

        >>> f = hk.transform_with_state(lambda x: ResNet(1000, 50, version='v1b')(x, True))
        >>> x = jnp.zeros((2, 224, 224, 3))
        >>> params, state = jax.eval_shape(f.init, jax.random.key(0), x)
        >>> sum(p.size for p in jax.tree.leaves(params))
        25557032
        >>> jax.eval_shape(f.apply, params, state, None, x)[0]['logits'].shape
        (2, 1000)

        GroupNorm + Proxy Norm keeps no state:

        >>> f = hk.transform_with_state(lambda x: ResNet(10, 18, width_multiplier=0.125,
        ...                                              norm='group_proxy')(x, True))
        >>> jax.eval_shape(f.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)))[1]
        {}
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        version: str = "v2",
        norm: str = "batch",
        *,
        activation: str = "relu",
        zero_init_residual: bool = True,
        use_se: bool = False,
        se_ratio: float = 0.25,
        num_groups: int | None = None,
        norm_eps: float = DEFAULT_EPS,
        bn_decay: float = DEFAULT_DECAY,
        cross_replica_axis: str | None = None,
        proxy_eps: float = PROXY_EPS,
        proxy_recompute: bool = False,
        width_multiplier: float = 1.0,
        depth_pattern: Sequence[int] | None = None,
        fc_init: hk.initializers.Initializer | None = None,
        compute_dtype: Any = None,
        name: str = "ResNet",
    ):
        """Builds the network.

        Args:
            num_classes: classifier outputs.
            depth: 18, 34 (basic blocks), 50, 101, 152 or 200 (bottlenecks).
            version: ``'v1'``, ``'v1b'`` (alias ``'v1.5'``, ``'B'``), ``'v1c'`` (``'C'``),
                ``'v1d'`` (``'D'``), ``'v1e'``, ``'v1s'`` or ``'v2'`` (pre-activation).
            norm: ``'batch'``, ``'group'``, ``'layer'``, ``'group_proxy'`` (GN+PN) or
                ``'layer_proxy'`` (LN+PN).
            activation: ``'relu'`` (default), ``'silu'`` or ``'gelu'`` (exact); the
                activation of every norm + activation pair (PN's ``phi``). The v1
                post-addition activation is always ReLU.
            zero_init_residual: zero the last norm scale (v1 family) or the last conv
                kernel (v2) of every block, so blocks start as identities.
            use_se: add Squeeze-Excite to every residual branch.
            se_ratio: Squeeze-Excite hidden ratio.
            num_groups: GroupNorm groups for ``'group'``/``'group_proxy'`` (default 32;
                each layer uses ``min(G, C)``). Not allowed with other norms.
            norm_eps: BatchNorm/GroupNorm epsilon (1e-5).
            bn_decay: BatchNorm running-average decay (0.9, the original's).
            cross_replica_axis: device axis for global BatchNorm statistics (``'data'``
                in the training step); ignored where that axis is not bound.
            proxy_eps: Proxy Norm's epsilon (0.03).
            proxy_recompute: recompute every PN-Act in the backward pass instead of
                storing its float32 intermediates (less memory, same numbers).
            width_multiplier: scales every width (stem, stages) for small experiments.
            depth_pattern: blocks per stage, overriding the depth's (beyond the
                original; for small experiments and tests).
            fc_init: classifier weight initializer (zeros).
            compute_dtype: activation dtype (None/float32, bfloat16, float16); parameters
                and normalization statistics stay float32.
            name: module name.
        """
        super().__init__(name=name)
        self.num_classes = check_positive_int("num_classes", num_classes)
        if depth not in resnet_params:
            raise ValueError(
                f"Unknown ResNet depth {depth!r}: use one of {', '.join(map(str, resnet_params))}."
            )
        version = _VERSION_ALIASES.get(version, version)
        if version not in VERSIONS:
            raise ValueError(
                f"Unknown ResNet version {version!r}: use one of {', '.join(VERSIONS)} "
                f"(aliases {', '.join(_VERSION_ALIASES)})."
            )
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
        self.depth, self.version_name, self.norm_name = depth, version, norm
        self.version = VERSIONS[version]
        self.bottleneck = resnet_params[depth]["bottleneck"]
        self.depth_pattern = check_positive_ints(
            "depth_pattern",
            resnet_params[depth]["depth"] if depth_pattern is None else depth_pattern,
        )
        if len(self.depth_pattern) != len(STAGE_STRIDES):
            raise ValueError(
                f"depth_pattern needs {len(STAGE_STRIDES)} stages, got {self.depth_pattern}."
            )
        get_plain_activation(activation)  # fail early on an unknown name
        self.activation = activation
        self.norms = NormFactory.from_name(
            norm,
            num_groups,
            eps=float(norm_eps),
            decay=float(bn_decay),
            cross_replica_axis=cross_replica_axis,
            proxy_eps=float(proxy_eps),
            proxy_recompute=bool(proxy_recompute),
            activation_name=activation,
        )
        self.zero_init_residual = bool(zero_init_residual)
        self.use_se, self.se_ratio = bool(use_se), float(se_ratio)
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        self.fc_init = fc_init or jnp.zeros

        scale = lambda c: max(1, int(round(c * width_multiplier)))
        deep = self.version["deep_stem"]
        # Deep stem (ResNet-C): 3x3/2 w -> 3x3 w -> 3x3 2w; else one 7x7/2 conv.
        self.stem_widths = (scale(deep), scale(deep), scale(2 * deep)) if deep else (scale(64),)
        self.stage_widths = tuple(scale(c) for c in BASE_WIDTHS)
        self.blocks: list[ResNetBlock] = []
        in_ch = self.stem_widths[-1]
        index = 0
        for stage, (count, stride) in enumerate(
            zip(self.depth_pattern, STAGE_STRIDES, strict=True)
        ):
            for j in range(count):
                block = ResNetBlock(
                    in_ch,
                    self.stage_widths[stage],
                    stride if j == 0 else 1,
                    bottleneck=self.bottleneck,
                    version=self.version,
                    norms=self.norms,
                    zero_init_residual=self.zero_init_residual,
                    use_se=self.use_se,
                    se_ratio=self.se_ratio,
                    name=f"block_{index}",
                )
                self.blocks.append(block)
                in_ch = block.out_ch
                index += 1
        self.num_features = in_ch

        if deep:  # ResNet-C/D/E/S deep stem
            self.stem = [
                (
                    _conv(ch, 3, 2 if i == 0 else 1, f"stem_conv{i}"),
                    self.norms.norm_act(f"_stem{i}"),
                )
                for i, ch in enumerate(self.stem_widths)
            ]
        else:  # v2 has no stem norm (Haiku's layout)
            stem_act = None if self.version["preact"] else self.norms.norm_act("_stem")
            self.stem = [(_conv(self.stem_widths[0], 7, 2, "initial_conv"), stem_act)]
        if self.version["preact"]:
            self.final_norm_act = self.norms.norm_act("_final")
        self.fc = hk.Linear(self.num_classes, w_init=self.fc_init, name="linear")

    def __call__(
        self, x: jax.Array, is_training: bool = True, return_metrics: bool = False
    ) -> dict[str, jax.Array]:
        outputs: dict[str, jax.Array] = {}
        with compute_dtype_scope(self.compute_dtype) as dtype:
            out = x.astype(dtype)
            for conv, norm_act in self.stem:
                out = conv(out)
                if norm_act is not None:
                    out = norm_act(out, is_training)
            out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
            metrics = outputs if return_metrics else None
            out = signal_prop.run_residual_blocks(self.blocks, out, is_training, metrics)
            if self.version["preact"]:
                out = self.final_norm_act(out, is_training)
            pool = jnp.mean(out.astype(jnp.float32), axis=(1, 2))
            outputs["pool"] = pool
            outputs["logits"] = self.fc(pool.astype(dtype)).astype(jnp.float32)
        return outputs

    def count_flops(self, h: float, w: float) -> tuple[list[float], float]:
        """Analytic MACs (convolutions, SE and classifier) at input size ``h x w``.

        Returns ``(per-layer list, total)`` like the NF models; spatial sizes are divided
        by the strides as floats (exact for 224 px). Pooling and norms are not counted.
        """
        flops = []
        in_ch = 3
        if len(self.stem_widths) == 1:
            h, w = h / 2, w / 2
            flops.append(self.stem_widths[0] * in_ch * 49 * h * w)
        else:
            h, w = h / 2, w / 2
            for ch in self.stem_widths:
                flops.append(ch * in_ch * 9 * h * w)
                in_ch = ch
        h, w = h / 2, w / 2  # 3x3/2 max-pool
        for block in self.blocks:
            flops.append(block.count_flops(h, w))
            h, w = h / block.stride, w / block.stride
        flops.append(self.num_features * self.num_classes)
        return flops, sum(flops)
