"""How a convolution is executed: XLA's native op, one conv per group, or a 1x1 as a dot.

Every implementation computes the same function with the same kernel layout (HWIO, ``I =
C_in / groups``); only the lowering differs:

* ``'native'``: one ``lax.conv_general_dilated`` with ``feature_group_count=groups``.
* ``'per_group'``: split input channels and kernel output channels into ``groups`` slices,
  run one dense convolution per slice and concatenate the outputs. Dense convolutions
  stay native.
* ``'dot'``: as ``'per_group'``, and every dense 1x1 convolution (the per-group slices
  included) is a matrix product over the channel axis, ``y[n, i, j, o] = sum_c x[n, s i,
  s j, c] w[0, 0, c, o]`` (a ``lax.dot_general``) after taking every ``s``-th row and
  column for stride ``s``. A 1x1 kernel reads one pixel, so ``'SAME'`` pads nothing
  (XLA pads ``max((ceil(n/s) - 1) s + 1 - n, 0) = 0``) and a kernel dilation changes
  nothing; explicit padding is applied as zeros first.

On XLA:CPU the native grouped convolution is much slower than the split form, and its
backward pass is dramatically so; the backward pass of a native 1x1 convolution is also
about twice as slow as the same matrix product (see the ``## Model step`` and ``##
Training step`` sections of BENCHMARKS.md). So ``'auto'`` is ``'dot'`` on CPU. On GPU/TPU
the native op is the well-trodden path, so ``'auto'`` picks ``'native'`` there. We had no
GPU/TPU to measure on when choosing this default: the accelerator choice is the
conventional one, not a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "native", "per_group", "dot")
# Padding strings of lax.conv_general_dilated; all of them pad nothing for a 1x1 kernel.
_PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")


def validate_conv_impl(conv_impl: str) -> str:
    """Checks ``conv_impl`` is one of :data:`CONV_IMPLS` and returns it."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(
            f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}. 'auto' uses "
            "'dot' on CPU and 'native' on GPU/TPU."
        )
    return conv_impl


def resolve_conv_impl(conv_impl: str, backend: str | None = None) -> str:
    """Turns ``'auto'`` into the concrete implementation for a backend.

    Args:
        conv_impl: ``'auto'``, ``'native'``, ``'per_group'`` or ``'dot'``.
        backend: a JAX platform name (``'cpu'``, ``'gpu'``, ``'tpu'``...); defaults to
            ``jax.default_backend()``.

    Returns:
        ``'native'``, ``'per_group'`` or ``'dot'``.

    Example:
        >>> resolve_conv_impl('auto', backend='cpu')
        'dot'
        >>> resolve_conv_impl('auto', backend='tpu')
        'native'
    """
    validate_conv_impl(conv_impl)
    if conv_impl != "auto":
        return conv_impl
    backend = backend or jax.default_backend()
    return "dot" if backend == "cpu" else "native"


def _pointwise_as_dot(
    x: jax.Array,
    w: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    dn: lax.ConvDimensionNumbers,
) -> jax.Array | None:
    """A dense 1x1 convolution as a ``dot_general``, or None where that does not apply."""
    rhs_spatial = dn.rhs_spec[2:]
    if any(w.shape[axis] != 1 for axis in rhs_spatial):
        return None
    lhs_spatial = dn.lhs_spec[2:]
    if isinstance(padding, str):
        if padding.upper() not in _PADDING_STRINGS:
            return None
    elif any(lo or hi for lo, hi in padding):
        config = [(0, 0, 0)] * x.ndim
        for axis, (low, high) in zip(lhs_spatial, padding, strict=True):
            if x.shape[axis] + low + high < 1:
                return None  # No input left: the convolution's (empty) output.
            config[axis] = (int(low), int(high), 0)
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
    if any(s != 1 for s in window_strides):
        strides = [1] * x.ndim
        for axis, s in zip(lhs_spatial, window_strides, strict=True):
            strides[axis] = int(s)
        x = lax.slice(x, [0] * x.ndim, x.shape, strides)
    # The kernel as [I, O]; the product's axes are x's without C, in x's order, then O.
    kernel = jnp.transpose(w, (dn.rhs_spec[1], dn.rhs_spec[0], *rhs_spatial))
    kernel = kernel.reshape(w.shape[dn.rhs_spec[1]], w.shape[dn.rhs_spec[0]])
    channel = dn.lhs_spec[1]
    if channel == x.ndim - 1:
        # Channels last (NHWC): one [N H W, C] x [C, O] product. XLA:CPU runs it, and
        # its two gradient products, 10-40% faster than the same dot on the 4-D array.
        y = lax.dot_general(x.reshape(-1, x.shape[-1]), kernel, (((1,), (0,)), ((), ())))
        y = y.reshape(*x.shape[:-1], kernel.shape[1])
    else:
        y = lax.dot_general(x, kernel, (((channel,), (0,)), ((), ())))
    position = lambda axis: axis - (axis > channel)  # where x's axis lands in y
    order = [position(dn.lhs_spec[0]), y.ndim - 1, *(position(a) for a in lhs_spatial)]
    permutation = [0] * y.ndim
    for logical, out_axis in enumerate(dn.out_spec):
        permutation[out_axis] = order[logical]
    if permutation != list(range(y.ndim)):
        y = jnp.transpose(y, permutation)
    return y


def grouped_conv(
    x: jax.Array,
    w: jax.Array,
    *,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: lax.ConvDimensionNumbers | tuple[str, str, str],
    feature_group_count: int = 1,
    conv_impl: str = "auto",
) -> jax.Array:
    """A ``lax.conv_general_dilated`` whose grouped and 1x1 forms are computed as chosen.

    Args:
        x: the input, laid out as ``dimension_numbers`` says (e.g. NHWC).
        w: the kernel, laid out as ``dimension_numbers`` says (e.g. HWIO), with
            ``I = C_in / feature_group_count``.
        window_strides: the spatial strides.
        padding: ``'SAME'`` (TensorFlow/XLA semantics), ``'VALID'`` or explicit pairs.
        rhs_dilation: the kernel dilation (atrous rate); None for none.
        dimension_numbers: as for ``lax.conv_general_dilated``.
        feature_group_count: the number of groups.
        conv_impl: ``'auto'``, ``'native'``, ``'per_group'`` or ``'dot'`` (see the module
            docstring).

    Returns:
        The convolution output; identical (up to float summation order) for every
        ``conv_impl``.

    Example:
        >>> x, w = jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 2, 4))
        >>> y = grouped_conv(x, w, window_strides=(1, 1), padding='SAME',
        ...                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        ...                  feature_group_count=2, conv_impl='per_group')
        >>> y.shape
        (1, 4, 4, 4)
        >>> y = grouped_conv(x, jnp.ones((1, 1, 4, 8)), window_strides=(2, 2),
        ...                  padding='SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        ...                  conv_impl='dot')
        >>> y.shape, float(y[0, 0, 0, 0])
        ((1, 2, 2, 8), 4.0)
    """
    impl = resolve_conv_impl(conv_impl)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers)

    def conv(lhs, rhs, groups):
        if groups == 1 and impl == "dot":
            y = _pointwise_as_dot(lhs, rhs, window_strides, padding, dn)
            if y is not None:
                return y
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides=tuple(window_strides),
            padding=padding,
            rhs_dilation=None if rhs_dilation is None else tuple(rhs_dilation),
            dimension_numbers=dn,
            feature_group_count=groups,
        )

    groups = int(feature_group_count)
    if groups == 1 or impl == "native":
        return conv(x, w, groups)

    in_axis = dn.lhs_spec[1]  # the channel axis of x
    out_axis_w = dn.rhs_spec[0]  # the output-feature axis of the kernel
    out_axis_y = dn.out_spec[1]  # the channel axis of the result
    if x.shape[in_axis] % groups or w.shape[out_axis_w] % groups:
        raise ValueError(
            f"feature_group_count={groups} must divide the input channels "
            f"({x.shape[in_axis]}) and the output channels ({w.shape[out_axis_w]})."
        )
    xs = jnp.split(x, groups, axis=in_axis)
    ws = jnp.split(w, groups, axis=out_axis_w)
    return jnp.concatenate(
        [conv(xg, wg, 1) for xg, wg in zip(xs, ws, strict=True)], axis=out_axis_y
    )
