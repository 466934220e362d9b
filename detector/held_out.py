"""Which labelled anomalies are held out to judge models, never trained on.

A model judged on the anomalies it trained on looks better than it is (measured with the
learned encoder: recall 0.80 on them, 0.15 on fresh ones of the same kind). The service keeps
labelled anomalies of its training file for every retraining (``nearwatch golden
--label-field``): half of them train each challenger as known anomalies, the other half judge
it against the champion. ``nearwatch train --known-anomalies`` takes its known anomalies from
the same half, so no model, the first one included, has seen the anomalies it is judged on.

The half is decided per record by a hash of its id (of the whole record when it has none), so
it is the same in every command and every run, whatever the other records.

>>> held_out_for_judging({"id": "r17", "latency_ms": 900.0})
False
>>> held_out_for_judging({"id": "r18", "latency_ms": 900.0})
True
>>> held_out_for_judging({"latency_ms": 900.0}) == held_out_for_judging({"latency_ms": 900.0})
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def held_out_for_judging(record: Any, id_field: str = "id") -> bool:
    """Whether this labelled anomaly judges models (True) or may train them (False)."""
    key = record.get(id_field) if isinstance(record, Mapping) else None
    value = record if key is None else key
    if isinstance(value, float) and value.is_integer():  # 17.0 and 17 are one id
        value = int(value)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).digest()[0] % 2 == 1
