"""Adaptive Gradient Clipping (AGC) as an optax transformation.

For every *unit* ``i`` of a parameter (the weights into one output of a linear layer, one
conv output channel, or a whole vector/scalar), AGC compares the gradient norm with the
parameter norm:

.. math::

    G_i \\leftarrow \\begin{cases}
        G_i \\cdot \\dfrac{\\lambda \\max(\\|W_i\\|, \\epsilon)}{\\max(\\|G_i\\|, 10^{-6})}
            & \\text{if } \\|G_i\\| > \\lambda \\max(\\|W_i\\|, \\epsilon) \\\\
        G_i & \\text{otherwise (bit-for-bit untouched)}
    \\end{cases}

with clipping threshold :math:`\\lambda` (``clipping``, 0.01 for NFNets at batch 1024-4096)
and :math:`\\epsilon = 10^{-3}` so zero-initialised parameters (biases, ``skip_gain``) can
still move. Norms are always computed in float32, whatever the gradient dtype.

References:
    Brock et al., High-Performance Large-Scale Image Recognition Without Normalization,
    arXiv:2102.06171, section 4.1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nfnets_jax.optim import masks

__all__ = [
    "AdaptiveGradClipState",
    "adaptive_grad_clip",
    "default_unit_axes",
    "unitwise_clip",
    "unitwise_norm",
]

Axes = int | Sequence[int]
# Per-parameter unit layouts: {path regex: axes}, the first full match wins.
UnitAxes = Mapping[str, Axes]

# Floor on the gradient norm in the rescale factor, from the original SGD_AGC. It prevents
# 0/0 and only matters for gradient norms below 1e-6 (thresholds that small arise for zero
# parameters with a small `clipping`), where it clips to less than the threshold.
_DIV_EPS = 1e-6


class AdaptiveGradClipState(NamedTuple):
    """What the last AGC update did, for logging; never feeds back into the numerics.

    Attributes:
        clip_fraction: fraction of units (over every leaf this transformation saw) whose
            gradient was rescaled in the last update, a float32 scalar in [0, 1].
        max_ratio: largest ``||G_i|| / max(||W_i||, eps)`` over those units in the last
            update, before clipping (a unit is clipped where this exceeds ``clipping``).
    """

    clip_fraction: jax.Array
    max_ratio: jax.Array


def default_unit_axes(shape: Sequence[int]) -> tuple[int, ...]:
    """The axes AGC reduces over for a parameter of this shape (Haiku layouts).

    - Scalars and vectors (``squeeze(x).ndim <= 1``: biases, gains, ``skip_gain``, and
      weights with a single unit such as a ``(1, n)`` linear): every axis, one unit.
    - Rank 2 ``(in, out)`` linear and rank 3 ``(in, heads, head_dim)`` multi-head linear:
      axis 0, one unit per output.
    - Rank 4 ``HWIO`` conv: axes ``(0, 1, 2)``, one unit per output channel.
    - Rank 5 ``DHWIO`` 3-D conv: axes ``(0, 1, 2, 3)``, one unit per output channel.

    Ranks 0-4 are the original ``unitwise_norm``; rank 5 extends it the same way. A rank-3
    1-D conv kernel ``(W, I, O)`` needs ``unit_axes`` to override this to ``(0, 1)``.

    Args:
        shape: the parameter's shape.

    Returns:
        The tuple of axes to reduce.

    Raises:
        ValueError: rank 6 or more, which has no conventional layout.

    Example:
        >>> default_unit_axes((3, 3, 16, 32)), default_unit_axes((256,)), default_unit_axes(())
        ((0, 1, 2), (0,), ())
    """
    shape = tuple(shape)
    ndim = len(shape)
    if sum(d != 1 for d in shape) <= 1:
        return tuple(range(ndim))
    if ndim in (2, 3):
        return (0,)
    if ndim == 4:
        return (0, 1, 2)
    if ndim == 5:
        return (0, 1, 2, 3)
    raise ValueError(
        f"AGC has no default unit layout for a parameter of shape {shape} (rank {ndim}); "
        "pass unit_axes={path_regex: axes} to adaptive_grad_clip to say which axes form "
        "one unit."
    )


def _normalise_axes(axes: Axes, ndim: int, where: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(f"{where}: unit axes {axes} are invalid for a rank-{ndim} parameter.")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def unitwise_norm(x: jax.Array, axes: Axes | None = None) -> jax.Array:
    """L2 norm of each unit of ``x``, in float32, with the reduced axes kept as size 1.

    .. math:: \\|x_i\\| = \\Big(\\sum_{j \\in \\text{unit } i} x_j^2\\Big)^{1/2}

    Args:
        x: a parameter or gradient array (any float dtype; bfloat16 is upcast first).
        axes: axes forming one unit; ``None`` uses :func:`default_unit_axes`.

    Returns:
        float32 array of norms with ``x.ndim`` dimensions, broadcastable against ``x``
        (a shape of all ones for scalars and vectors).

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[3.0, 0.0], [4.0, 1.0]])  # (in=2, out=2): units are columns
        >>> unitwise_norm(w).tolist()
        [[5.0, 1.0]]
    """
    x = jnp.asarray(x)
    axes = default_unit_axes(x.shape) if axes is None else _normalise_axes(axes, x.ndim, "x")
    x32 = x.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(x32 * x32, axis=axes, keepdims=True))


def unitwise_clip(
    grad: jax.Array,
    grad_norm: jax.Array,
    max_norm: jax.Array,
    div_eps: float = _DIV_EPS,
) -> jax.Array:
    """Rescales the units of ``grad`` whose norm exceeds ``max_norm``; others are untouched.

    .. math:: g \\leftarrow g \\cdot \\frac{m}{\\max(\\|g\\|, \\delta)} \\text{ where }
        \\|g\\| > m, \\text{ else } g

    The comparison is strict, as in the original ``SGD_AGC``: a unit exactly at the
    threshold is returned bit-for-bit. The rescale is done in float32 and cast back to
    ``grad.dtype``.

    Args:
        grad: gradient array.
        grad_norm: its unit-wise norms (from :func:`unitwise_norm`).
        max_norm: per-unit thresholds, broadcastable like ``grad_norm``.
        div_eps: floor on the norm in the rescale factor (only prevents 0/0).

    Returns:
        The clipped gradient, same shape and dtype as ``grad``.

    Example:
        >>> import jax.numpy as jnp
        >>> g = jnp.array([[3.0, 0.3], [4.0, 0.4]])
        >>> unitwise_clip(g, unitwise_norm(g), jnp.array([[1.0, 1.0]])).tolist()
        [[0.6000000238418579, 0.30000001192092896], [0.800000011920929, 0.4000000059604645]]
    """
    grad = jnp.asarray(grad)
    scale = max_norm / jnp.maximum(grad_norm, div_eps)
    clipped = (grad.astype(jnp.float32) * scale).astype(grad.dtype)
    return jnp.where(grad_norm > max_norm, clipped, grad)


def _axes_resolver(unit_axes: UnitAxes | None) -> Callable[[str, tuple[int, ...]], tuple[int, ...]]:
    """(path, shape) -> the axes of one unit, from the overrides or the default rule."""
    if unit_axes is None:
        return lambda path, shape: default_unit_axes(shape)
    if not isinstance(unit_axes, Mapping):
        raise TypeError(
            f"unit_axes must be None or a mapping {{path_regex: axes}}, got {type(unit_axes)}."
        )
    compiled = list(
        zip(masks.compile_patterns(unit_axes.keys(), "unit_axes"), unit_axes.values(), strict=True)
    )

    def resolve(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        for pattern, axes in compiled:
            if pattern.fullmatch(path):
                return _normalise_axes(axes, len(shape), f"unit_axes[{pattern.pattern!r}]")
        return default_unit_axes(shape)

    return resolve


def adaptive_grad_clip(
    clipping: float,
    eps: float = 1e-3,
    *,
    unit_axes: UnitAxes | None = None,
) -> optax.GradientTransformation:
    """Adaptive Gradient Clipping: clip each unit's gradient to ``clipping`` times its weight.

    Where ``||G_i|| > clipping * max(||W_i||, eps)`` the unit is rescaled to that norm;
    every other unit passes through bit-for-bit (see the module docstring for the maths).
    Units follow Haiku layouts (:func:`default_unit_axes`); ``unit_axes`` overrides them
    per parameter. It needs the current parameters: call ``update(grads, state, params)``.

    The state records what the last update did, without affecting it: ``clip_fraction``
    (fraction of units clipped) and ``max_ratio`` (largest ``||G_i|| / max(||W_i||, eps)``).
    Read them through any wrapper with ``optax.tree_utils.tree_get(opt_state,
    'clip_fraction')`` (it raises ``KeyError`` if the chain holds two AGC states; then use
    ``tree_get_all_with_path``). Inside ``optax.masked``/``optax.partition`` they cover
    only the leaves this transformation sees.

    Works under ``jit``, ``pmap`` and ``vmap``, with float32 or bfloat16 gradients (norms
    in float32), inside ``optax.chain``, ``optax.masked``, ``optax.partition`` and
    ``optax.MultiSteps``.

    Compared with ``optax.adaptive_grad_clip`` (0.2.8), which gives the same float32
    results for default units: optax takes norms in the gradient dtype, rescales a unit
    exactly at a threshold below its 1e-6 division floor, has one ``axis`` for all
    parameters and keeps no statistics.

    Args:
        clipping: the threshold ``lambda`` (> 0), e.g. 0.01 for NFNets at batch 4096.
        eps: floor on the parameter norm (the original's 1e-3), so zero-initialised
            parameters get a threshold of ``clipping * eps``.
        unit_axes: per-parameter unit layout ``{path_regex: axes}``: regexes fully
            matched against ``'module/param'`` paths, first match wins; parameters no
            regex matches keep :func:`default_unit_axes`.

    Returns:
        An ``optax.GradientTransformation`` with :class:`AdaptiveGradClipState`.

    Raises:
        ValueError: ``clipping`` or ``eps`` out of range; at update time, ``params`` is
            missing or does not match the gradients.

    Example:
        AGC on everything but the classifier weight, in front of AdamW, and reading what
        it did:

        >>> import jax, jax.numpy as jnp, optax
        >>> from nfnets_jax.optim import adaptive_grad_clip, mask_from_patterns
        >>> params = {'net/~/conv': {'w': jnp.ones((3, 3, 2, 4))},
        ...           'net/~/linear': {'w': jnp.ones((4, 10)), 'b': jnp.zeros((10,))}}
        >>> clip_mask = mask_from_patterns(params, [r'net/~/linear/w'], invert=True)
        >>> tx = optax.chain(optax.masked(adaptive_grad_clip(0.01), clip_mask),
        ...                  optax.adamw(1e-3, weight_decay=0.05))
        >>> state = tx.init(params)
        >>> grads = jax.tree.map(jnp.ones_like, params)
        >>> updates, state = tx.update(grads, state, params)
        >>> print(float(optax.tree_utils.tree_get(state, 'clip_fraction')))
        1.0

    References:
        Brock et al., High-Performance Large-Scale Image Recognition Without
        Normalization, arXiv:2102.06171.
    """
    # Python numbers are checked here; arrays (e.g. from optax.inject_hyperparams) are
    # taken as given.
    for name, value in (("clipping", clipping), ("eps", eps)):
        if value is None or isinstance(value, bool | str):
            raise TypeError(f"adaptive_grad_clip: {name} must be a float, got {value!r}.")
    if isinstance(clipping, int | float) and not clipping > 0:
        raise ValueError(
            f"adaptive_grad_clip: clipping must be > 0, got {clipping}; the NFNet value is "
            "0.01 (smaller for batches above 4096). To disable AGC, leave it out of the chain."
        )
    if isinstance(eps, int | float) and not eps >= 0:
        raise ValueError(f"adaptive_grad_clip: eps must be >= 0, got {eps}; the default is 1e-3.")
    unit_axes_of = _axes_resolver(unit_axes)

    def leaf_norms(key_path: Any, g: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(||G_i||, max(||W_i||, eps)) of one parameter, float32, keepdims."""
        path = masks.path_to_str(key_path)
        if jnp.shape(g) != jnp.shape(p):
            raise ValueError(
                f"adaptive_grad_clip: gradient {path!r} has shape {jnp.shape(g)} but the "
                f"parameter has shape {jnp.shape(p)}; pass the params the grads belong to."
            )
        axes = unit_axes_of(path, jnp.shape(g))
        return unitwise_norm(g, axes), jnp.maximum(unitwise_norm(p, axes), eps)

    def init_fn(params: Any) -> AdaptiveGradClipState:
        del params
        return AdaptiveGradClipState(
            clip_fraction=jnp.zeros((), jnp.float32), max_ratio=jnp.zeros((), jnp.float32)
        )

    def update_fn(
        updates: Any, state: AdaptiveGradClipState, params: Any = None
    ) -> tuple[Any, AdaptiveGradClipState]:
        del state
        if params is None:
            raise ValueError(
                "adaptive_grad_clip needs the current parameters to compute their norms: "
                "call tx.update(grads, opt_state, params)."
            )
        # One (g_norm, p_norm) pair in place of each leaf of `updates`.
        norms = jax.tree_util.tree_map_with_path(leaf_norms, updates, params)
        clipped = jax.tree.map(lambda g, n: unitwise_clip(g, n[0], n[1] * clipping), updates, norms)
        # Logging only: computed beside the update from the same norms, never fed into it.
        # One concatenation keeps the compiled program small for trees of hundreds of leaves.
        flat = [n.ravel() for n in jax.tree.leaves(norms)]  # g0, p0, g1, p1, ...
        if flat:
            g_all, p_all = jnp.concatenate(flat[0::2]), jnp.concatenate(flat[1::2])
            clip_fraction = jnp.mean(g_all > p_all * clipping, dtype=jnp.float32)
            # 0/0 (zero gradient on a zero parameter with eps=0) counts as ratio 0.
            max_ratio = jnp.max(jnp.where(g_all > 0, g_all / p_all, 0.0), initial=0.0)
        else:  # Everything masked out (or empty): nothing was seen, nothing was clipped.
            clip_fraction = jnp.zeros((), jnp.float32)
            max_ratio = jnp.zeros((), jnp.float32)
        return clipped, AdaptiveGradClipState(clip_fraction, max_ratio)

    return optax.GradientTransformation(init_fn, update_fn)
