"""Alert events: every flagged record becomes one entry of the Redis stream ``nearwatch:alerts``.

The scoring path calls ``RedisAlertWriter.emit`` once per scored batch (``BatchScorer._score``,
so the Celery tasks of ``stream``, ``ingest`` and the Python client all emit). It writes the
batch's events with one pipelined round trip of ``XADD ... MAXLEN ~`` (approximate trimming
is O(1) amortised; exact trimming would rewrite the stream's head on every write).

It never breaks scoring, and slows it only while Redis does not answer: a write that
fails is tried again for 7.5 s, once per outage (later batches try once until a write
succeeds); every failure is logged and counted
(``nearwatch_alert_write_failures_total``), never raised, and ``explain`` (the most deviating
fields, ~0.5 ms per record against ~0.07 ms to score one) runs for at most
``explain_max`` flagged records per batch, so an anomaly storm cannot multiply the cost of
scoring; events beyond the cap carry ``"fields": null``.

An event is the JSON text in the entry's field ``event`` (``event_from_fields``):
``event_id`` (one per delivery of a record: a redelivered batch gives the same ids, so the
consumer counts it once, while the same record sent again is a new event),
``time``, ``id``, ``score``, ``p_value``, ``threshold``, ``fpr_bound``, ``certified``,
``alpha``, ``model_version`` (registry version), ``model_hash``, ``neighbours``, ``fields``
and ``record`` (the record itself, so a consumer can key on any of its fields).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from nearwatch.detector import Detector
    from redis import Redis

    from .metrics import ServiceMetrics

log = logging.getLogger("nearwatch.alerts")

ALERTS_STREAM = "nearwatch:alerts"
ALERTS_DEAD_STREAM = "nearwatch:alerts:dead"
ALERTS_GROUP = "nearwatch-alerts"
EVENT_FIELD = "event"
# A record larger than this is carried as its scalar fields only: the stream keeps 100k
# events by default, and a few odd multi-kilobyte records must not make that gigabytes.
MAX_RECORD_CHARS = 8192


def build_events(detector: Detector, version: str, records: list[Any],
                 results: list[dict[str, Any]], explain_max: int, now: float | None = None,
                 delivery: str | None = None,
                 explanations: Mapping[int, Any] | None = None) -> list[dict[str, Any]]:
    """One event per result flagged ``is_anomaly`` (records[i] is the record of results[i]).

    ``delivery`` names this batch's delivery (``worker.tasks.delivery_key``): the same on a
    redelivery of the batch, new when records are sent again. None: a new one per call.
    ``explanations``: the fields of the first ``explain_max`` flagged records by position,
    as the scoring search gave them (``score_records(explain=...)``); None: explained here."""
    flagged = [i for i, result in enumerate(results) if result.get("is_anomaly") is True]
    if not flagged:
        return []
    explained: list[Any] = [None] * len(flagged)
    chosen = [records[i] for i in flagged[:explain_max]]
    if explanations is not None:
        explained[:len(chosen)] = [explanations.get(i) for i in flagged[:explain_max]]
    elif chosen:
        try:
            fields = [e["fields"] for e in detector.explain(chosen, n_neighbours=1, n_fields=3)]
            explained[:len(fields)] = fields
        except Exception:  # an explanation is a convenience: the event is sent without it
            log.exception("explain failed for %d flagged records", len(chosen))
    stamp = time.time() if now is None else now
    common = {"threshold": detector.threshold_, "fpr_bound": detector.fpr_bound_,
              "certified": bool(getattr(detector, "certified_", True)),
              "alpha": detector.alpha, "model_version": version,
              "model_hash": str(detector.model_version_)}
    events = []
    delivery = uuid.uuid4().hex if delivery is None else delivery
    for i, fields in zip(flagged, explained, strict=True):
        result = results[i]
        event = {"event_id": event_id(version, result, delivery, i), "time": stamp,
                 "id": result.get("id"), "score": result.get("score"),
                 "p_value": result.get("p_value"), **common,
                 "neighbours": result.get("neighbours", []), "fields": fields,
                 "record": _bounded(records[i])}
        events.append(event)
    return events


def event_id(version: str, result: dict[str, Any], delivery: str, position: int) -> str:
    """Same delivery, position, record and model → same id: a redelivered batch's events
    are recognised; a record that recurs in a later batch is a new event."""
    text = (f"{version}\0{delivery}\0{position}\0{result.get('id')!r}"
            f"\0{result.get('score')!r}")
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def event_from_fields(fields: dict[Any, Any]) -> dict[str, Any]:
    """The event of a stream entry; ``ValueError`` if the entry holds none."""
    raw = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD))
    if raw is None:
        raise ValueError(f"no {EVENT_FIELD!r} field")
    event = json.loads(raw)
    if not isinstance(event, dict) or "event_id" not in event:
        raise ValueError("not an alert event")
    return event


def _bounded(record: Any) -> Any:
    if not isinstance(record, dict):
        return record
    if len(_dump(record)) <= MAX_RECORD_CHARS:
        return record
    return {k: v for k, v in record.items()
            if isinstance(v, str | int | float | bool) and len(str(v)) <= 256}


def _dump(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, default=str)


# Redis unreachable or stalled: the write is tried again after these pauses (7.5 s in all)
# before the events are given up; a second write cannot page twice (the alert consumer takes
# an event id once). A 6 s stall lost the events of records answered as flagged (a trial).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


class RedisAlertWriter:
    """Writes a batch's events to ``nearwatch:alerts`` in one pipelined round trip."""

    def __init__(self, client: Redis, maxlen: int, explain_max: int,
                 metrics: ServiceMetrics | None = None, stream: str = ALERTS_STREAM,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.maxlen = maxlen
        self.explain_max = explain_max
        self.metrics = metrics
        self.stream = stream
        self.sleep = sleep
        self.failing = False  # the last write failed after its retries

    def emit(self, detector: Detector, version: str, records: list[Any],
             results: list[dict[str, Any]], delivery: str | None = None,
             explanations: Mapping[int, Any] | None = None) -> int:
        """Write the events of one scored batch; the number written (0 on failure)."""
        try:
            events = build_events(detector, version, records, results, self.explain_max,
                                  delivery=delivery, explanations=explanations)
            if not events:
                return 0
            fields: list[dict[Any, Any]] = [{EVENT_FIELD: _dump(event)} for event in events]
            # an outage costs one batch the retries: until a write succeeds, try once
            for delay in (*(() if self.failing else RETRY_DELAYS_S), None):
                try:
                    self._write(fields)
                    break
                except RedisAuthenticationError:
                    raise
                except (RedisConnectionError, RedisTimeoutError):
                    if delay is None:
                        raise
                    self.sleep(delay)
            self.failing = False
        except Exception as exc:  # scoring goes on: the result still carries is_anomaly
            self.failing = True
            log.error("could not write alert events (%s): %s", type(exc).__name__, exc)
            if self.metrics is not None:
                self.metrics.alert_write_failures.inc()
            return 0
        if self.metrics is not None:
            self.metrics.alert_events.inc(len(events))
        return len(events)

    def _write(self, fields: list[dict[Any, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry in fields:
            pipe.xadd(self.stream, entry, maxlen=self.maxlen, approximate=True)
        pipe.execute()
