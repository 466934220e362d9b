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


# Scaled features are clipped here: far beyond any training value, still a finite distance
# whose square (summed over columns, in float32) cannot overflow into an infinite score.
FEATURE_LIMIT = 1e15


def out_of_range_rows(features: np.ndarray, column_fields: list[str]) -> dict[int, str]:
    """Rows with a feature beyond float32 once scaled (e.g. 1e39): row -> the first such
    field. Then clips every feature to +-FEATURE_LIMIT, in place: a huge value still scores
    as far from everything, never as an infinite or NaN distance."""
    finite = np.isfinite(features)
    rows = np.flatnonzero(~finite.all(axis=1)).tolist()
    np.clip(features, -FEATURE_LIMIT, FEATURE_LIMIT, out=features)
    return {row: column_fields[int(np.argmin(finite[row]))] for row in rows}


def screen_rows(rows: list, features: np.ndarray, bad: dict[int, tuple[str | None, str]],
                specs: list[dict], column_fields: list[str]) -> None:
    """Into ``bad``: records holding none of the schema's fields (nothing of them could be
    scored; a renamed feed must not read as normal) and values beyond float32 once scaled."""
    names = {spec["name"] for spec in specs}
    for index, row in enumerate(rows):
        if index not in bad and isinstance(row, dict) and all(
                row[name] is None for name in names.intersection(row)):  # absent or all null
            shown = ", ".join(spec["name"] for spec in specs[:3])
            more = f", ... {len(specs)} in all" if len(specs) > 3 else ""
            bad[index] = (None, f"record has no value for any of the model's fields "
                                f"({shown}{more})")
    for index, field in out_of_range_rows(features, column_fields).items():
        if index not in bad:
            value = rows[index].get(field) if isinstance(rows[index], dict) else None
            bad[index] = (field, f"{value!r} is out of range (too large once scaled)")


def array_range_errors(matrix: np.ndarray, scaled: np.ndarray, names: list[str],
                       errors: dict[int, RecordError]) -> None:
    """Into ``errors`` (array input, one column per field): values beyond float32 once scaled."""
    for index, field in out_of_range_rows(scaled, names).items():
        value = float(matrix[index, names.index(field)])
        errors.setdefault(index, RecordError(
            field, f"{value!r} is out of range (too large once scaled)", record_index=index))
