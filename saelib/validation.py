"""The validators every constructor, config and notebook parameter uses: each raises ValueError naming
the parameter, the value and the allowed values.

    check_choice("kernel", kernel, KERNELS)            one of a fixed set
    check_positive("d_sae", d_sae, integer=True)       a number (integer) > 0, or >= 0 with allow_zero
    check_range("correlation", c, 0.0, 1.0)            a number in [low, high] (or (low, high))
    check_seed(seed)                                   an integer >= 0
    check_index("rank", rank, world_size)              an integer in [0, size)
    check_each("kernels", kernels, KERNELS)            a non-empty list, every element one of a set
    check_coefficients("sparsity_coeffs", coeffs)      a non-empty list of numbers > 0 (>= 0 with allow_zero)
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ValueError naming the parameter, the value and the allowed values."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")


def check_positive(name: str, value: Any, *, allow_zero: bool = False, integer: bool = False) -> None:
    """A number (an integer with integer=True) > 0, or >= 0 with allow_zero; never a bool or NaN."""
    kind = "an integer" if integer else "a number"
    if not (_is_integer(value) if integer else _is_number(value)):
        raise ValueError(f"{name}={value!r} must be {kind}")
    if value != value:  # NaN
        raise ValueError(f"{name}={value!r} must be a finite number")
    if (value < 0) if allow_zero else (value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is out of range; allowed: {kind} {bound}")


def check_range(name: str, value: Any, low: float, high: float, *, inclusive: bool = True) -> None:
    """A number in [low, high] (inclusive) or (low, high)."""
    if not _is_number(value):
        raise ValueError(f"{name}={value!r} must be a number")
    inside = (low <= value <= high) if inclusive else (low < value < high)
    if not inside:
        brackets = "[]" if inclusive else "()"
        raise ValueError(f"{name}={value!r} is out of range; allowed: {brackets[0]}{low}, {high}{brackets[1]}")


def check_seed(value: Any, name: str = "seed") -> None:
    """A random seed: an integer >= 0 (never a bool or a float)."""
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 0")


def check_index(name: str, value: Any, size: int, *, size_name: str = "world_size") -> None:
    """An integer in [0, size), e.g. a process rank below world_size."""
    if not _is_integer(value) or not 0 <= value < size:
        raise ValueError(f"{name}={value!r} is out of range; allowed: an integer in [0, {size_name}={size})")


def check_each(name: str, values: Iterable[Any], allowed: Iterable[Any]) -> list:
    """A non-empty list whose every element is one of `allowed`; returns it as a list."""
    values, allowed = list(values), tuple(allowed)
    if not values:
        raise ValueError(f"{name}=[] must not be empty; allowed elements: {', '.join(map(repr, allowed))}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name} contains {v!r}, which is not allowed; allowed elements: "
                             f"{', '.join(map(repr, allowed))}")
    return values


def check_coefficients(name: str, values: Iterable[float], *, allow_zero: bool = False) -> list[float]:
    """A non-empty list of numbers > 0 (>= 0 with allow_zero); returns them as floats."""
    values = list(values)
    bound = ">= 0" if allow_zero else "> 0"
    if not values:
        raise ValueError(f"{name}=[] must not be empty; allowed: a list of numbers {bound}")
    for v in values:
        if not _is_number(v) or v != v or v < 0 or (v == 0 and not allow_zero):
            raise ValueError(f"{name} contains {v!r}; allowed: numbers {bound}")
    return [float(v) for v in values]
