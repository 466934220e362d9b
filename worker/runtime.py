"""What a worker process holds: the serving model (hot-reloaded, ``model_holder.py``), dead
letters, metrics.

``BatchScorer.score_batch`` is the body of the ``nearwatch.score_batch`` task. It is a pure
function of (records, model) apart from side effects that are safe to repeat when a batch is
redelivered: metrics (counted per delivery), dead letters (deduplicated per record), alert
events (the same ``event_id``) and the reference buffer with its drift counts (written once
per delivery).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from nearwatch.detector import Detector  # loaded with any detector module

from .model_holder import ModelHolder
from .names import DEADLETTER_MAXLEN, DEADLETTER_STREAM
from .records import (
    answer_id,
    dump_result,
    prepare_lines,
    prepare_objects,
    truncate,
)
from .refusals import read_labels, read_refusals, record_excerpt, record_label
from .settings import RecordLimits

if TYPE_CHECKING:
    from redis import Redis

    from .alerts import RedisAlertWriter
    from .metrics import ServiceMetrics
    from .reference_buffer import BufferWriter

log = logging.getLogger("nearwatch.worker")
_DEDUP_TTL_S = 7 * 24 * 3600
N_NEIGHBOURS = 3
# Dedup key and XADD in one atomic script: a redelivered batch does not dead-letter twice.
_DEADLETTER_SCRIPT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
             'id', ARGV[3], 'error', ARGV[4], 'reason', ARGV[5], 'model_version', ARGV[6],
             'record', ARGV[7])
  return 1
end
return 0
"""


class DeadLetters(Protocol):
    def write(self, record: Any, result: dict[str, Any], reason: str, model_version: str,
              delivery: str = "") -> bool: ...


class RedisDeadLetters:
    """Dead letters in the Redis stream ``nearwatch:deadletter``: one entry per bad record
    and delivery (``delivery``: the batch's delivery and the record's place in it), so a
    redelivered batch is not written twice while a bad record sent again is."""

    def __init__(self, client: Redis, stream: str = DEADLETTER_STREAM) -> None:
        self._stream = stream
        self._script = client.register_script(_DEADLETTER_SCRIPT)

    def write(self, record: Any, result: dict[str, Any], reason: str, model_version: str,
              delivery: str = "") -> bool:
        record_json = record_excerpt(record)
        digest = hashlib.sha1(
            f"{delivery}\0{record_json}\0{result['error']}".encode()).hexdigest()
        written = self._script(
            keys=[f"{self._stream}:seen:{digest}", self._stream],
            args=[_DEDUP_TTL_S, DEADLETTER_MAXLEN, json.dumps(result.get("id")),
                  result["error"], reason, model_version, record_json],
        )
        return bool(written)


class LoggedDeadLetters:
    """No Redis (the embedded demo): log each bad record and keep the last ones in memory."""

    def __init__(self, keep: int = 1000) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=keep)

    def write(self, record: Any, result: dict[str, Any], reason: str, model_version: str,
              delivery: str = "") -> bool:
        log.warning("dead letter (%s): %s", reason, result["error"])
        self.entries.append({"id": result.get("id"), "error": result["error"], "reason": reason})
        return True


class BatchScorer:
    """Scores a batch; every record is answered, a bad record never fails its batch."""

    def __init__(self, holder: ModelHolder, dead_letters: DeadLetters,
                 metrics: ServiceMetrics | None = None,
                 alerts: RedisAlertWriter | None = None,
                 limits: RecordLimits | None = None,
                 buffer: BufferWriter | None = None) -> None:
        self.holder = holder
        self.limits = limits or RecordLimits()
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.alerts = alerts  # flagged records -> nearwatch:alerts (worker/alerts.py)
        self.buffer = buffer  # scored records -> the reference buffer (reference_buffer.py)

    def score_batch(self, records: list[Any], delivery: str | None = None,
                    producer_refused: Any = None) -> list[dict[str, Any]]:
        """Records (parsed JSON) → one result dict per record, same order. ``delivery``
        names this delivery of the batch (``worker.tasks.delivery_key``): a redelivery with
        the same name writes no second alert event or dead letter."""
        label: Callable[[int], str] = "record {} of the batch".format
        id_field = getattr(self.holder.current()[1], "id_field", "id")
        refused = prepare_objects(records, id_field, self.limits, label)
        return self._score(records, self._with_producer(records, refused, producer_refused),
                           label, delivery)

    def score_json(self, lines: list[Any], first_position: int | None = None,
                   delivery: str | None = None, producer_refused: Any = None,
                   labels: Any = None) -> list[str]:
        """JSON texts → one JSON result text per record, same order: the text path of
        `nearwatch stream` and `nearwatch ingest`: records are parsed here,
        in the pool, and results are serialised here, so the producer does neither.
        ``first_position``: 1-based input position of ``lines[0]``; records without an id
        then get ``"#<position>"`` and errors name the position.
        """
        names = read_labels(labels, len(lines))  # ingest's: its stream entries

        def label(i: int) -> str:
            return record_label(i, first_position, names)

        id_field = getattr(self.holder.current()[1], "id_field", "id")
        records, refused = prepare_lines(lines, first_position, id_field, self.limits, label)
        return [dump_result(r) for r in self._score(
            records, self._with_producer(records, refused, producer_refused), label, delivery)]

    def _with_producer(self, records: list[Any], refused: Mapping[int, tuple[Any, ...]],
                       producer_refused: Any) -> dict[int, tuple[Any, ...]]:
        """With the producer's refusals of its stand-ins, whose excerpts take the records'
        places (for the dead letters). Values: (reason, error[, record id])."""
        merged: dict[int, tuple[Any, ...]] = dict(refused)
        producer = read_refusals(producer_refused, records, self.limits.max_error_chars)
        for i, (reason, error, excerpt, record_id) in producer.items():
            merged[i], records[i] = (reason, error, record_id), excerpt
        return merged

    def score_matrix(self, payload: Any, delivery: str | None = None) -> dict[str, Any]:
        """A numeric batch (``worker/matrix.py``) → its answer object (columns)."""
        from .matrix_scorer import score_matrix_payload

        return score_matrix_payload(self, payload, delivery)

    def _score(self, records: list[Any], refused: Mapping[int, tuple[Any, ...]],
               label: Callable[[int], str], delivery: str | None = None
               ) -> list[dict[str, Any]]:
        started = time.perf_counter()
        delivery = uuid.uuid4().hex if delivery is None else delivery
        version, detector = self.holder.current()
        results: list[dict[str, Any]] = [{} for _ in records]
        reasons: dict[int, str] = {}
        explanations: dict[int, Any] = {}  # flagged records' fields, from the scoring search
        objects = []
        for i, record in enumerate(records):
            if i in refused:
                reasons[i], error, *known = refused[i]
                results[i] = {"id": known[0] if known else answer_id(record, detector.id_field),
                              "error": error}
            elif not isinstance(record, dict):
                results[i] = {"id": None, "error": f"{label(i)}: not a JSON object "
                              f"(got {type(record).__name__})"}
                reasons[i] = "not_an_object"
            else:
                objects.append(i)
        # the encoder counts the fields it ignores (per process; a stand-in may have none)
        encoder = getattr(detector, "feature_encoder_", None)
        unknown_before = getattr(encoder, "unknown_fields_seen_", 0)
        missing_before = dict(getattr(encoder, "missing_fields_seen_", {}))
        unseen_before = dict(getattr(encoder, "unseen_categories_seen_", {}))
        scored = self._score_objects(detector, [records[i] for i in objects])
        for i, result in zip(objects, scored, strict=True):
            if "error" in result and result["id"] is None:  # named by its batch position
                result["error"] = f"{label(i)}: {result['error']}"
            results[i] = result
        for i, result in enumerate(results):
            if "error" in result:
                reason = result.pop("reason", None) or reasons.get(i, "invalid_field")
                reasons[i] = reason
                if len(result["error"]) > self.limits.max_error_chars:
                    result["error"] = truncate(result["error"], self.limits.max_error_chars)
                self._dead_letter(records[i], result, reason, version, f"{delivery}#{i}")
            else:
                result["model_version"] = version
                if "fields" in result:  # for the alert event only, not the answer
                    explanations[i] = result.pop("fields")
        if self.alerts is not None:  # one pipelined write per batch; never raises
            self.alerts.emit(detector, version, records, results, delivery, explanations)
        if self.buffer is not None:  # one round trip per batch; never raises
            self.buffer.write(detector, version, records, results, delivery=delivery)
        if self.metrics is not None:
            self.metrics.batch_scored(
                results, list(reasons.values()), time.perf_counter() - started,
                getattr(encoder, "unknown_fields_seen_", 0) - unknown_before,
                added(missing_before, getattr(encoder, "missing_fields_seen_", {})),
                added(unseen_before, getattr(encoder, "unseen_categories_seen_", {})))
        return results

    def _score_objects(self, detector: Detector, records: list[dict[str, Any]],
                       explain: int | None = None) -> list[dict[str, Any]]:
        """Results of ``records``; the first ``explain`` flagged ones (default: the alert
        writer's ``explain_max``) carry their fields, from the scoring search."""
        if explain is None:
            explain = 0 if self.alerts is None else self.alerts.explain_max
        try:
            scored = detector.score_records(records, N_NEIGHBOURS, explain=explain)
            return [_public(r) for r in scored]
        except Exception:
            if len(records) <= 1:
                if not records:
                    return []
                log.exception("scoring failed for record id %r", records[0].get("id"))
                return [{"id": records[0].get("id"), "reason": "scoring_failed",
                         "error": "internal error while scoring this record (see worker log)"}]
        # Isolate the record that breaks the batch: halve until it is found (the second half
        # explains only what the first left of the allowance).
        middle = len(records) // 2
        first = self._score_objects(detector, records[:middle], explain)
        flagged = sum(1 for result in first if result.get("is_anomaly") is True)
        return first + self._score_objects(detector, records[middle:],
                                           max(0, explain - flagged))

    def _dead_letter(self, record: Any, result: dict[str, Any], reason: str, version: str,
                     delivery: str) -> None:
        try:
            if self.dead_letters.write(record, result, reason, version, delivery) \
                    and self.metrics:
                self.metrics.dead_letters.inc()
        except Exception:  # the answer still carries the error; never fail the batch
            log.exception("could not write dead letter for record id %r", result.get("id"))


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """The task's result format: no index relative to the scored objects (the record's id,
    or its caller's label of the batch position, names it)."""
    index = result.pop("index", None)
    if "error" in result:
        result.pop("field", None)
        prefix = f"record {index}"
        if result["error"].startswith(prefix + " ") or result["error"].startswith(prefix + ":"):
            result["error"] = result["error"][len(prefix):].lstrip(" :")
    return result


def added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per field, what ``after`` (a running count) added to ``before``."""
    return {field: count - before.get(field, 0) for field, count in after.items()
            if count != before.get(field, 0)}
