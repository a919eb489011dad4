"""Learning-rate schedules of the original NFNet code, as optax schedules.

Every schedule is a function of ``itr``, the global step *before* the update (optax passes
its update count, which is the same number), returning a float32 scalar. With the NFNet
recipe the first update therefore uses ``lr(0) = start_val = 0``.

Warmups are linear, ``(max - start) * itr / warmup_steps + start``, and stay selected
while ``itr <= warmup_steps`` (the original picks the decay branch with
``warmup_steps < itr``); ``warmup_steps`` may be fractional (``5 * 1281167 / 4096``).
With ``warmup_offset=1`` the warmup counts the current batch as done: ``max * (itr + 1) /
W`` for ``itr < W``, the Bag-of-Tricks form ``eta * i / m`` with the 1-based batch index
``i`` (GluonCV), whose first update already uses ``max / W``.

References:
    Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts,
    arXiv:1608.03983 (cosine decay). Goyal et al., Accurate, Large Minibatch SGD,
    arXiv:1706.02677 (linear warmup, lr scaled by batch/256). He et al., Bag of Tricks for
    Image Classification with Convolutional Neural Networks, arXiv:1812.01187 (step decay
    baseline).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "SCHEDULES",
    "build_schedule",
    "constant",
    "cosine_decay",
    "warmup_cosine_decay",
    "warmup_exp_decay",
    "warmup_step_decay",
]


def _check_number(
    name: str, value: Any, *, minimum: float | None = None, strict: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"schedule: {name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"schedule: {name} must be finite, got {value}.")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(
            f"schedule: {name} must be {'>' if strict else '>='} {minimum}, got {value}."
        )
    return value


def _itr(step: jax.Array | int) -> jax.Array:
    return jnp.asarray(step).astype(jnp.float32)


def _linear_warmup(
    itr: jax.Array, start_val: float, max_val: float, warmup_steps: float, offset: float = 0.0
) -> jax.Array:
    return (max_val - start_val) * (itr + offset) / warmup_steps + start_val


def _check_offset(offset: Any) -> float:
    offset = _check_number("warmup_offset", offset, minimum=0)
    if offset not in (0.0, 1.0):
        raise ValueError(
            f"schedule: warmup_offset must be 0 (NFNet: the first update uses start_val) or 1 "
            f"(Bag of Tricks: eta * (step + 1) / warmup_steps), got {offset}."
        )
    return offset


def constant(value: float) -> optax.Schedule:
    """A constant learning rate.

    Args:
        value: the learning rate.

    Returns:
        ``step -> value`` as a float32 scalar.

    Example:
        >>> float(constant(0.1)(123))
        0.10000000149011612
    """
    value = _check_number("value", value)
    return lambda step: jnp.full(jnp.shape(step), value, jnp.float32)


def cosine_decay(max_val: float, num_steps: int, min_val: float = 0.0) -> optax.Schedule:
    """Cosine decay from ``max_val`` at step 0 to ``min_val`` at ``num_steps``.

    .. math:: \\eta(t) = \\tfrac12 (\\eta_{max} - \\eta_{min})
        (1 + \\cos(\\pi \\min(t / T, 1))) + \\eta_{min}

    The original does not clamp ``t / T``; here steps past ``num_steps`` stay at
    ``min_val`` instead of rising again (identical on ``[0, num_steps]``).

    Args:
        max_val: learning rate at step 0.
        num_steps: steps to reach ``min_val`` (the training length).
        min_val: final learning rate.

    Returns:
        An optax schedule.

    Example:
        >>> round(float(cosine_decay(1.0, 100)(50)), 6)
        0.5
    """
    max_val = _check_number("max_val", max_val)
    min_val = _check_number("min_val", min_val)
    num_steps = _check_number("num_steps", num_steps, minimum=0, strict=True)

    def schedule(step):
        progress = jnp.clip(_itr(step) / num_steps, 0.0, 1.0)
        return 0.5 * (max_val - min_val) * (1.0 + jnp.cos(jnp.pi * progress)) + min_val

    return schedule


def warmup_cosine_decay(
    max_val: float,
    num_steps: int,
    warmup_steps: float,
    start_val: float = 0.0,
    min_val: float = 0.0,
    warmup_offset: float = 0.0,
) -> optax.Schedule:
    """The NFNet schedule: linear warmup from ``start_val``, then cosine to ``min_val``.

    .. math:: \\eta(t) = \\begin{cases}
        (\\eta_{max} - \\eta_0)\\, t / W + \\eta_0 & t \\le W \\\\
        \\tfrac12 (\\eta_{max} - \\eta_{min})(1 + \\cos(\\pi \\frac{t - W}{T - W}))
            + \\eta_{min} & t > W \\end{cases}

    For NFNets at batch 4096: ``max_val = 1.6``, ``W = 5 * 1281167 / 4096 = 1563.92``,
    ``T = 112602``, giving lr(0) = 0, lr(1) = 0.0010231, lr(1564) = 1.6. With
    ``warmup_steps = 0`` this is :func:`cosine_decay` (the original would divide 0 by 0).
    Past ``num_steps`` the rate stays at ``min_val``.

    Args:
        max_val: peak learning rate, reached at the end of warmup.
        num_steps: total training steps (the cosine reaches ``min_val`` there).
        warmup_steps: warmup length in steps, may be fractional.
        start_val: learning rate at step 0 (with ``warmup_offset=0``).
        min_val: final learning rate.
        warmup_offset: 0 (NFNet) or 1 (Bag of Tricks: ``max * (t + 1) / W`` during the
            warmup, so the rate reaches ``max`` at step ``W - 1``; cosine from step ``W``).

    Returns:
        An optax schedule.

    Example:
        >>> lr = warmup_cosine_decay(1.6, 112602, 5 * 1281167 / 4096)
        >>> [round(float(lr(t)), 5) for t in (0, 1000, 1564)]
        [0.0, 1.02307, 1.6]
        >>> lr = warmup_cosine_decay(0.4, 15, 5, warmup_offset=1)
        >>> [round(float(lr(t)), 6) for t in (0, 4, 5, 14)]
        [0.08, 0.4, 0.4, 0.009789]
    """
    max_val = _check_number("max_val", max_val)
    start_val = _check_number("start_val", start_val)
    min_val = _check_number("min_val", min_val)
    num_steps = _check_number("num_steps", num_steps, minimum=0, strict=True)
    warmup_steps = _check_number("warmup_steps", warmup_steps, minimum=0)
    offset = _check_offset(warmup_offset)
    if warmup_steps >= num_steps:
        raise ValueError(
            f"schedule: warmup_steps ({warmup_steps}) must be below num_steps ({num_steps})."
        )
    if warmup_steps == 0:
        return cosine_decay(max_val, num_steps, min_val)

    def schedule(step):
        itr = _itr(step)
        warm = _linear_warmup(itr, start_val, max_val, warmup_steps, offset)
        progress = jnp.clip((itr - warmup_steps) / (num_steps - warmup_steps), 0.0, 1.0)
        cos = 0.5 * (max_val - min_val) * (1.0 + jnp.cos(jnp.pi * progress)) + min_val
        return jnp.where(itr + offset <= warmup_steps, warm, cos)

    return schedule


def warmup_exp_decay(
    max_val: float,
    warmup_steps: float,
    factor: float,
    interval: float,
    start_val: float = 0.0,
) -> optax.Schedule:
    """The original ``WarmupExpDecay``: linear warmup, then stepwise exponential decay.

    .. math:: \\eta(t) = \\eta_{max} \\cdot f^{\\lfloor (t - W) / I \\rfloor} \\quad (t > W)

    Args:
        max_val: learning rate at the end of warmup.
        warmup_steps: warmup length in steps (0 for none), may be fractional.
        factor: multiplicative decay ``f`` per interval, e.g. 0.97.
        interval: steps between decays ``I``, may be fractional (e.g. 2.4 epochs).
        start_val: learning rate at step 0.

    Returns:
        An optax schedule.

    Example:
        >>> lr = warmup_exp_decay(1.0, warmup_steps=10, factor=0.5, interval=5)
        >>> [float(lr(t)) for t in (0, 5, 10, 14, 15, 20)]
        [0.0, 0.5, 1.0, 1.0, 0.5, 0.25]
    """
    max_val = _check_number("max_val", max_val)
    start_val = _check_number("start_val", start_val)
    factor = _check_number("factor", factor, minimum=0, strict=True)
    interval = _check_number("interval", interval, minimum=0, strict=True)
    warmup_steps = _check_number("warmup_steps", warmup_steps, minimum=0)

    def schedule(step):
        itr = _itr(step)
        decayed = max_val * factor ** jnp.floor((itr - warmup_steps) / interval)
        if warmup_steps == 0:
            return decayed
        warm = _linear_warmup(itr, start_val, max_val, warmup_steps)
        return jnp.where(itr <= warmup_steps, warm, decayed)

    return schedule


def warmup_step_decay(
    max_val: float,
    boundaries: Sequence[float],
    factor: float = 0.1,
    warmup_steps: float = 0.0,
    start_val: float = 0.0,
    warmup_offset: float = 0.0,
) -> optax.Schedule:
    """Piecewise-constant decay (divide by 10 at given steps), with optional linear warmup.

    .. math:: \\eta(t) = \\eta_{max} \\cdot f^{\\#\\{b \\,:\\, t \\ge b\\}} \\quad (t > W)

    The ResNet baseline of Bag of Tricks: lr ÷ 10 at epochs 30, 60, 90.

    Args:
        max_val: learning rate before the first boundary.
        boundaries: increasing steps at which the rate is multiplied by ``factor``; the new
            rate applies from that step on. They must not fall inside the warmup.
        factor: multiplier at each boundary (0.1 divides by 10).
        warmup_steps: linear warmup length in steps (0 for none).
        start_val: learning rate at step 0 when warming up.
        warmup_offset: 0, or 1 for the Bag-of-Tricks warmup ``max * (t + 1) / W``.

    Returns:
        An optax schedule.

    Example:
        >>> lr = warmup_step_decay(0.1, boundaries=[30, 60])
        >>> [round(float(lr(t)), 6) for t in (0, 29, 30, 59, 60)]
        [0.1, 0.1, 0.01, 0.01, 0.001]
    """
    max_val = _check_number("max_val", max_val)
    start_val = _check_number("start_val", start_val)
    factor = _check_number("factor", factor, minimum=0, strict=True)
    warmup_steps = _check_number("warmup_steps", warmup_steps, minimum=0)
    offset = _check_offset(warmup_offset)
    if isinstance(boundaries, str) or not isinstance(boundaries, Sequence):
        raise ValueError(f"schedule: boundaries must be a list of steps, got {boundaries!r}.")
    bounds = [_check_number("boundaries[i]", b, minimum=0) for b in boundaries]
    if any(b1 >= b2 for b1, b2 in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"schedule: boundaries must be strictly increasing, got {bounds}.")
    if bounds and bounds[0] <= warmup_steps:
        raise ValueError(
            f"schedule: the first decay boundary ({bounds[0]}) falls inside the warmup "
            f"({warmup_steps} steps); move it later or shorten the warmup."
        )
    bounds_array = jnp.asarray(bounds, jnp.float32)

    def schedule(step):
        itr = _itr(step)
        num_decays = jnp.sum(itr >= bounds_array)
        decayed = max_val * jnp.float32(factor) ** num_decays
        if warmup_steps == 0:
            return decayed.astype(jnp.float32)
        warm = _linear_warmup(itr, start_val, max_val, warmup_steps, offset)
        return jnp.where(itr + offset <= warmup_steps, warm, decayed)

    return schedule


# name -> {config key: default}; None marks a required key. Epoch-valued keys are turned
# into steps with steps_per_epoch by build_schedule.
_SCHEDULE_KEYS: dict[str, dict[str, Any]] = {
    "warmup_cosine": {
        "warmup_epochs": None,
        "start_val": 0.0,
        "min_val": 0.0,
        "warmup_offset": 0.0,
    },
    "cosine": {"min_val": 0.0},
    "constant": {},
    "warmup_exp": {"warmup_epochs": 0.0, "start_val": 0.0, "factor": None, "interval_epochs": None},
    "step": {
        "decay_epochs": None,
        "factor": 0.1,
        "warmup_epochs": 0.0,
        "start_val": 0.0,
        "warmup_offset": 0.0,
    },
}
SCHEDULES: tuple[str, ...] = tuple(_SCHEDULE_KEYS)


def build_schedule(
    config: Mapping[str, Any],
    *,
    max_val: float,
    steps_per_epoch: float,
    total_steps: int,
) -> optax.Schedule:
    """Builds a schedule from a config like ``dict(name='warmup_cosine', warmup_epochs=5.)``.

    Names and their keys (epochs are converted with ``steps_per_epoch``, which may be
    fractional, e.g. ``1281167 / 4096``):

    - ``warmup_cosine``: ``warmup_epochs`` (required), ``start_val=0``, ``min_val=0``,
      ``warmup_offset=0`` (1: Bag of Tricks' ``eta * (step + 1) / W`` warmup).
    - ``cosine``: ``min_val=0``.
    - ``constant``: no keys.
    - ``warmup_exp``: ``factor``, ``interval_epochs`` (required), ``warmup_epochs=0``,
      ``start_val=0``.
    - ``step``: ``decay_epochs`` (required list), ``factor=0.1``, ``warmup_epochs=0``,
      ``start_val=0``, ``warmup_offset=0``.

    Args:
        config: mapping (dict or ``ml_collections.ConfigDict``) with ``name`` and the keys.
        max_val: the peak learning rate (already scaled by batch size if wanted).
        steps_per_epoch: training examples per epoch divided by the global batch size.
        total_steps: training length in steps.

    Returns:
        An optax schedule.

    Raises:
        ValueError: unknown name, unknown or missing keys, or invalid values.

    Example:
        >>> lr = build_schedule(dict(name='warmup_cosine', warmup_epochs=5.0), max_val=1.6,
        ...                     steps_per_epoch=1281167 / 4096, total_steps=112602)
        >>> round(float(lr(56301)), 5)
        0.8177
    """
    if not isinstance(config, Mapping) and not hasattr(config, "items"):
        raise ValueError(f"schedule config must be a mapping with a 'name', got {config!r}.")
    values = dict(config.items())
    name = values.pop("name", None)
    if name not in _SCHEDULE_KEYS:
        raise ValueError(f"schedule: unknown name {name!r}; choose one of {list(SCHEDULES)}.")
    known = _SCHEDULE_KEYS[name]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"schedule {name!r}: unknown key(s) {unknown}; it accepts {sorted(known)}."
        )
    missing = sorted(k for k, d in known.items() if d is None and values.get(k) is None)
    if missing:
        raise ValueError(f"schedule {name!r}: missing required key(s) {missing}.")
    kw = {**known, **values}
    steps_per_epoch = _check_number("steps_per_epoch", steps_per_epoch, minimum=0, strict=True)

    if name == "constant":
        return constant(max_val)
    if name == "cosine":
        return cosine_decay(max_val, total_steps, kw["min_val"])
    warmup_epochs = _check_number("warmup_epochs", kw["warmup_epochs"], minimum=0)
    warmup_steps = warmup_epochs * steps_per_epoch
    if name == "warmup_cosine":
        return warmup_cosine_decay(
            max_val,
            total_steps,
            warmup_steps,
            start_val=kw["start_val"],
            min_val=kw["min_val"],
            warmup_offset=kw["warmup_offset"],
        )
    if name == "warmup_exp":
        interval = _check_number("interval_epochs", kw["interval_epochs"], minimum=0, strict=True)
        return warmup_exp_decay(
            max_val,
            warmup_steps,
            factor=kw["factor"],
            interval=interval * steps_per_epoch,
            start_val=kw["start_val"],
        )
    # name == "step"
    epochs = kw["decay_epochs"]
    if isinstance(epochs, str) or not isinstance(epochs, Sequence):
        raise ValueError(f"schedule 'step': decay_epochs must be a list, got {epochs!r}.")
    boundaries = [_check_number("decay_epochs[i]", e, minimum=0) * steps_per_epoch for e in epochs]
    return warmup_step_decay(
        max_val,
        boundaries,
        factor=kw["factor"],
        warmup_steps=warmup_steps,
        start_val=kw["start_val"],
        warmup_offset=kw["warmup_offset"],
    )
