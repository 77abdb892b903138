"""The validators every constructor and config uses: each raises ValueError naming the parameter, the
value and the allowed values."""
from __future__ import annotations

from typing import Any, Iterable


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ValueError naming the parameter, the value and the allowed values."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")


def check_positive(name: str, value: Any, *, allow_zero: bool = False, integer: bool = False) -> None:
    kind = "integer" if integer else "number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{name}={value!r} must be a {kind}")
    if value != value:  # NaN
        raise ValueError(f"{name}={value!r} must be a finite {kind}")
    if (value < 0) if allow_zero else (value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is out of range; allowed: a {kind} {bound}")


def check_range(name: str, value: Any, low: float, high: float, *, inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    inside = (low <= value <= high) if inclusive else (low < value < high)
    if not inside:
        brackets = "[]" if inclusive else "()"
        raise ValueError(f"{name}={value!r} is out of range; allowed: {brackets[0]}{low}, {high}{brackets[1]}")
