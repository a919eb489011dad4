"""Mixed precision for NF models: float32 parameters, computation in a chosen dtype.

Inside :func:`compute_dtype_scope` every floating parameter is *created* in float32 and
*read* in the compute dtype (e.g. bfloat16) through Haiku custom creators/getters, so the
parameter tree, checkpoints and gradients stay float32 while the convolutions run in the
compute dtype. Modules that set ``keeps_float32_params = True`` (``WSConv2D``, whose
weight standardization needs float32 statistics) read their parameters in float32 and cast
the result themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import haiku as hk
import jax.numpy as jnp
import numpy as np

SUPPORTED_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def resolve_compute_dtype(compute_dtype: Any) -> np.dtype:
    """Validates ``compute_dtype`` (None means float32) and returns it as a numpy dtype.

    Example:
        >>> resolve_compute_dtype(None).name, resolve_compute_dtype('bfloat16').name
        ('float32', 'bfloat16')
    """
    if compute_dtype is None:
        return np.dtype(jnp.float32)
    try:
        dtype = np.dtype(jnp.dtype(compute_dtype))
    except TypeError as e:
        raise ValueError(
            f"compute_dtype must be one of {SUPPORTED_COMPUTE_DTYPES} (or None for float32), "
            f"got {compute_dtype!r}."
        ) from e
    if dtype.name not in SUPPORTED_COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype must be one of {SUPPORTED_COMPUTE_DTYPES} (or None for float32), "
            f"got {dtype.name}."
        )
    return dtype


def _float32_creator(next_creator, shape, dtype, init, context):
    del context
    if jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return next_creator(shape, dtype, init)


def _make_cast_getter(compute_dtype: np.dtype):
    def getter(next_getter, value, context):
        value = next_getter(value)
        if getattr(context.module, "keeps_float32_params", False):
            return value
        if jnp.issubdtype(value.dtype, jnp.floating):
            return value.astype(compute_dtype)
        return value

    return getter


@contextlib.contextmanager
def compute_dtype_scope(compute_dtype: Any) -> Iterator[np.dtype]:
    """Within the scope, parameters are stored in float32 and used in ``compute_dtype``.

    Args:
        compute_dtype: float32 (or None), bfloat16 or float16.

    Yields:
        The resolved compute dtype.

    Example:
        >>> import jax
        >>> def f(x):
        ...     with compute_dtype_scope(jnp.bfloat16) as dt:
        ...         return hk.Linear(2)(x.astype(dt))
        >>> f = hk.transform(f)
        >>> p = f.init(jax.random.key(0), jnp.ones((1, 3)))
        >>> p['linear']['w'].dtype, f.apply(p, None, jnp.ones((1, 3))).dtype
        (dtype('float32'), dtype(bfloat16))
    """
    dtype = resolve_compute_dtype(compute_dtype)
    with contextlib.ExitStack() as stack:
        stack.enter_context(hk.custom_creator(_float32_creator))
        if dtype != np.dtype(jnp.float32):
            stack.enter_context(hk.custom_getter(_make_cast_getter(dtype)))
        yield dtype
