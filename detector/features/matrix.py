"""Numeric-array input to the schema: validation, field ordering, non-finite cells as errors."""

from __future__ import annotations

import re

import numpy as np

from ..errors import RecordError


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def as_matrix(array: np.ndarray) -> np.ndarray:
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array (records x fields), got shape {array.shape}")
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"array of dtype {array.dtype} is not numeric") from None


def nonfinite_rows(matrix: np.ndarray, names: list[str]) -> dict[int, RecordError]:
    finite = np.isfinite(matrix)
    errors = {}
    for row in np.flatnonzero(~finite.all(axis=1)).tolist():
        column = int(np.argmin(finite[row]))
        errors[row] = RecordError(names[column], f"{float(matrix[row, column])!r} is not a "
                                  "finite number", record_index=row)
    return errors
