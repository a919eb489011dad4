"""How a convolution is executed: XLA's native op, one conv per group, or matrix products.

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
* ``'patches'``: as ``'dot'``, and the kernel gradient of every dense ``k x k``
  convolution (the per-group slices included) with at least :data:`PATCHES_MIN_POSITIONS`
  output positions per image is one matrix product of the input's patches (im2col) with
  the output gradient. Its forward pass and input gradient stay native, and the patches
  are rebuilt in the backward pass rather than kept (see
  :func:`_with_patch_kernel_gradient`). Forward-mode and higher-order derivatives work.

On XLA:CPU the native grouped convolution is much slower than the split form, and its
backward pass is dramatically so; the backward pass of a native 1x1 convolution is also
about twice as slow as the same matrix product (see the ``## Model step`` and ``##
Training step`` sections of BENCHMARKS.md). XLA:CPU computes a 3x3 kernel gradient as a
convolution over a transposed copy of the input, well below its matrix-product speed at
large spatial sizes: ``'patches'`` makes the F0 training step faster than ``'dot'``.
Taking every 3x3 kernel gradient from patches, below 32 x 32 outputs too, made the step
no faster and its compilation half as long again (``patches@1`` in ``## Training step``),
hence the threshold. So ``'auto'`` is ``'patches'`` on CPU. On GPU/TPU
the native op is the well-trodden path, so ``'auto'`` picks ``'native'`` there. We had no
GPU/TPU to measure on when choosing this default: the accelerator choice is the
conventional one, not a measurement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

CONV_IMPLS = ("auto", "native", "per_group", "dot", "patches")
#: ``'patches'`` computes a kernel gradient from patches where a convolution has at least
#: this many output positions per image (32 x 32), and natively below.
PATCHES_MIN_POSITIONS = 32 * 32
# Padding strings of lax.conv_general_dilated; all of them pad nothing for a 1x1 kernel.
_PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")


def validate_conv_impl(conv_impl: str) -> str:
    """Checks ``conv_impl`` is one of :data:`CONV_IMPLS` and returns it."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(
            f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}. 'auto' uses "
            "'patches' on CPU and 'native' on GPU/TPU."
        )
    return conv_impl


def resolve_conv_impl(conv_impl: str, backend: str | None = None) -> str:
    """Turns ``'auto'`` into the concrete implementation for a backend.

    Args:
        conv_impl: ``'auto'``, ``'native'``, ``'per_group'``, ``'dot'`` or ``'patches'``.
        backend: a JAX platform name (``'cpu'``, ``'gpu'``, ``'tpu'``...); defaults to
            ``jax.default_backend()``.

    Returns:
        ``'native'``, ``'per_group'``, ``'dot'`` or ``'patches'``.

    Example:
        >>> resolve_conv_impl('auto', backend='cpu')
        'patches'
        >>> resolve_conv_impl('auto', backend='tpu')
        'native'
    """
    validate_conv_impl(conv_impl)
    if conv_impl != "auto":
        return conv_impl
    backend = backend or jax.default_backend()
    return "patches" if backend == "cpu" else "native"


def _conv_as_dot(
    x: jax.Array,
    w: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None,
    dn: lax.ConvDimensionNumbers,
) -> jax.Array | None:
    """A dense convolution as one ``dot_general``, or None where that does not apply.

    A 1x1 kernel contracts the channel axis of the (strided) input, in any layout. A
    larger kernel needs channels last: the ``k_h k_w`` shifted, strided views of the padded
    input are concatenated along the channels (im2col, in the kernel's row-major order)
    and multiplied with the kernel as a ``[k_h k_w I, O]`` matrix.
    """
    rhs_spatial, lhs_spatial = dn.rhs_spec[2:], dn.lhs_spec[2:]
    window = [w.shape[axis] for axis in rhs_spatial]
    channel = dn.lhs_spec[1]
    pointwise = all(k == 1 for k in window)
    if not pointwise and channel != x.ndim - 1:
        return None
    dilation = [1] * len(window) if rhs_dilation is None or pointwise else list(rhs_dilation)
    extent = [(k - 1) * d + 1 for k, d in zip(window, dilation, strict=True)]
    sizes = [x.shape[axis] for axis in lhs_spatial]
    if isinstance(padding, str):
        if padding.upper() not in _PADDING_STRINGS:
            return None
        # 'SAME' pads nothing for a 1x1 kernel: max((ceil(n/s) - 1) s + 1 - n, 0) = 0.
        pads = lax.padtype_to_pads(sizes, extent, window_strides, padding)
    else:
        pads = [(int(low), int(high)) for low, high in padding]
    padded = [n + low + high for n, (low, high) in zip(sizes, pads, strict=True)]
    if any(n < e for n, e in zip(padded, extent, strict=True)):
        return None  # No complete window: the convolution's (empty) output.
    if any(low or high for low, high in pads):
        config = [(0, 0, 0)] * x.ndim
        for axis, (low, high) in zip(lhs_spatial, pads, strict=True):
            config[axis] = (low, high, 0)
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
    out = [(n - e) // s + 1 for n, e, s in zip(padded, extent, window_strides, strict=True)]
    views = []
    for offsets in itertools.product(*(range(k) for k in window)):
        start, limit, strides = [0] * x.ndim, list(x.shape), [1] * x.ndim
        placed = zip(lhs_spatial, offsets, dilation, window_strides, out, strict=True)
        for axis, i, d, s, n in placed:
            start[axis], limit[axis], strides[axis] = i * d, i * d + (n - 1) * s + 1, s
        views.append(lax.slice(x, start, limit, strides))
    x = views[0] if pointwise else jnp.concatenate(views, axis=channel)
    # The kernel as [k_h k_w I, O], rows in the order of the concatenated views.
    kernel = jnp.transpose(w, (*rhs_spatial, dn.rhs_spec[1], dn.rhs_spec[0]))
    kernel = kernel.reshape(-1, w.shape[dn.rhs_spec[0]])
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


def _with_patch_kernel_gradient(
    native: Callable[[jax.Array, jax.Array], jax.Array],
    as_dot: Callable[[jax.Array, jax.Array], jax.Array],
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``native``, differentiated so that the kernel's part is ``as_dot`` (im2col).

    A convolution is bilinear, so its tangent is ``native(dx, w) + as_dot(x, dw)``: the
    same function, with the kernel's term in the im2col form. Transposed for the backward
    pass, that term is one ``[k_h k_w I, N H W] x [N H W, O]`` matrix product, where XLA
    transposes the native convolution into a kernel-gradient convolution that XLA:CPU runs
    far below its matrix-product speed. The forward and the input gradient stay native.
    The kernel term is rematerialized (``jax.checkpoint``), so the backward pass rebuilds
    the patches from ``x`` instead of keeping ``k_h k_w`` copies of it alive. A custom JVP
    (not VJP) keeps forward-mode and higher-order differentiation working.
    """
    kernel_term = jax.checkpoint(as_dot)

    @jax.custom_jvp
    def conv(x, w):
        return native(x, w)

    def conv_jvp(primals, tangents):
        (x, w), (dx, dw) = primals, tangents
        y = native(x, w)
        terms = []
        if not isinstance(dx, SymbolicZero):
            terms.append(native(dx, w))
        if not isinstance(dw, SymbolicZero):
            terms.append(kernel_term(x, dw))
        return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)

    conv.defjvp(conv_jvp, symbolic_zeros=True)
    return conv


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
        conv_impl: ``'auto'``, ``'native'``, ``'per_group'``, ``'dot'`` or ``'patches'``
            (see the module docstring).

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

    def output_positions(lhs, rhs):
        shape = jax.eval_shape(native, lhs, rhs).shape
        return math.prod(shape[axis] for axis in dn.out_spec[2:])

    def native(lhs, rhs, groups=1):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides=tuple(window_strides),
            padding=padding,
            rhs_dilation=None if rhs_dilation is None else tuple(rhs_dilation),
            dimension_numbers=dn,
            feature_group_count=groups,
        )

    def as_dot(lhs, rhs):
        y = _conv_as_dot(lhs, rhs, window_strides, padding, rhs_dilation, dn)
        return native(lhs, rhs) if y is None else y

    def conv(lhs, rhs, groups):
        if groups == 1 and impl in ("dot", "patches"):
            if all(rhs.shape[axis] == 1 for axis in dn.rhs_spec[2:]):
                return as_dot(lhs, rhs)
            if impl == "patches" and output_positions(lhs, rhs) >= PATCHES_MIN_POSITIONS:
                return _with_patch_kernel_gradient(native, as_dot)(lhs, rhs)
        return native(lhs, rhs, groups)

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
