"""The column encoders of fitted fields: a whole batch of one field into its block of the
feature matrix. Batches go through numpy first; Python only looks at single values when the
fast path cannot be used (bad or unusual values), which keeps dict records at >50k rows/s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from ..errors import MissingFieldsWarning
from .fields import MISSING_CATEGORY, OTHER_CATEGORY, never_missing, signed_log1p, stable_bucket
from .values import (
    BadRows,
    BadValue,
    coerce_booleans,
    coerce_categories,
    coerce_numbers,
    to_category,
)

_HASH_CACHE_LIMIT = 65_536

# (values, block, bad) -> (values missing, values no training record had)
Encode = Callable[[list[object], np.ndarray, BadRows], tuple[int, int]]


def encode_fields(encoders: list[tuple[str, int, int, Encode]], rows: list[dict],
                  matrix: np.ndarray, bad: BadRows, never_missing: frozenset[str]
                  ) -> tuple[dict[str, int], dict[str, int]]:
    """Fill ``matrix`` field by field. Per field: the rows without a value where training
    always had one (``never_missing``), and the rows with a category no training record had."""
    absent: dict[str, int] = {}
    unseen: dict[str, int] = {}
    with np.errstate(over="ignore"):  # a value beyond float32 once scaled: screen_rows
        for name, start, stop, encode in encoders:
            # map(dict.get, ...) beats a list comprehension by ~20% on this hot path
            n_missing, n_unseen = encode(list(map(dict.get, rows, repeat(name))),
                                         matrix[:, start:stop], bad)
            if n_missing and name in never_missing:
                absent[name] = n_missing
            if n_unseen:
                unseen[name] = n_unseen
    return absent, unseen


def add_counts(seen: dict[str, int], counts: dict[str, int], rows: Sequence[Any],
               errors: Collection[int], counted: Callable[[str, Any], bool]) -> None:
    """Add ``counts`` to ``seen``, per field, less the rows in ``errors`` whose value of the
    field was ``counted``: those are answered with the error, not scored."""
    for index in errors:
        for name in counts:
            counts[name] -= counted(name, rows[index].get(name))
    for name, count in counts.items():
        if count:
            seen[name] = seen.get(name, 0) + count


def unseen_in(specs: dict[str, dict]) -> Callable[[str, Any], bool]:
    """``unseen_category`` of a field named, for ``add_counts``."""
    return lambda name, value: unseen_category(specs[name], value)


def unseen_category(spec: dict, value: Any) -> bool:
    """Whether a one-hot field's ``value`` is one no training record had."""
    try:
        category = to_category(value)
    except BadValue:  # a bad value: an error, not a category
        return False
    return category is not None and category not in spec["categories"]


def column_names(spec: dict) -> list[str]:
    """Output column names of one fitted field, in column order."""
    name = spec["name"]
    if spec["kind"] == "categorical":
        if spec["encoding"] == "onehot":
            return [f"{name}={c}" for c in [*spec["categories"], OTHER_CATEGORY]]
        return [f"{name}#{j}" for j in range(spec["buckets"])]
    return [name, f"{name}__missing"] if spec["missing_indicator"] else [name]


def make_encoder(spec: dict) -> Encode:
    """A closure that fills ``block`` (n, width of the field) from the field's raw values."""
    name, kind = spec["name"], spec["kind"]
    if kind in ("numeric", "boolean"):
        coerce = coerce_numbers if kind == "numeric" else coerce_booleans
        log = kind == "numeric" and spec["log"]
        center, scale = (spec["center"], spec["scale"]) if kind == "numeric" else (0.0, 1.0)
        imputed = 0.0 if kind == "numeric" else spec["mean"]  # numeric 0.0 == the median

        def encode_scalar(column: list[object], block: np.ndarray, bad: BadRows
                          ) -> tuple[int, int]:
            values, missing = coerce(name, column, bad)
            scaled = (signed_log1p(values) if log else values) - center
            scaled /= scale
            block[:, 0] = scaled
            if missing is None:
                return 0, 0
            block[missing, 0] = imputed
            if block.shape[1] > 1:
                block[:, 1] = missing
            return int(np.count_nonzero(missing)), 0

        return encode_scalar
    lookup: Callable[[str | None, int], int]  # category -> column (default: other)
    unseen_column, unseen_weight = -1, 0.0  # a one-hot field's unseen values, marked apart
    if spec["encoding"] == "onehot":
        index = {c: j for j, c in enumerate(spec["categories"])}
        other = len(index)
        index[None] = index.get(MISSING_CATEGORY, other)  # missing: not unseen
        lookup = index.get
        if "unseen_weight" in spec:  # older states: an unseen value weighs as a known one
            unseen_column, unseen_weight = other + 1, spec["unseen_weight"]
    else:
        buckets = spec["buckets"]
        cache: dict[str | None, int] = {}

        def hashed(category: str | None, default: int) -> int:
            bucket = cache.get(category)
            if bucket is None:  # memoised: blake2b per value would dominate the batch
                if len(cache) > _HASH_CACHE_LIMIT:
                    cache.clear()
                key = MISSING_CATEGORY if category is None else category
                bucket = cache[category] = stable_bucket(key, buckets)
            return bucket

        lookup, other = hashed, 0

    weight = spec.get("weight", 1.0)  # states from before field weights: 0/1 columns
    counted = never_missing(spec)  # the other categorical fields' missing values are expected

    def encode_category(column: list[object], block: np.ndarray, bad: BadRows
                        ) -> tuple[int, int]:
        categories = coerce_categories(name, column, bad)
        default = other if unseen_column < 0 else unseen_column
        columns = np.array([lookup(c, default) for c in categories], dtype=np.intp)
        unseen = columns == unseen_column
        columns[unseen] = other
        block[np.arange(len(columns)), columns] = weight
        block[unseen, other] = unseen_weight
        return column.count(None) if counted else 0, int(np.count_nonzero(unseen))

    return encode_category


def warn_about_input(encoder: Any, before: dict[str, int], data: Any) -> None:
    """A ``MissingFieldsWarning`` per field that ``encoder`` counted missing since ``before``;
    for an array scored by a model of named fields, the column order it is read in (a
    normal transaction given in its file's column order scored 278 against a threshold of
    0.59: an array is read in the model's field order)."""
    for field, count in encoder.missing_fields_seen_.items():  # one text per field: shown
        if count > before.get(field, 0):  # once by Python's default filter, not every call
            warnings.warn(f"records lack {field!r}, which every training record had: scored "
                          "as if it held a typical value (counted in the feature encoder's "
                          "missing_fields_seen_)", MissingFieldsWarning, stacklevel=4)
    names = [spec["name"] for spec in encoder.fields_]
    positional = ([f"f{j}" for j in range(len(names))], [str(j) for j in range(len(names))])
    if isinstance(data, np.ndarray) and names not in positional:
        warnings.warn(f"an array is read as the model's fields in this order: {names} "
                      "(pass records or a DataFrame to name them)", UserWarning, stacklevel=4)
