"""Constructor-argument checks shared by the NF models: each error names the argument."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any


def check_positive_int(name: str, value: Any) -> int:
    """Returns ``value`` as an int if it is a positive integer, else raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_positive_ints(name: str, values: Any) -> list[int]:
    """Returns ``values`` as a list of ints if all are positive integers, else raises."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must contain positive integers only, got {list(values)}.")
    return [int(v) for v in values]


def check_fraction(name: str, value: Any, allow_one: bool = False) -> float:
    """Returns ``value`` as a float in [0, 1) (or [0, 1] with ``allow_one``), else raises."""
    upper_ok = (lambda v: v <= 1.0) if allow_one else (lambda v: v < 1.0)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (value >= 0.0 and upper_ok(value))
    ):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")
    return float(value)


def per_stage(name: str, value: Any, default: Any, n_stages: int) -> list[Any]:
    """Broadcasts a scalar (or None -> ``default``) to one value per stage.

    A sequence must have exactly ``n_stages`` entries.
    """
    value = default if value is None else value
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n_stages:
            raise ValueError(
                f"{name} has {len(value)} entries but the model has {n_stages} stages; pass "
                f"one value or one per stage."
            )
        return list(value)
    return [value] * n_stages
