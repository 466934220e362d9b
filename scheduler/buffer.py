"""The reference buffer, read side, and the golden set: where retraining finds its records.

The workers sample their scored records into per-bucket reservoirs
(``worker/reference_buffer.py`` describes the layout); ``read_buffer`` returns the entries
of the ``settings.buckets`` most recent buckets (the current one included), so what it
reads is bounded by ``settings.capacity`` records (rounded up per bucket) and
``settings.max_bytes``. The bucket numbers are computed from the clock, so no ``SCAN`` is
needed; a bucket older than that is not read even while its key has not yet expired.

The golden set is a fixed, uniform sample of the original training records, pinned once
(``pin_golden``): retraining mixes it into the references so that a slow drift of the
traffic cannot move the model's idea of "normal" arbitrarily far.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nearwatch.worker.reference_buffer import (
    BUFFER_PREFIX,
    bucket_key,
    bucket_of,
    dump_json,
)
from nearwatch.worker.settings_sections import BufferSettings

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("nearwatch.buffer")

GOLDEN_KEY = "nearwatch:golden"
# the labelled anomalies of the golden file: hard negatives and the gate's labelled checks
GOLDEN_ANOMALIES_KEY = "nearwatch:golden:anomalies"
_CHUNK = 1_000  # values per RPUSH when pinning the golden set


@dataclass(frozen=True)
class BufferEntry:
    """One buffered record, with the p-value it was scored with and by which model."""

    record: dict[str, Any]
    p_value: float
    time: float
    record_id: Any
    model_version: str


def parse_entry(raw: bytes | str) -> BufferEntry:
    """The entry stored as ``raw``; ``ValueError`` if it is not one.

    >>> parse_entry('{"t": 5.0, "p": 0.5, "id": 7, "v": "v1", "r": {"id": 7}}').p_value
    0.5
    """
    try:  # json, not orjson: orjson reads integers beyond 64 bits as floats (ids!)
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    record, p_value, stamp = value.get("r"), value.get("p"), value.get("t")
    if not isinstance(record, dict):
        raise ValueError("no record")
    if not isinstance(p_value, int | float) or not isinstance(stamp, int | float):
        raise ValueError("no p-value or time")
    return BufferEntry(record=record, p_value=float(p_value), time=float(stamp),
                       record_id=value.get("id"), model_version=str(value.get("v", "")))


def window_keys(schema_version: str, settings: BufferSettings, now: float,
                prefix: str = BUFFER_PREFIX) -> list[str]:
    """The bucket lists of the window ending at ``now``, oldest first.

    >>> window_keys("s", BufferSettings(window_s=30.0, buckets=3), now=25.0, prefix="b")
    ['b:s:0', 'b:s:1', 'b:s:2']
    """
    last = bucket_of(now, settings)
    return [bucket_key(prefix, schema_version, b)
            for b in range(last - settings.buckets + 1, last + 1)]


def read_buffer(client: Redis, schema_version: str, settings: BufferSettings,
                now: float | None = None, prefix: str = BUFFER_PREFIX) -> list[BufferEntry]:
    """Every entry of the window's buckets (one pipelined round trip), oldest bucket first.

    Unparsable entries (written by another version, or damaged) are skipped: one warning
    per call gives their count.
    """
    keys = window_keys(schema_version, settings, time.time() if now is None else now, prefix)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.lrange(key, 0, -1)
    entries: list[BufferEntry] = []
    bad = 0
    for values in pipe.execute():
        for raw in values:
            try:
                entries.append(parse_entry(raw))
            except ValueError:
                bad += 1
    if bad:
        log.warning("skipped %d unparsable entries of the reference buffer %s:%s", bad,
                    prefix, schema_version)
    return entries


def buffer_size(client: Redis, schema_version: str, settings: BufferSettings,
                now: float | None = None, prefix: str = BUFFER_PREFIX) -> int:
    """The number of entries ``read_buffer`` would return (one pipelined round trip)."""
    keys = window_keys(schema_version, settings, time.time() if now is None else now, prefix)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


def pin_golden(client: Redis, records: Sequence[dict[str, Any]], capacity: int,
               seed: int = 0, key: str = GOLDEN_KEY) -> int:
    """Pin a uniform random sample of at most ``capacity`` records as the golden set; the
    number pinned. The previous set is replaced atomically (a MULTI that fills a temporary
    key and RENAMEs it over ``key``): a reader sees the old set or the new one, never a mix.
    """
    if capacity < 0:
        raise ValueError(f"capacity must not be negative (got {capacity})")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"golden record {i} is not a JSON object "
                             f"(got {type(record).__name__})")
    chosen = sorted(random.Random(seed).sample(range(len(records)),
                                               min(capacity, len(records))))
    values = [dump_json(records[i]) for i in chosen]
    temporary = f"{key}:pinning:{uuid.uuid4().hex}"
    pipe = client.pipeline(transaction=True)
    if values:
        for start in range(0, len(values), _CHUNK):
            pipe.rpush(temporary, *values[start:start + _CHUNK])
        pipe.rename(temporary, key)
    else:
        pipe.delete(key)
    pipe.execute()
    return len(values)


def golden_records(client: Redis, key: str = GOLDEN_KEY) -> list[dict[str, Any]]:
    """The pinned golden records (empty if none were pinned)."""
    records = []
    for raw in client.lrange(key, 0, -1):
        value = json.loads(raw)
        if isinstance(value, dict):
            records.append(value)
    return records


def golden_size(client: Redis, key: str = GOLDEN_KEY) -> int:
    """The number of pinned golden records."""
    return int(client.llen(key))


def buffer_pace(settings: BufferSettings, wanted: int) -> str:
    """Why the buffer holds fewer than ``wanted`` records however busy the traffic: one
    reservoir per time bucket (empty when a bucket can hold them)."""
    per_bucket = -(-settings.capacity // settings.buckets)
    if per_bucket >= wanted:
        return ""
    return (f" (the buffer keeps at most {per_bucket} records per "
            f"{settings.window_s / settings.buckets:g} s of traffic: NEARWATCH_BUFFER_RECORDS "
            f"/ NEARWATCH_BUFFER_BUCKETS)")
