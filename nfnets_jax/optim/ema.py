"""Exponential moving average of parameters with the original NFNet decay warmup.

The original experiment keeps an EMA of the parameters (and of the Haiku state) with a
"TF1-style" warmup of the decay:

.. math:: d_t = \\min\\Big(d, \\frac{1 + t}{10 + t}\\Big), \\qquad
    \\bar\\theta \\leftarrow d_t \\bar\\theta + (1 - d_t)\\, \\theta_{t+1}

where ``t`` is the global step of the update, i.e. the number of optimizer updates applied
before it (0 for the first; the same value the learning rate was evaluated at), and
:math:`\\theta_{t+1}` are the parameters *after* that update. With ``d = 0.99999`` the cap
needs ``t >= 899,990``, so over the 112,602 NFNet steps the decay is always
``(1 + t) / (10 + t)``, ending near 0.99992. The EMA starts as a copy of the initial
parameters.

References:
    Brock et al., High-Performance Large-Scale Image Recognition Without Normalization,
    arXiv:2102.06171 (section 4.2 of ``../shared/spec/nfnets.md``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["NFNET_EMA_DECAY", "ema_decay", "ema_update"]

# experiment_nfnets.py: ema_decay=0.99999.
NFNET_EMA_DECAY = 0.99999


def ema_decay(
    step: jax.Array | int, decay: float = NFNET_EMA_DECAY, warmup: bool = True
) -> jax.Array:
    """The EMA decay used for the update at global step ``step``.

    Args:
        step: global step of the update (0 for the first update).
        decay: the cap ``d`` (the NFNet value is 0.99999).
        warmup: apply the ``(1 + t) / (10 + t)`` warmup; ``False`` gives a constant ``d``.

    Returns:
        float32 scalar ``min(decay, (1 + t) / (10 + t))`` (or ``decay``).

    Example:
        >>> [round(float(ema_decay(t)), 6) for t in (0, 1, 90)]
        [0.1, 0.181818, 0.91]
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema_decay: decay must be in [0, 1], got {decay}; NFNets use 0.99999.")
    capped = jnp.full(jnp.shape(step), decay, jnp.float32)
    if not warmup:
        return capped
    t = jnp.asarray(step).astype(jnp.float32)
    return jnp.minimum(capped, (1.0 + t) / (10.0 + t))


def ema_update(
    ema_tree: Any,
    new_tree: Any,
    step: jax.Array | int,
    decay: float = NFNET_EMA_DECAY,
    *,
    warmup: bool = True,
) -> Any:
    """One EMA step over any pytree (Haiku params, Haiku state...).

    Floating-point leaves become ``d * ema + (1 - d) * new`` (computed in float32, stored
    in the EMA leaf's dtype); other leaves (integer counters) take the new value.

    Args:
        ema_tree: the current average.
        new_tree: the values after the optimizer update, same structure.
        step: global step of the update (0 for the first), see :func:`ema_decay`.
        decay: the cap on the decay (0.99999 for NFNets).
        warmup: use the ``(1 + t) / (10 + t)`` warmup of the original.

    Returns:
        The new average, same structure and dtypes as ``ema_tree``.

    Example:
        >>> import jax.numpy as jnp
        >>> ema = ema_update({'w': jnp.zeros(2)}, {'w': jnp.ones(2)}, step=0)
        >>> [round(v, 6) for v in ema['w'].tolist()]
        [0.9, 0.9]
    """
    d = ema_decay(step, decay, warmup)

    def average(ema: jax.Array, new: jax.Array) -> jax.Array:
        if jnp.shape(ema) != jnp.shape(new):
            raise ValueError(
                f"ema_update: EMA leaf of shape {jnp.shape(ema)} does not match the new value "
                f"of shape {jnp.shape(new)}; pass trees with the same structure."
            )
        if not jnp.issubdtype(jnp.result_type(ema), jnp.inexact):
            return jnp.asarray(new)
        ema = jnp.asarray(ema)
        # At least float32 so bfloat16 averages do not lose the (1 - d) increments.
        dtype = jnp.promote_types(ema.dtype, jnp.float32)
        mixed = d.astype(dtype) * ema.astype(dtype) + (1 - d.astype(dtype)) * jnp.asarray(
            new
        ).astype(dtype)
        return mixed.astype(ema.dtype)

    return jax.tree.map(average, ema_tree, new_tree)
