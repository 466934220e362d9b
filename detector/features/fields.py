"""Per-field logic behind :class:`detector.schema.FeatureEncoder`.

Kind inference, lenient value coercion and the fitted statistics of one field (a plain JSON
dict, the field's "spec"); ``encoding`` turns a batch of records into feature columns.

>>> signed_log1p(np.array([-9.0, 0.0, 9.0])).round(3).tolist()
[-2.303, 0.0, 2.303]
"""

from __future__ import annotations

import hashlib
import numbers
import warnings
from collections.abc import Sequence

import numpy as np

from .matrix import natural_key
from .values import (
    BadRows,
    BadValue,
    coerce_booleans,
    coerce_categories,
    coerce_numbers,
    to_bool,
    to_category,
    to_number,
)

__all__ = ["BadRows", "BadValue", "coerce_booleans", "coerce_categories", "coerce_numbers",
           "to_bool", "to_category", "to_number"]  # re-exported: moved to values.py

KINDS = ("numeric", "categorical", "boolean")
Plan = list[tuple[str, str, bool, bool | None]]  # (name, kind, nullable, log override)
MISSING_CATEGORY = "<missing>"  # the category a null/absent categorical value becomes
OTHER_CATEGORY = "<other>"  # one-hot column for categories not seen in training
# Heavy-tail rule (fields with min >= 0 only): log1p before scaling when
# (q99 - median) > TAIL_Q99_IQRS * IQR  or  (max - median) > TAIL_MAX_IQRS * IQR.
# A zero IQR with max > median (mostly-zero counters with spikes) therefore always qualifies.
TAIL_Q99_IQRS = 5.0
TAIL_MAX_IQRS = 50.0
# IQR / 1.349 estimates the standard deviation of normal data: a robust sd, on the scale of
# the std fallback (degenerate IQR) and of a boolean flip or category change (1.0).
IQR_PER_SD = 1.349
# A category change moves two 0/1 columns (a distance of sqrt(2) at value 1): columns at
# 1/sqrt(2) make it 1, what a boolean flip or one robust unit of a numeric field costs, so a
# categorical field weighs like one field (see ``category_weight``).
ONEHOT_WEIGHT = 0.5**0.5
# A value no training record had (a one-hot field's ``<other>`` column) costs this much, not
# the 1 of a change to a known category: a new country or merchant category is news. At 1, a
# fraud trial's never-seen merchant categories were flagged 0 % of the time (AUROC 0.83); at 3
# (5 and 10 alike) 100 %, at the same false-alarm rate (bench/results/unseen-categories/).
# Hashed fields (over ``max_onehot`` values) have no unseen value: a new one shares a bucket.
UNSEEN_CATEGORY_COST = 3.0


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


def infer_plan(rows: list[dict], names: set[str]) -> tuple[Plan, list[str]]:
    """Each field's inferred kind, in natural name order; fields without values dropped."""
    plan: Plan = []
    dropped: list[str] = []
    for name in sorted(names, key=natural_key):
        column = [row.get(name) for row in rows]
        kind = infer_kind(column)
        if kind is not None and set(map(type, column)) <= {dict, list, type(None)}:
            warnings.warn(f"field {name!r} holds only nested objects or arrays: it is not a "
                          "feature (flatten it into fields of plain values to use it)",
                          UserWarning, stacklevel=2)
            kind = None
        if kind is None:
            dropped.append(name)
        else:
            plan.append((name, kind, False, None))
    return plan, dropped


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
    # A spread is real unless it is float round-off of the centre (1e-14 relative is ~45
    # float64 steps): 1e-13 around 0, or 1e-6 around 1e7, are data, not noise (they were
    # scaled by 1.0 before, so a 1000-sd outlier there scored as normal).
    tiny = max(1e-14 * abs(float(center)), 1e-300)
    scale = float(t75 - t25) / IQR_PER_SD
    if scale <= tiny:  # degenerate IQR (constant or mostly-constant): std, then 1.0
        scale = float(scaled.std())
        scale = scale if scale > tiny else 1.0
    return {"log": bool(log), "center": float(center), "scale": scale,
            "median": float(median), "min": low, "max": high}


def stable_bucket(category: str, buckets: int) -> int:
    """Process-independent hash bucket (Python's hash() is randomised per process)."""
    digest = hashlib.blake2b(category.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


_DECLARED_KEYS = {"name", "kind", "nullable", "log", "description"}


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
            return {"name": name, "kind": kind, "encoding": "onehot", "categories": distinct,
                    "weight": ONEHOT_WEIGHT,
                    "unseen_weight": (UNSEEN_CATEGORY_COST ** 2 - ONEHOT_WEIGHT ** 2) ** 0.5}
        return {"name": name, "kind": kind, "encoding": "hash", "buckets": hash_buckets,
                "n_distinct": len(distinct), "missing_seen": MISSING_CATEGORY in distinct,
                "weight": category_weight(hash_buckets, len(distinct))}
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


def category_weight(buckets: int, n_distinct: int) -> float:
    """Value of a hashed field's 0/1 columns: ``ONEHOT_WEIGHT * sqrt(buckets / n_distinct)``.

    A bucket pools ``n_distinct / buckets`` unrelated values (an identifier such as a client
    id), so two records sharing a bucket is weak evidence of alike behaviour, and a normal
    record's nearest references rarely share it. At weight 1, the synthetic telemetry's hashed
    ``client`` was the largest share of the kNN distance of the most atypical normal records,
    above 20-60x latencies (identity encoder, 20k references: AUROC 0.977; 0.997 with these
    category weights).
    """
    return ONEHOT_WEIGHT * min(1.0, (buckets / max(n_distinct, 1)) ** 0.5)


def array_specs(columns: np.ndarray) -> list[dict]:
    """Numeric fields ``f0, f1, ...`` of an array's (contiguous) columns."""
    return [{"name": f"f{j}", "kind": "numeric", **numeric_stats(column),
             "missing_indicator": False} for j, column in enumerate(columns)]


def never_missing(spec: dict) -> bool:
    """Whether training never had the field missing (or declared it nullable): a missing value
    is then filled in with a typical one, and no column says it was missing."""
    if spec["kind"] == "categorical":  # hashed: states from before "missing_seen" never
        if spec["encoding"] == "hash":
            return spec.get("missing_seen") is False
        return MISSING_CATEGORY not in spec["categories"]
    return not spec["missing_indicator"]
