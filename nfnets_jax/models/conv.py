"""How a (grouped) convolution is executed: XLA's native grouped conv, or one conv per group.

Both implementations compute the same function with the same kernel layout (HWIO, ``I =
C_in / groups``); only the lowering differs:

* ``'native'``: one ``lax.conv_general_dilated`` with ``feature_group_count=groups``.
* ``'per_group'``: split input channels and kernel output channels into ``groups`` slices,
  run one dense convolution per slice and concatenate the outputs.

On XLA:CPU the native grouped convolution is much slower than the split form, and its
backward pass is dramatically so (see the ``## Model step`` section of BENCHMARKS.md,
measured with ``python -m benchmarks.model_step --grouped-only``). On GPU/TPU the native
op is the well-trodden path, so ``'auto'`` picks it there. We had no GPU/TPU to measure on
when choosing this default: the accelerator choice is the conventional one, not a
measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "native", "per_group")


def validate_conv_impl(conv_impl: str) -> str:
    """Checks ``conv_impl`` is one of :data:`CONV_IMPLS` and returns it."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(
            f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}. 'auto' uses "
            "'per_group' on CPU and 'native' on GPU/TPU."
        )
    return conv_impl


def resolve_conv_impl(conv_impl: str, backend: str | None = None) -> str:
    """Turns ``'auto'`` into the concrete implementation for a backend.

    Args:
        conv_impl: ``'auto'``, ``'native'`` or ``'per_group'``.
        backend: a JAX platform name (``'cpu'``, ``'gpu'``, ``'tpu'``...); defaults to
            ``jax.default_backend()``.

    Returns:
        ``'native'`` or ``'per_group'``.

    Example:
        >>> resolve_conv_impl('auto', backend='cpu')
        'per_group'
        >>> resolve_conv_impl('auto', backend='tpu')
        'native'
    """
    validate_conv_impl(conv_impl)
    if conv_impl != "auto":
        return conv_impl
    backend = backend or jax.default_backend()
    return "per_group" if backend == "cpu" else "native"


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
    """A ``lax.conv_general_dilated`` whose grouped form is computed as chosen.

    Args:
        x: the input, laid out as ``dimension_numbers`` says (e.g. NHWC).
        w: the kernel, laid out as ``dimension_numbers`` says (e.g. HWIO), with
            ``I = C_in / feature_group_count``.
        window_strides: the spatial strides.
        padding: ``'SAME'`` (TensorFlow/XLA semantics), ``'VALID'`` or explicit pairs.
        rhs_dilation: the kernel dilation (atrous rate); None for none.
        dimension_numbers: as for ``lax.conv_general_dilated``.
        feature_group_count: the number of groups.
        conv_impl: ``'auto'``, ``'native'`` or ``'per_group'`` (see the module docstring).

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
    """
    impl = resolve_conv_impl(conv_impl)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers)
    conv = lambda lhs, rhs, groups: lax.conv_general_dilated(
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
