"""FLOP counting, in multiply-accumulates (MACs) as the NFNet papers count "FLOPs".

Two independent counters:

* :func:`count_conv_flops` / :func:`count_flops` reproduce DeepMind's analytic count
  (``model.count_flops(h, w)``): convolutions, SE linears and the classifier; activations,
  pooling, biases and the weight-standardization arithmetic are not counted; spatial sizes
  are divided as floats by the strides.
* :func:`traced_macs` counts the MACs of every convolution and matrix product in a traced
  function's jaxpr, from the actual shapes. It agrees with the analytic count whenever
  every strided layer sees an even input size (e.g. 224 px), and works on any model.

Multiply by 2 for arithmetic operations (one multiply and one add per MAC), and by
about 3 for a forward plus backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import numpy as np
from jax.extend import core as jex_core


def count_conv_flops(in_ch: int, conv: hk.Conv2D, h: float, w: float) -> float:
    """MACs of one 2D convolution, as DeepMind's ``base.count_conv_flops`` counts them.

    .. math::  C_{out} \\cdot \\frac{h w}{s_h s_w} \\cdot \\frac{C_{in}}{G} \\cdot k_h k_w

    Args:
        in_ch: input channels.
        conv: an ``hk.Conv2D`` (e.g. ``WSConv2D``) giving kernel, stride, groups, outputs.
        h: input height (a float after strided layers).
        w: input width.

    Returns:
        The MAC count (a float; exact for SAME padding and divisible sizes).

    Example:
        >>> conv = hk.transform(lambda: hk.Conv2D(16, 3, stride=2)).apply({}, None)
        >>> count_conv_flops(3, conv, 224, 224)
        5419008.0
    """
    kh, kw = conv.kernel_shape
    sh, sw = conv.stride
    return (
        conv.output_channels * (h * w) / (sh * sw) * (in_ch / conv.feature_group_count) * (kh * kw)
    )


def count_flops(model_fn: Callable[[], Any], h: float, w: float) -> float:
    """Total analytic MACs of a model built by ``model_fn`` at input size ``h x w``.

    Haiku modules can only be constructed inside a transform; this builds the model in a
    throwaway one (creating no parameters) and sums ``model.count_flops(h, w)``.

    Args:
        model_fn: a no-argument callable returning a model with a ``count_flops(h, w)``
            method returning ``(per_layer_list, total)``, e.g.
            ``lambda: NFNet(1000, 'F0')``.
        h: input height in pixels.
        w: input width in pixels.

    Returns:
        The total MAC count.

    Example:
        >>> from nfnets_jax.models import NFNet
        >>> round(count_flops(lambda: NFNet(1000, 'F0'), 256, 256) / 1e9, 3)
        12.384
    """
    counted = hk.transform(lambda: model_fn().count_flops(h, w))
    _, total = counted.apply({}, None)
    return float(total)


def _sub_jaxprs(eqn) -> list:
    subs = []
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jex_core.ClosedJaxpr):
                subs.append(v.jaxpr)
            elif isinstance(v, jex_core.Jaxpr):
                subs.append(v)
    return subs


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out_shape = eqn.outvars[0].aval.shape
            rhs_shape = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            per_output = rhs_shape[rhs_spec[1]] * int(np.prod([rhs_shape[d] for d in rhs_spec[2:]]))
            total += int(np.prod(out_shape)) * per_output
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = int(np.prod([lhs_shape[d] for d in lhs_contract]))
            total += int(np.prod(eqn.outvars[0].aval.shape)) * contracted
        for sub in _sub_jaxprs(eqn):
            total += _jaxpr_macs(sub)
    return total


def traced_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """MACs of every convolution and matrix product ``fn(*args, **kwargs)`` would run.

    Traces ``fn`` abstractly (``args`` may be ``jax.ShapeDtypeStruct``; nothing is
    computed or allocated) and sums, over ``conv_general_dilated`` and ``dot_general``
    equations (including nested jit/remat/custom-derivative bodies), output elements times
    the size of the contracted window.

    Args:
        fn: the function to trace, e.g. a transformed model's ``apply``.
        *args: its positional arguments (arrays or ``jax.ShapeDtypeStruct``).
        **kwargs: its static keyword arguments.

    Returns:
        The MAC count as an int.

    Example:
        >>> x = jax.ShapeDtypeStruct((1, 8), np.float32)
        >>> traced_macs(lambda a: a @ np.ones((8, 4), np.float32), x)
        32
    """
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    return _jaxpr_macs(closed.jaxpr)
