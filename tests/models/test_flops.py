"""The analytic per-conv count and the jaxpr MAC counter against closed forms."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax.models import count_conv_flops, traced_macs


def _conv(**kw):
    return hk.transform(lambda: hk.Conv2D(**kw)).apply({}, None)


def test_count_conv_flops_closed_form():
    # out_ch * h * w / prod(stride) * in_ch / groups * kh * kw, with float division.
    assert count_conv_flops(3, _conv(output_channels=16, kernel_shape=3, stride=2), 224, 224) == (
        16 * 224 * 224 / 4 * 3 * 9
    )
    grouped = _conv(output_channels=768, kernel_shape=3, feature_group_count=6)
    assert count_conv_flops(768, grouped, 14, 14) == 768 * 196 * 128 * 9
    assert count_conv_flops(8, _conv(output_channels=8, kernel_shape=1, stride=2), 7, 7) == (
        8 * 49 / 4 * 8
    )


def test_traced_macs_of_matmul_and_grouped_strided_conv():
    a = jax.ShapeDtypeStruct((5, 8), jnp.float32)
    assert traced_macs(lambda a: a @ np.ones((8, 3), np.float32), a) == 5 * 3 * 8

    x = jax.ShapeDtypeStruct((2, 8, 8, 12), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 4, 6), jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x,
            w,
            (2, 2),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=3,
        )

    # Output 2 x 4 x 4 x 6, each a sum over a 3 x 3 x 4 window.
    assert traced_macs(conv, x, w) == 2 * 4 * 4 * 6 * 3 * 3 * 4
    # Nested jit bodies are counted too.
    assert traced_macs(jax.jit(lambda x, w: conv(x, w) * 2), x, w) == 2 * 4 * 4 * 6 * 36
