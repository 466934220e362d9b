"""What a worker process holds: the serving model (hot-reloaded), dead letters, metrics.

``BatchScorer.score_batch`` is the body of the ``nearwatch.score_batch`` task. It is a pure
function of (records, model) apart from two side effects, both safe to repeat when a batch
is redelivered: metrics (counted per delivery) and dead letters (deduplicated per record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

from detector.errors import BundleError
from detector.registry import ModelRegistry

log = logging.getLogger("nearwatch.worker")

DEADLETTER_STREAM = "nearwatch:deadletter"
DEADLETTER_MAXLEN = 100_000
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
    def write(self, record: Any, result: dict[str, Any], reason: str, model_version: str
              ) -> bool: ...


class RedisDeadLetters:
    """Dead letters in the Redis stream ``nearwatch:deadletter`` (one entry per bad record)."""

    def __init__(self, client: Any, stream: str = DEADLETTER_STREAM) -> None:
        self._client = client
        self._stream = stream
        self._script = client.register_script(_DEADLETTER_SCRIPT)

    def write(self, record: Any, result: dict[str, Any], reason: str, model_version: str
              ) -> bool:
        record_json = json.dumps(record, default=str)[:65_536]
        digest = hashlib.sha1(f"{record_json}\0{result['error']}".encode()).hexdigest()
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

    def write(self, record: Any, result: dict[str, Any], reason: str, model_version: str
              ) -> bool:
        log.warning("dead letter (%s): %s", reason, result["error"])
        self.entries.append({"id": result.get("id"), "error": result["error"], "reason": reason})
        return True


class ModelHolder:
    """The serving model; follows the registry's ``CURRENT`` pointer.

    The pointer is read at most once per ``check_interval`` seconds, from the scoring path
    (so an idle worker does no work). A new version is loaded *before* it replaces the old
    one: a batch in flight keeps the model it started with, and a bundle that fails
    verification is refused (logged, counted) while the old model keeps serving.
    """

    def __init__(self, registry: ModelRegistry, check_interval: float,
                 metrics: Any = None) -> None:
        self.registry = registry
        self.check_interval = check_interval
        self.metrics = metrics
        self.version: str | None = None
        self.detector: Any = None
        self._refused: str | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def load_initial(self) -> None:
        version, detector = self.registry.load_current()
        self._install(version, detector)

    def current(self) -> tuple[str, Any]:
        now = time.monotonic()
        if self.detector is None or now - self._checked_at >= self.check_interval:
            with self._lock:
                self._checked_at = now
                self._follow_pointer()
        if self.detector is None:
            raise BundleError(f"no model could be loaded from {self.registry.root}")
        return self.version or "", self.detector

    def _follow_pointer(self) -> None:
        try:
            wanted = self.registry.current_version()
        except BundleError as exc:
            log.error("model registry pointer unreadable, keeping %s: %s", self.version, exc)
            return
        if wanted is None or wanted == self.version or wanted == self._refused:
            return
        try:
            detector = self.registry.load(wanted)
        except (BundleError, OSError, ValueError) as exc:
            self._refused = wanted
            log.error("refusing model %s, keeping %s: %s", wanted, self.version, exc)
            if self.metrics is not None:
                self.metrics.model_reloads.labels("refused").inc()
            return
        self._install(wanted, detector)

    def _install(self, version: str, detector: Any) -> None:
        previous = self.version
        self.version, self.detector = version, detector
        self._refused = None
        log.info("serving model %s (was %s)", version, previous)
        if self.metrics is not None:
            self.metrics.model_loaded(version, detector)


class BatchScorer:
    """Scores a batch; every record is answered, a bad record never fails its batch."""

    def __init__(self, holder: ModelHolder, dead_letters: DeadLetters,
                 metrics: Any = None) -> None:
        self.holder = holder
        self.dead_letters = dead_letters
        self.metrics = metrics

    def score_batch(self, records: list[Any]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        version, detector = self.holder.current()
        results: list[dict[str, Any]] = [{} for _ in records]
        reasons: list[str] = []
        objects = [i for i, record in enumerate(records) if isinstance(record, dict)]
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                results[i] = {"id": None, "error": f"record {i} of the batch is not a JSON "
                              f"object (got {type(record).__name__})"}
        scored = self._score_objects(detector, [records[i] for i in objects])
        for i, result in zip(objects, scored, strict=True):
            results[i] = result
        for i, result in enumerate(results):
            if "error" in result:
                reason = result.pop("reason", None) or (
                    "not_an_object" if not isinstance(records[i], dict) else "invalid_field")
                reasons.append(reason)
                self._dead_letter(records[i], result, reason, version)
            else:
                result["model_version"] = version
        if self.metrics is not None:
            self.metrics.batch_scored(results, reasons, time.perf_counter() - started)
        return results

    def _score_objects(self, detector: Any, records: list[dict[str, Any]]
                       ) -> list[dict[str, Any]]:
        try:
            return [_public(r) for r in detector.score_records(records, N_NEIGHBOURS)]
        except Exception:
            if len(records) <= 1:
                if not records:
                    return []
                log.exception("scoring failed for record id %r", records[0].get("id"))
                return [{"id": records[0].get("id"), "reason": "scoring_failed",
                         "error": "internal error while scoring this record (see worker log)"}]
        # Isolate the record that breaks the batch: halve until it is found.
        middle = len(records) // 2
        return (self._score_objects(detector, records[:middle])
                + self._score_objects(detector, records[middle:]))

    def _dead_letter(self, record: Any, result: dict[str, Any], reason: str, version: str
                     ) -> None:
        try:
            if self.dead_letters.write(record, result, reason, version) and self.metrics:
                self.metrics.dead_letters.inc()
        except Exception:  # the answer still carries the error; never fail the batch
            log.exception("could not write dead letter for record id %r", result.get("id"))


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """The task's result format: no batch-relative index (the record's id names it)."""
    index = result.pop("index", None)
    if "error" in result:
        result.pop("field", None)
        prefix = f"record {index} "
        if result.get("id") is not None and result["error"].startswith(prefix):
            result["error"] = result["error"][len(prefix):]
    return result
