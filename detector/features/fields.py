"""Per-field logic behind :class:`detector.schema.FeatureEncoder`.

Kind inference, lenient value coercion, the fitted statistics of one field (a plain JSON dict,
the field's "spec") and the column encoders that turn a whole batch of one field into its block
of the feature matrix. Batches go through numpy first; Python only looks at single values when
the fast path cannot be used (bad or unusual values), which keeps dict records at >50k rows/s.

>>> signed_log1p(np.array([-9.0, 0.0, 9.0])).round(3).tolist()
[-2.303, 0.0, 2.303]
>>> to_category(3.0), to_category(True), to_number(" 12.5 "), to_bool("FALSE")
('3', 'true', 12.5, 0.0)
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np

KINDS = ("numeric", "categorical", "boolean")
MISSING_CATEGORY = "<missing>"  # the category a null/absent categorical value becomes
OTHER_CATEGORY = "<other>"  # one-hot column for categories not seen in training
# Heavy-tail rule (fields with min >= 0 only): log1p before scaling when
# (q99 - median) > TAIL_Q99_IQRS * IQR  or  (max - median) > TAIL_MAX_IQRS * IQR.
# A zero IQR with max > median (mostly-zero counters with spikes) therefore always qualifies.
TAIL_Q99_IQRS = 5.0
TAIL_MAX_IQRS = 50.0
_HASH_CACHE_LIMIT = 65_536

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
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise BadValue(f"{value!r} is out of the float range") from None
        except ValueError:
            raise BadValue(f"cannot convert {value!r} to a number") from None
        if not math.isfinite(number):
            raise BadValue(f"{value!r} is not a finite number")
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


def infer_kind(column: Sequence[object]) -> str | None:
    """'boolean' | 'numeric' | 'categorical' from training values; None if all are null."""
    types = set(map(type, column)) - {type(None)}
    if not types:
        return None
    if types == {bool}:
        return "boolean"
    if types == {str}:
        # JSON strings are categories ("200", "eu-west"); CSV readers convert numeric cells.
        return "categorical"
    if all(issubclass(t, numbers.Real) for t in types - {str}):
        if str not in types:
            return "numeric"
        # Numbers mixed with strings: numeric strings ("12.5") count as numbers, and a field
        # that is mostly numbers stays numeric so that a few bad values ("n/a") are reported
        # as record errors instead of silently turning the field into a category.
        present = [v for v in column if v is not None]
        if sum(_is_number_like(v) for v in present) >= NUMERIC_SHARE * len(present):
            return "numeric"
    return "categorical"


NUMERIC_SHARE = 0.9


def _is_number_like(value: object) -> bool:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, numbers.Real)


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """log1p that stays monotone (and defined) for negative values seen only at score time."""
    return np.sign(values) * np.log1p(np.abs(values))


def signed_expm1(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.expm1(np.abs(values))


def numeric_stats(values: np.ndarray, log: bool | None = None) -> dict[str, float | bool]:
    """Scaling of one field from its finite training values; log=None applies the tail rule."""
    q25, median, q75, q99 = np.quantile(values, [0.25, 0.5, 0.75, 0.99])
    low, high = float(values.min()), float(values.max())
    if log is None:
        iqr = q75 - q25
        log = low >= 0 and bool(
            q99 - median > TAIL_Q99_IQRS * iqr or high - median > TAIL_MAX_IQRS * iqr
        )
    scaled = signed_log1p(values) if log else values
    t25, center, t75 = np.quantile(scaled, [0.25, 0.5, 0.75]) if log else (q25, median, q75)
    tiny = 1e-12 * max(1.0, abs(float(center)))
    scale = float(t75 - t25)
    if scale <= tiny:  # degenerate IQR (constant or mostly-constant): std, then 1.0
        scale = float(scaled.std())
        scale = scale if scale > tiny else 1.0
    return {"log": bool(log), "center": float(center), "scale": scale,
            "median": float(median), "min": low, "max": high}


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


_BOOL_LOOKUP: dict[object, float] = {True: 1.0, False: 0.0, None: math.nan, **_BOOL_WORDS}
_UNKNOWN = object()


def coerce_booleans(
    name: str, column: list[object], bad: BadRows
) -> tuple[np.ndarray, np.ndarray | None]:
    """0.0/1.0 values (NaN where missing or bad) and the missing mask (None if none missing)."""
    try:  # 1, 1.0 and True hash alike, so one dict lookup covers bools and 0/1 numbers
        mapped: list[object] = [_BOOL_LOOKUP.get(v, _UNKNOWN) for v in column]  # type: ignore[misc]
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


def stable_bucket(category: str, buckets: int) -> int:
    """Process-independent hash bucket (Python's hash() is randomised per process)."""
    digest = hashlib.blake2b(category.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


_DECLARED_KEYS = {"name", "kind", "nullable", "log", "description"}
Plan = list[tuple[str, str, bool, bool | None]]  # (name, kind, nullable, log override)


def parse_declared(schema: object, excluded: set[str]) -> Plan:
    """Validate a declared schema ``{"fields": [{"name", "kind", ...}]}`` (see schema.py)."""
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if not isinstance(fields, list) or not fields:
        raise ValueError('declared_schema must look like {"fields": [{"name": ..., "kind": '
                         '"numeric" | "categorical" | "boolean"}, ...]}')
    plan: Plan = []
    for entry in fields:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"declared field {entry!r} needs a non-empty string 'name'")
        if entry.get("kind") not in KINDS:
            raise ValueError(f"declared field {name!r}: kind must be one of {KINDS}")
        if set(entry) - _DECLARED_KEYS or entry.get("log") not in (None, True, False):
            raise ValueError(f"declared field {name!r}: allowed keys are "
                             f"{sorted(_DECLARED_KEYS)}, 'log' true/false")
        if name in excluded or name in {p[0] for p in plan}:
            raise ValueError(f"declared field {name!r} is duplicated or is the id/label")
        plan.append((name, entry["kind"], bool(entry.get("nullable")), entry.get("log")))
    return plan


def fit_field(
    name: str,
    kind: str,
    column: list[object],
    bad: BadRows,
    *,
    max_onehot: int,
    hash_buckets: int,
    nullable: bool = False,
    log: bool | None = None,
) -> dict:
    """The fitted spec of one field from its training values (bad values land in ``bad``)."""
    if kind == "categorical":
        categories = coerce_categories(name, column, bad)
        distinct = sorted({MISSING_CATEGORY if c is None else c for c in categories})
        if len(distinct) <= max_onehot:
            return {"name": name, "kind": kind, "encoding": "onehot", "categories": distinct}
        return {"name": name, "kind": kind, "encoding": "hash", "buckets": hash_buckets,
                "n_distinct": len(distinct)}
    coerce = coerce_numbers if kind == "numeric" else coerce_booleans
    values, missing = coerce(name, column, bad)
    present = values[np.isfinite(values)]
    if present.size == 0:
        if bad:  # every value bad: the caller raises the RecordError
            return {"name": name, "kind": kind}
        raise ValueError(f"field {name!r} has no non-null values in the training records")
    indicator = nullable or missing is not None
    if kind == "boolean":
        return {"name": name, "kind": kind, "mean": float(present.mean()),
                "missing_indicator": indicator}
    return {"name": name, "kind": kind, **numeric_stats(present, log),
            "missing_indicator": indicator}


Encode = Callable[[list[object], np.ndarray, BadRows], None]


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

        def encode_scalar(column: list[object], block: np.ndarray, bad: BadRows) -> None:
            values, missing = coerce(name, column, bad)
            scaled = (signed_log1p(values) if log else values) - center
            scaled /= scale
            if missing is not None:
                scaled[missing] = imputed
                if block.shape[1] > 1:
                    block[:, 1] = missing
            block[:, 0] = scaled

        return encode_scalar
    if spec["encoding"] == "onehot":
        index = {c: j for j, c in enumerate(spec["categories"])}
        other = len(index)
        index[None] = index.get(MISSING_CATEGORY, other)  # type: ignore[index]
        lookup = index.get
    else:
        buckets = spec["buckets"]
        cache: dict[str | None, int] = {}

        def lookup(category: str | None, default: int) -> int:
            bucket = cache.get(category)
            if bucket is None:  # memoised: blake2b per value would dominate the batch
                if len(cache) > _HASH_CACHE_LIMIT:
                    cache.clear()
                key = MISSING_CATEGORY if category is None else category
                bucket = cache[category] = stable_bucket(key, buckets)
            return bucket

        other = 0

    def encode_category(column: list[object], block: np.ndarray, bad: BadRows) -> None:
        categories = coerce_categories(name, column, bad)
        columns = np.array([lookup(c, other) for c in categories], dtype=np.intp)
        block[np.arange(len(columns)), columns] = 1.0

    return encode_category
