"""Analyst verdicts: "this record is normal" / "this record is an anomaly", kept in Redis.

Retraining uses them: records labelled normal may join the references, records labelled
anomaly never do and measure the challenger's recall. A verdict names a record by id; the
record itself is given inline or found where the service left a copy (``find_record``):
the alert events, the dead letters, the reference buffer.

Layout (``key`` defaults to ``nearwatch:feedback``): ``{key}`` is a hash from the canonical
id to the verdict's JSON, ``{key}:times`` a sorted set of the same ids by time (to drop the
oldest beyond ``max_entries``), ``{key}:labels`` a hash from id to label (so ``counts`` reads
a few bytes per verdict, not the records). One Lua script updates the three atomically.

Ids are compared by their canonical JSON (``canonical_id``): ``7`` and ``"7"`` are different
ids, while ``1`` and ``1.0`` are the same id, as they are the same JSON number (a record
re-serialised by another tool may turn one into the other).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nearwatch.worker.alerts import ALERTS_STREAM, event_from_fields
from nearwatch.worker.names import DEADLETTER_STREAM
from nearwatch.worker.reference_buffer import BUFFER_PREFIX, dump_json

from .buffer import parse_entry

if TYPE_CHECKING:
    from redis import Redis

FEEDBACK_KEY = "nearwatch:feedback"
FEEDBACK_TOTAL_KEY = "nearwatch:feedback:total"  # hash: label -> verdicts received
LABELS = ("normal", "anomaly")
_CHUNK = 1_000  # stream entries per XREVRANGE, buffer keys per pipeline

# KEYS: verdicts, times, labels. ARGV: id, verdict JSON, time, label, max entries.
_PUT_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
while extra > 0 do
  local n = math.min(extra, 1000)
  local old = redis.call('ZRANGE', KEYS[2], 0, n - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[3], unpack(old))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - 1)
  extra = extra - n
end
return 1
"""


@dataclass(frozen=True)
class Verdict:
    """An analyst's label for one record, with the record it was given for."""

    record_id: Any
    label: str  # "normal" | "anomaly"
    record: dict[str, Any]
    time: float
    source: str  # where the record came from: "inline", "alerts", "buffer", "deadletter"


def canonical_id(value: Any) -> str:
    """The text ids are compared by: compact, sorted JSON, integral floats as integers.

    >>> canonical_id(7), canonical_id("7"), canonical_id(1.0), canonical_id({"b": 1, "a": 2})
    ('7', '"7"', '1', '{"a":2,"b":1}')
    """
    return json.dumps(_normal(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)


def _normal(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    return value


def refuse_non_finite(value: Any, what: str) -> None:
    """``ValueError`` naming the first NaN or infinity in ``value``: JSON has neither, so it
    would be stored as null, a value nobody gave (``nearwatch golden`` refuses them too)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what}: {value!r} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            refuse_non_finite(item, f"{what} field {key!r}")
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            refuse_non_finite(item, f"{what}[{position}]")


def _verdict(raw: bytes | str) -> Verdict:
    value = json.loads(raw)
    return Verdict(record_id=value["id"], label=value["label"], record=value["record"],
                   time=float(value["time"]), source=value["source"])


class FeedbackStore:
    """At most ``max_entries`` verdicts, one per record id (the latest), oldest dropped."""

    def __init__(self, client: Redis, max_entries: int, key: str = FEEDBACK_KEY) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive (got {max_entries})")
        self.client = client
        self.max_entries = max_entries
        self.key = key
        self.keys = [key, f"{key}:times", f"{key}:labels"]
        self._script = client.register_script(_PUT_SCRIPT)

    def put(self, record_id: Any, label: str, record: dict[str, Any],
            source: str = "inline") -> Verdict:
        """Store the verdict (replacing any earlier one for this id) and return it."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)} (got {label!r})")
        if not isinstance(record, dict):
            raise ValueError(f"the record must be a JSON object (got {type(record).__name__})")
        refuse_non_finite(record_id, "the id")
        refuse_non_finite(record, "the record")
        verdict = Verdict(record_id=record_id, label=label, record=record, time=time.time(),
                          source=source)
        text = dump_json({"id": record_id, "label": label, "record": record,
                          "time": verdict.time, "source": source})
        self._script(keys=self.keys, args=[canonical_id(record_id), text, verdict.time,
                                           label, self.max_entries])
        return verdict

    def all(self) -> list[Verdict]:
        """Every verdict kept, oldest first."""
        values = self.client.hvals(self.key)
        return sorted((_verdict(raw) for raw in values),
                      key=lambda v: v.time)

    def counts(self) -> dict[str, int]:
        """The number of verdicts per label (every label present, 0 if none)."""
        found = dict.fromkeys(LABELS, 0)
        for raw in self.client.hvals(self.keys[2]):
            label = raw.decode() if isinstance(raw, bytes) else str(raw)
            found[label] = found.get(label, 0) + 1
        return found

    def clear(self) -> None:
        """Drop every verdict."""
        self.client.delete(*self.keys)


def find_record(client: Redis, record_id: Any, *, alerts_stream: str = ALERTS_STREAM,
                deadletter_stream: str = DEADLETTER_STREAM,
                buffer_prefix: str = BUFFER_PREFIX, scan_limit: int = 100_000
                ) -> tuple[dict[str, Any], str] | None:
    """The record with this id and where it was found ("alerts", "deadletter", "buffer"),
    or None. Each stream is read newest first, at most ``scan_limit`` entries of it; in the
    buffer the newest entry with the id wins. An alert event carries only the scalar fields
    of a record over 8 KiB, a dead letter a record cut at 64 KiB (then not found there).
    """
    if record_id is None:  # records without an id cannot be told apart
        return None
    wanted = canonical_id(record_id)
    for raw_fields in _newest_first(client, alerts_stream, scan_limit):
        try:
            event = event_from_fields(raw_fields)
        except ValueError:
            continue
        if isinstance(event.get("record"), dict) and canonical_id(event.get("id")) == wanted:
            return event["record"], "alerts"
    for raw_fields in _newest_first(client, deadletter_stream, scan_limit):
        fields = {_text(k): v for k, v in raw_fields.items()}
        try:
            if canonical_id(json.loads(fields.get("id", "null"))) != wanted:
                continue
            record = json.loads(fields.get("record", "null"))
        except ValueError:
            continue
        if isinstance(record, dict):
            return record, "deadletter"
    found = _newest_in_buffer(client, wanted, buffer_prefix, scan_limit)
    return None if found is None else (found, "buffer")


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _newest_first(client: Redis, stream: str, limit: int) -> Any:
    """The field maps of ``stream``'s entries, newest first, at most ``limit`` of them."""
    upper = "+"
    read = 0
    while read < limit:
        chunk = client.xrevrange(stream, max=upper, min="-", count=min(_CHUNK, limit - read))
        if not chunk:
            return
        for _entry_id, fields in chunk:
            yield fields
        read += len(chunk)
        upper = "(" + _text(chunk[-1][0])


def _newest_in_buffer(client: Redis, wanted: str, prefix: str, limit: int
                      ) -> dict[str, Any] | None:
    """The record of the newest buffer entry with this id among (about) ``limit`` entries."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=_CHUNK, _type="list"))
    best: tuple[float, dict[str, Any]] | None = None
    read = 0
    for start in range(0, len(keys), _CHUNK):
        if read >= limit:
            break
        pipe = client.pipeline(transaction=False)
        for key in keys[start:start + _CHUNK]:
            pipe.lrange(key, 0, -1)
        for values in pipe.execute():
            read += len(values)
            for raw in values:
                try:
                    entry = parse_entry(raw)
                except ValueError:
                    continue
                if canonical_id(entry.record_id) == wanted and (best is None
                                                                or entry.time > best[0]):
                    best = (entry.time, entry.record)
    return None if best is None else best[1]


def check_inline_id(record_id: Any, record: Any) -> None:
    """A record given inline with an ``id`` must carry the verdict's id (``7`` is not ``"7"``)."""
    inline_id = record.get("id") if isinstance(record, dict) else None
    if inline_id is not None and canonical_id(inline_id) != canonical_id(record_id):
        raise ValueError(f"the record's id is {canonical_id(inline_id)}, not "
                         f"{canonical_id(record_id)}: one verdict names one record")


def record_feedback(client: Redis, store: FeedbackStore, record_id: Any, label: str,
                    record: dict[str, Any] | None) -> Verdict:
    """Store a verdict: the record given inline, else the one ``find_record`` finds;
    ``LookupError`` when there is neither."""
    if label not in LABELS:  # before a search that may read many entries
        raise ValueError(f"label must be one of {', '.join(LABELS)} (got {label!r})")
    if record is not None:
        check_inline_id(record_id, record)
        return store.put(record_id, label, record, source="inline")
    found = find_record(client, record_id)
    if found is None:
        raise LookupError(f"record id {canonical_id(record_id)} not found in {ALERTS_STREAM}, "
                          f"the buffer or {DEADLETTER_STREAM}: give the record inline")
    return store.put(record_id, label, found[0], source=found[1])


def split_labelled(verdicts: list[Verdict]) -> tuple[list[Verdict], list[Verdict]]:
    """Labelled anomalies for training (hard negatives) and for the gate, disjoint.

    Judging a challenger on the anomalies it trained on overstates it (measured with the
    learned encoder: recall 0.80 on them, 0.15 on fresh ones of the same kind). From four
    verdicts on, each goes to the gate by a hash of its id (``held_out_for_judging``, as the
    golden file's anomalies): a verdict stays in its half as verdicts accumulate, so the
    champion was never trained on what the next gate judges it on. With fewer, or when the
    hash leaves a half empty, all train / they alternate by hash rank.

    >>> trained, judged = split_labelled([Verdict(i, "anomaly", {}, 0.0, "") for i in range(8)])
    >>> len(trained) > 0 and len(judged) > 0 and len(trained) + len(judged) == 8
    True
    """
    from nearwatch.detector.held_out import held_out_for_judging

    if len(verdicts) < 4:
        return verdicts, []
    judged = [held_out_for_judging({"id": v.record_id}) for v in verdicts]
    if any(judged) and not all(judged):
        return ([v for v, j in zip(verdicts, judged, strict=True) if not j],
                [v for v, j in zip(verdicts, judged, strict=True) if j])
    ranked = sorted(verdicts, key=lambda v: hashlib.sha1(canonical_id(v.record_id).encode())
                    .hexdigest())
    return ranked[0::2], ranked[1::2]
