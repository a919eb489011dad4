"""Fixup ResNet: the unnormalized, specially initialised baseline of the NF-ResNet paper.

Fixup (Zhang, Dauphin, Ma 2019; spec ``nfnets.md`` section 2.13) removes normalization
and rescales the initialisation so residual branches start at zero: post-activation
bottlenecks with bias-free convolutions, scalar biases ``bias1a, bias1b, bias2a, bias2b,
bias3a, bias3b`` (zeros) and a scalar ``scale`` (ones) per block, a model-level ``bias1``
after the stem conv and ``bias2`` before the classifier (zero-initialised), and

==================== ======================================
weight               initial stddev
==================== ======================================
``conv0`` (1x1)      ``sqrt(2 / width) * L^(-1/4)``
``conv1`` (3x3)      ``sqrt(2 / (9 width)) * L^(-1/4)``
``conv2`` (1x1)      0 (zero init)
``conv_shortcut``    ``sqrt(2 / out)``
==================== ======================================

with ``L`` the total number of blocks (He initialisation by fan-out, scaled by Fixup's
``L^(-1/(2m-2))`` for ``m = 3`` layers per branch). The stem conv is He-initialised.
The stage layout is the NF-ResNet's (see :mod:`nfnets_jax.models.skipinit_resnet`).

References:
    Zhang, Dauphin, Ma. Fixup Initialization: Residual Learning Without Normalization.
    arXiv:1901.09321.
    Brock, De, Smith. arXiv:2101.08692 (section 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models import signal_prop
from nfnets_jax.models.precision import compute_dtype_scope, resolve_compute_dtype
from nfnets_jax.models.skipinit_resnet import max_pool, resnet_layout, stem_conv
from nfnets_jax.models.validation import check_fraction, check_positive_int

__all__ = ["FixupBlock", "FixupResNet"]


class FixupBlock(hk.Module):
    """Post-activation Fixup bottleneck.

    Forward::

        h = relu(conv0(x + bias1a) + bias1b)
        h = relu(conv1(h + bias2a) + bias2b)           # conv1: 3x3 with the stride
        h = conv2(h + bias3a) * scale + bias3b         # conv2 starts at zero
        shortcut = conv_shortcut(x + bias1a) if projection else x
        return relu(h + shortcut), h
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, num_blocks: int, name=None):
        super().__init__(name=name)
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.width = max(1, out_ch // 4)
        self.use_projection = stride > 1 or in_ch != out_ch
        # Fixup's rescaling L^(-1/(2m-2)) with m = 3 layers per branch (Zhang et al. 2019).
        depth_scale = num_blocks ** (-0.25)
        width = self.width

        def conv(ch, k, s, stddev, name):
            w_init = jnp.zeros if stddev == 0 else hk.initializers.RandomNormal(stddev)
            return hk.Conv2D(
                ch, k, stride=s, padding="SAME", with_bias=False, w_init=w_init, name=name
            )

        self.conv0 = conv(width, 1, 1, math.sqrt(2 / width) * depth_scale, "conv0")
        self.conv1 = conv(width, 3, stride, math.sqrt(2 / (width * 9)) * depth_scale, "conv1")
        self.conv2 = conv(out_ch, 1, 1, 0.0, "conv2")
        if self.use_projection:
            self.conv_shortcut = conv(out_ch, 1, stride, math.sqrt(2 / out_ch), "conv_shortcut")

    def __call__(self, x: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
        del is_training

        def scalar(name, init=jnp.zeros):
            return hk.get_parameter(name, (), jnp.float32, init=init).astype(x.dtype)

        x_in = x + scalar("bias1a")
        h = jax.nn.relu(self.conv0(x_in) + scalar("bias1b"))
        h = jax.nn.relu(self.conv1(h + scalar("bias2a")) + scalar("bias2b"))
        h = self.conv2(h + scalar("bias3a")) * scalar("scale", jnp.ones) + scalar("bias3b")
        shortcut = self.conv_shortcut(x_in) if self.use_projection else x
        return jax.nn.relu(h + shortcut), h


class FixupResNet(hk.Module):
    """Fixup ResNet (module name ``Fixup_ResNet``): no normalization, Fixup initialization.

    ``__call__(x, is_training=True, return_metrics=False)`` returns ``{'pool', 'logits'}``
    (float32) and the signal-propagation metrics when asked. At initialization every
    block's branch is exactly zero (``conv2 = 0``), so identity blocks return their
    (non-negative) input.

    Example:
        The parameters of a block (``jax.eval_shape`` builds the tree without computing
        it; ``f.init`` gives the values):

        >>> f = hk.transform(lambda x: FixupResNet(10, 'ResNet26', width=1)(x, False))
        >>> x = jnp.ones((1, 32, 32, 3))
        >>> sorted(jax.eval_shape(f.init, jax.random.key(0), x)['Fixup_ResNet/~/res_block_1'])
        ['bias1a', 'bias1b', 'bias2a', 'bias2b', 'bias3a', 'bias3b', 'scale']
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "ResNet50",
        width: int = 4,
        *,
        drop_rate: float = 0.0,
        depth_pattern: Sequence[int] | None = None,
        compute_dtype: Any = None,
        name: str = "Fixup_ResNet",
    ):
        """Builds the network.

        Args:
            num_classes: classifier outputs.
            variant: ``'ResNet26'`` ... ``'ResNet600'`` (the NF-ResNet depths).
            width: multiplier on ``[64, 128, 256, 512]`` and the ``16 * width`` stem.
            drop_rate: dropout before the classifier.
            depth_pattern: blocks per stage overriding the variant's.
            compute_dtype: activation dtype; parameters stay float32.
            name: module name.
        """
        super().__init__(name=name)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.width = check_positive_int("width", width)
        self.drop_rate = check_fraction("drop_rate", drop_rate)
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        self.depth_pattern, layout = resnet_layout(variant, self.width, depth_pattern)
        self.blocks = [
            FixupBlock(i, o, s, len(layout), name=f"res_block_{k}")
            for k, (i, o, s) in enumerate(layout)
        ]
        # He initialisation of the stem (Fixup rescales the residual branches only).
        self.initial_conv = stem_conv(
            16 * self.width, hk.initializers.VarianceScaling(2.0, "fan_in", "normal")
        )
        self.fc = hk.Linear(self.num_classes, w_init=jnp.zeros, name="linear")

    def __call__(
        self, x: jax.Array, is_training: bool = True, return_metrics: bool = False
    ) -> dict[str, jax.Array]:
        outputs: dict[str, jax.Array] = {}
        with compute_dtype_scope(self.compute_dtype) as dtype:
            bias1 = hk.get_parameter("bias1", (), jnp.float32, init=jnp.zeros).astype(dtype)
            bias2 = hk.get_parameter("bias2", (), jnp.float32, init=jnp.zeros).astype(dtype)
            out = self.initial_conv(x.astype(dtype))
            out = max_pool(jax.nn.relu(out + bias1))
            metrics = outputs if return_metrics else None
            out = signal_prop.run_residual_blocks(self.blocks, out, is_training, metrics)
            pool = jnp.mean(out.astype(jnp.float32), axis=(1, 2))
            outputs["pool"] = pool
            pool = pool.astype(dtype) + bias2
            if is_training and self.drop_rate > 0.0:
                pool = hk.dropout(hk.next_rng_key(), self.drop_rate, pool)
            outputs["logits"] = self.fc(pool).astype(jnp.float32)
        return outputs
