"""Signal propagation in NF residual stacks: the analytic beta/alpha schedule and metrics.

An NF residual block computes ``x_{l+1} = x_l + alpha * f_l(x_l / beta_l)`` where
``beta_l = sqrt(Var[x_l])`` is the *expected* input standard deviation, tracked
analytically: at initialization every residual branch outputs unit variance, so

.. math::  \\mathrm{Var}[x_{l+1}] = \\mathrm{Var}[x_l] + \\alpha^2 .

The expected variance resets to 1 at every transition block (the first block of each
stage), whose shortcut goes through the normalized input ``f(x)/beta`` instead of ``x``.
DeepMind's code multiplies *after* the nonlinearity (``act(x) * beta`` with
``beta = 1/expected_std``); the schedule below gives that multiplier.

The empirical metrics (:func:`signal_metrics`) are the quantities of the paper's Signal
Propagation Plots: the average squared channel mean and the average channel variance of
every block's output, plus the variance of each residual branch.

References:
    Brock, De, Smith. Characterizing signal propagation to close the performance gap in
    unnormalized ResNets. arXiv:2101.08692, sections 3-4.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Where a residual block sits and the scalars it is built with.

    Attributes:
        index: global 0-based block index (``nf_block`` is 0, ``nf_block_k`` is k).
        stage: 0-based stage index.
        first_in_stage: whether the block opens its stage (transition block).
        stride: the block's stride (the stage stride for the first block, else 1).
        beta: multiplier on the activated input, ``1 / expected_std``.
        stochdepth_rate: the block's stochastic-depth rate ``rate * index / N``.
    """

    index: int
    stage: int
    first_in_stage: bool
    stride: int
    beta: float
    stochdepth_rate: float


def block_schedule(
    depths: Sequence[int],
    strides: Sequence[int],
    alpha: float,
    stochdepth_rate: float,
) -> list[BlockSpec]:
    """The per-block beta and stochastic-depth rate of an NF model.

    Starting from ``expected_std = 1``, each block gets ``beta = 1 / expected_std``; then
    the expected std resets to 1 if the block is the first of its stage, and grows as
    ``sqrt(expected_std**2 + alpha**2)``. Block ``i`` of ``N`` gets stochastic-depth rate
    ``stochdepth_rate * i / N`` (so block 0 has none).

    Args:
        depths: number of blocks per stage.
        strides: stride of each stage's first block.
        alpha: the residual branch scale.
        stochdepth_rate: the rate of the (virtual) block ``N``.

    Returns:
        One :class:`BlockSpec` per block, in order.

    Example:
        >>> [round(b.beta, 6) for b in block_schedule([1, 3], [1, 2], 0.2, 0.0)]
        [1.0, 0.980581, 0.980581, 0.96225]
    """
    if len(depths) != len(strides):
        raise ValueError(f"depths {list(depths)} and strides {list(strides)} differ in length.")
    num_blocks = sum(depths)
    specs = []
    expected_std = 1.0
    index = 0
    for stage, (depth, stage_stride) in enumerate(zip(depths, strides, strict=True)):
        for j in range(depth):
            specs.append(
                BlockSpec(
                    index=index,
                    stage=stage,
                    first_in_stage=j == 0,
                    stride=stage_stride if j == 0 else 1,
                    beta=1.0 / expected_std,
                    stochdepth_rate=stochdepth_rate * index / num_blocks,
                )
            )
            if j == 0:
                expected_std = 1.0
            expected_std = math.sqrt(expected_std**2 + alpha**2)
            index += 1
    return specs


def _channel_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased) variance over every axis but the last, in float32."""
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    return jnp.mean(x, axis=axes), jnp.var(x, axis=axes)


def signal_metrics(x: jax.Array, i: int) -> dict[str, jax.Array]:
    """The signal-propagation statistics of a channels-last activation.

    Args:
        x: an activation, channels last (e.g. NHWC).
        i: its index (0 for the stem output, ``k`` after block ``k - 1``).

    Returns:
        ``{'avg_sq_mean_{i}': mean_c(mean_NHW(x)_c ** 2), 'avg_var_{i}': mean_c(var_NHW(x)_c)}``
        as float32 scalars.

    Example:
        >>> m = signal_metrics(jnp.ones((2, 3, 3, 4)), 0)
        >>> float(m['avg_sq_mean_0']), float(m['avg_var_0'])
        (1.0, 0.0)
    """
    mean, var = _channel_stats(x)
    return {f"avg_sq_mean_{i}": jnp.mean(mean**2), f"avg_var_{i}": jnp.mean(var)}


def average_channel_variance(x: jax.Array) -> jax.Array:
    """``mean_c(var_NHW(x)_c)`` in float32: the ``res_avg_var`` of a residual branch."""
    return jnp.mean(_channel_stats(x)[1])


def run_residual_blocks(
    blocks: Sequence[Callable[[jax.Array, bool], tuple[jax.Array, jax.Array]]],
    x: jax.Array,
    is_training: bool,
    outputs: dict[str, jax.Array] | None,
) -> jax.Array:
    """Applies residual blocks in turn, recording the signal-propagation metrics.

    Args:
        blocks: callables ``block(x, is_training) -> (output, residual_branch)``.
        x: the stem output (index 0 of the metrics).
        is_training: passed to every block.
        outputs: when given, receives :func:`signal_metrics` of ``x`` and of every block
            output, and ``res_avg_var_{k}`` of block ``k``'s residual branch.

    Returns:
        The last block's output.
    """
    if outputs is not None:
        outputs.update(signal_metrics(x, 0))
    for i, block in enumerate(blocks):
        x, branch = block(x, is_training)
        if outputs is not None:
            outputs.update(signal_metrics(x, i + 1))
            outputs[f"res_avg_var_{i}"] = average_channel_variance(branch)
    return x
