"""SkipInit ResNet: the unnormalized residual baseline of the NF-ResNet paper.

SkipInit (De & Smith 2020) removes normalization and instead starts every residual
block as the identity (spec ``nfnets.md`` section 2.13): pre-activation bottlenecks with
plain ``hk.Conv2D`` (biases ``b`` in the blocks, none in the stem), unscaled activations
(``relu``, ``swish``/``silu`` or ``identity``), a learnable scalar ``skip_gain``
initialised to 0 on every residual branch, no alpha/beta, a zero-initialised classifier
and a mandatory dropout rate.

The stage layout (depths, widths ``[64, 128, 256, 512] * width`` output channels with a
1/4 bottleneck, 7x7/2 stem of ``16 * width`` channels and a 3x3/2 max-pool) is the
NF-ResNet's, so SkipInit, Fixup (:mod:`nfnets_jax.models.fixup_resnet`) and NF-ResNets
are compared at equal size.

References:
    De, Smith. Batch Normalization Biases Residual Blocks Towards the Identity Function in
    Deep Networks. arXiv:2002.10444.
    Brock, De, Smith. arXiv:2101.08692 (section 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models import signal_prop
from nfnets_jax.models.activations import get_plain_activation
from nfnets_jax.models.nf_resnet import BASE_WIDTHS, STAGE_STRIDES, nf_resnet_params
from nfnets_jax.models.precision import compute_dtype_scope, resolve_compute_dtype
from nfnets_jax.models.validation import check_fraction, check_positive_int, check_positive_ints

__all__ = ["SkipInitBlock", "SkipInitResNet", "max_pool", "resnet_layout", "stem_conv"]

# The activations DeepMind's SkipInit ResNet accepts (spec nfnets.md 2.13).
SKIPINIT_ACTIVATIONS = ("relu", "swish", "silu", "identity")


def resnet_layout(
    variant: str, width: int, depth_pattern: Sequence[int] | None
) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Blocks per stage and ``(in_ch, out_ch, stride)`` of every block (NF-ResNet layout).

    Example:
        >>> resnet_layout('ResNet26', 1, (1, 1, 1, 1))[1]
        [(16, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
    """
    if variant not in nf_resnet_params:
        raise ValueError(
            f"Unknown ResNet variant {variant!r}. Known variants: {', '.join(nf_resnet_params)}."
        )
    depths = check_positive_ints(
        "depth_pattern",
        nf_resnet_params[variant]["depth"] if depth_pattern is None else depth_pattern,
    )
    if len(depths) != len(STAGE_STRIDES):
        raise ValueError(f"depth_pattern needs {len(STAGE_STRIDES)} stages, got {depths}.")
    layout = []  # (in_ch, out_ch, stride) per block
    in_ch = 16 * width
    for depth, base, stride in zip(depths, BASE_WIDTHS, STAGE_STRIDES, strict=True):
        for j in range(depth):
            layout.append((in_ch, base * width, stride if j == 0 else 1))
            in_ch = base * width
    return depths, layout


def stem_conv(channels: int, w_init: hk.initializers.Initializer | None = None) -> hk.Conv2D:
    """The bias-free 7x7/2 SAME stem convolution ``initial_conv``."""
    return hk.Conv2D(
        channels, 7, stride=2, padding="SAME", with_bias=False, w_init=w_init, name="initial_conv"
    )


def max_pool(x: jax.Array) -> jax.Array:
    """The stem's 3x3/2 SAME max-pool."""
    return hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")


class SkipInitBlock(hk.Module):
    """Pre-activation bottleneck with a zero-initialised scalar gain on the branch.

    Forward::

        a = act(x); shortcut = conv_shortcut(a) if projection else x
        h = conv2(act(conv1(act(conv0(a)))))          # conv1: 3x3 with the stride
        return h * skip_gain + shortcut, h
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, activation, name: str | None = None):
        super().__init__(name=name)
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.width = max(1, out_ch // 4)
        self.activation = activation
        self.use_projection = stride > 1 or in_ch != out_ch
        conv = lambda ch, k, s, n: hk.Conv2D(ch, k, stride=s, padding="SAME", name=n)
        self.conv0 = conv(self.width, 1, 1, "conv0")
        self.conv1 = conv(self.width, 3, stride, "conv1")
        self.conv2 = conv(out_ch, 1, 1, "conv2")
        if self.use_projection:
            self.conv_shortcut = conv(out_ch, 1, stride, "conv_shortcut")

    def __call__(self, x: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
        del is_training
        a = self.activation(x)
        shortcut = self.conv_shortcut(a) if self.use_projection else x
        h = self.conv0(a)
        h = self.conv1(self.activation(h))
        h = self.conv2(self.activation(h))
        skip_gain = hk.get_parameter("skip_gain", (), jnp.float32, init=jnp.zeros)
        return h * skip_gain.astype(h.dtype) + shortcut, h


class SkipInitResNet(hk.Module):
    """SkipInit ResNet (module name ``SkipInit_ResNet``), DeepMind's unnormalized baseline.

    ``__call__(x, is_training=True, return_metrics=False)`` returns ``{'pool', 'logits'}``
    (float32) and the signal-propagation metrics when asked. At initialization every
    block returns its input (``skip_gain = 0``).

    Example:
        ``jax.eval_shape`` runs ``init`` and ``apply`` abstractly: the trees and shapes,
        nothing computed (call ``f.init``/``f.apply`` for values):

        >>> f = hk.transform(lambda x: SkipInitResNet(10, 'ResNet26', width=1,
        ...                                           drop_rate=0.0)(x, False))
        >>> x = jnp.ones((1, 32, 32, 3))
        >>> params = jax.eval_shape(f.init, jax.random.key(0), x)
        >>> params['SkipInit_ResNet/~/res_block_0']['skip_gain'].shape  # a scalar gain
        ()
        >>> sum('skip_gain' in module for module in params.values())  # ResNet-26: 8 blocks
        8
        >>> jax.eval_shape(f.apply, params, None, x)['logits'].shape
        (1, 10)
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "ResNet50",
        width: int = 4,
        *,
        drop_rate: float,
        activation: str = "relu",
        depth_pattern: Sequence[int] | None = None,
        compute_dtype: Any = None,
        name: str = "SkipInit_ResNet",
    ):
        """Builds the network.

        Args:
            num_classes: classifier outputs.
            variant: ``'ResNet26'`` ... ``'ResNet600'`` (the NF-ResNet depths).
            width: multiplier on ``[64, 128, 256, 512]`` and the ``16 * width`` stem.
            drop_rate: dropout before the classifier (required, as in the original).
            activation: ``'relu'``, ``'swish'``/``'silu'`` or ``'identity'`` (unscaled).
            depth_pattern: blocks per stage overriding the variant's.
            compute_dtype: activation dtype; parameters stay float32.
            name: module name.
        """
        super().__init__(name=name)
        if activation not in SKIPINIT_ACTIVATIONS:
            raise ValueError(
                f"SkipInit ResNet activation must be one of {SKIPINIT_ACTIVATIONS}, got "
                f"{activation!r}."
            )
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.width = check_positive_int("width", width)
        self.drop_rate = check_fraction("drop_rate", drop_rate)
        self.activation = get_plain_activation(activation)
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        self.depth_pattern, layout = resnet_layout(variant, self.width, depth_pattern)
        self.blocks = [
            SkipInitBlock(i, o, s, self.activation, name=f"res_block_{k}")
            for k, (i, o, s) in enumerate(layout)
        ]
        self.initial_conv = stem_conv(16 * self.width)
        self.fc = hk.Linear(self.num_classes, w_init=jnp.zeros, name="linear")

    def __call__(
        self, x: jax.Array, is_training: bool = True, return_metrics: bool = False
    ) -> dict[str, jax.Array]:
        outputs: dict[str, jax.Array] = {}
        with compute_dtype_scope(self.compute_dtype) as dtype:
            out = max_pool(self.initial_conv(x.astype(dtype)))
            metrics = outputs if return_metrics else None
            out = signal_prop.run_residual_blocks(self.blocks, out, is_training, metrics)
            pool = jnp.mean(self.activation(out).astype(jnp.float32), axis=(1, 2))
            outputs["pool"] = pool
            if is_training and self.drop_rate > 0.0:
                pool = hk.dropout(hk.next_rng_key(), self.drop_rate, pool)
            outputs["logits"] = self.fc(pool.astype(dtype)).astype(jnp.float32)
        return outputs
