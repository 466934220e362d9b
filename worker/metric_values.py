"""Bulk and per-field metric updates, for the scoring processes' metrics
(``worker/metrics.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram


def counted_fields(encoder: Any) -> tuple[list[str], list[str]]:
    """The fields a model counts: missing ones that training always had, and one-hot fields'
    values no training record had (none for a stand-in without a feature encoder)."""
    missing = sorted(getattr(encoder, "never_missing_fields_", ()))
    unseen = [spec["name"] for spec in getattr(encoder, "fields_", ())  # older bundles' have
              if spec.get("encoding") == "onehot" and "unseen_weight" in spec]  # no unseen
    return missing, unseen


def count_per_field(counter: Counter, counts: dict[str, int] | None) -> None:
    for field, count in (counts or {}).items():
        counter.labels(field).inc(count)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``observe`` each value, with one file write per touched bucket instead of per value.

    Uses the histogram's internal bucket counters (stable across prometheus_client releases
    for years); falls back to plain ``observe`` if they are not there.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = np.bincount(np.searchsorted(np.asarray(bounds), values, side="left"),
                         minlength=len(bounds))
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))
    total.inc(float(np.sum(values)))
