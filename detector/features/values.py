"""Lenient coercion of single JSON values and whole columns, with per-row error reasons.

>>> to_category(3.0), to_category(True), to_number(" 12.5 "), to_bool("FALSE")
('3', 'true', 12.5, 0.0)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

# row index -> (field, reason); the first error of a row wins.
BadRows = dict[int, tuple[str | None, str]]


class BadValue(ValueError):
    """A value that cannot be coerced; its message becomes the RecordError reason."""


def _unsupported(value: object) -> BadValue:
    if isinstance(value, dict | list | tuple):
        return BadValue(f"nested value is not allowed (got {type(value).__name__})")
    return BadValue(f"unsupported value type {type(value).__name__}")


def to_number(value: object) -> float | None:
    """A finite float, None for missing; bools are 0/1, numeric strings are parsed."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real | str):
        try:
            number = float(value)
        except OverflowError:
            raise BadValue(f"{value!r} is out of the float range") from None
        except ValueError:
            raise BadValue(f"cannot convert {value!r} to a number") from None
        if not math.isfinite(number):  # NaN: a missing value is null (None) in a record
            raise BadValue(f"{value!r} is not a finite number" + (
                " (a missing value is null)" if number != number else ""))
        return number
    raise _unsupported(value)


_BOOL_WORDS = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}


def to_bool(value: object) -> float | None:
    """1.0/0.0, None for missing; accepts bools, 0/1 and 'true'/'false'/'1'/'0' (any case)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    if isinstance(value, dict | list | tuple):
        raise _unsupported(value)
    raise BadValue(f"cannot interpret {value!r} as a boolean (expected true/false or 1/0)")


def to_category(value: object) -> str | None:
    """The category string, None for missing; 3, 3.0 and '3' are the same category."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise BadValue(f"{value!r} is not a finite value")
        return str(int(number)) if number.is_integer() else repr(number)
    raise _unsupported(value)


def coerce_numbers(
    name: str, column: list[object], bad: BadRows
) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 values (NaN where missing or bad) and the missing mask (None if none missing)."""
    count = len(column)
    try:  # numpy parses numbers, bools, numeric strings and None (-> NaN) in C
        values = np.array(column, dtype=np.float64)
        fast = values.shape == (count,)  # a column of equal-length lists would become 2-D
    except (TypeError, ValueError, OverflowError):
        fast = False
    if fast:
        finite = np.isfinite(values)
        if finite.all():
            return values, None
        suspects: Sequence[int] = np.flatnonzero(~finite).tolist()
    else:
        values, suspects = np.empty(count), range(count)
    missing = np.zeros(count, dtype=bool)
    for row in suspects:
        try:
            number = to_number(column[row])
        except BadValue as error:
            bad.setdefault(row, (name, str(error)))
            number = math.nan
        if number is None:
            missing[row], number = True, math.nan
        values[row] = number
    return values, (missing if missing.any() else None)


_BOOL_LOOKUP: dict[object, float] = {True: 1.0, False: 0.0, None: math.nan}
_BOOL_LOOKUP.update(_BOOL_WORDS.items())  # items(): str keys widen to object, a dict would not
_UNKNOWN = object()


def coerce_booleans(
    name: str, column: list[object], bad: BadRows
) -> tuple[np.ndarray, np.ndarray | None]:
    """0.0/1.0 values (NaN where missing or bad) and the missing mask (None if none missing)."""
    try:  # 1, 1.0 and True hash alike, so one dict lookup covers bools and 0/1 numbers
        mapped: list[object] = [_BOOL_LOOKUP.get(v, _UNKNOWN) for v in column]
        unknown = [i for i, v in enumerate(mapped) if v is _UNKNOWN] if _UNKNOWN in mapped else []
    except TypeError:  # an unhashable (nested) value somewhere
        mapped, unknown = list(column), list(range(len(column)))
    for row in unknown:
        try:
            number = to_bool(column[row])
        except BadValue as error:
            bad.setdefault(row, (name, str(error)))
            number = math.nan
        mapped[row] = math.nan if number is None else number
    values = np.array(mapped, dtype=np.float64)
    if not np.isnan(values).any():
        return values, None
    missing = np.fromiter((v is None for v in column), dtype=bool, count=len(column))
    return values, (missing if missing.any() else None)


def coerce_categories(name: str, column: list[object], bad: BadRows) -> list[str | None]:
    """Category strings (None where missing or bad)."""
    if set(map(type, column)) <= {str, type(None)}:
        return column  # type: ignore[return-value]
    categories: list[str | None] = []
    for row, value in enumerate(column):
        try:
            categories.append(to_category(value))
        except BadValue as error:
            bad.setdefault(row, (name, str(error)))
            categories.append(None)
    return categories
