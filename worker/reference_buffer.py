"""The reference buffer, write side: every worker adds its scored records to Redis, per batch.

Retraining (``scheduler/buffer.py`` reads it) needs a recent, bounded and unbiased sample of
the traffic. ``BufferWriter.write`` runs right after the alert writer in
``BatchScorer._score`` and, like it, costs one round trip per batch and never raises: a
failure is logged and counted (``metrics.buffer_write_failures`` when the metrics have it)
and scoring goes on.

Layout (``schema`` is ``record_schema(detector)``: the fields the model reads and their kinds;
records of another schema cannot train this model; ``b = floor(now / settings.bucket_s)``;
``{prefix}:current-schema`` names the schema written last, for the metrics):

- ``{prefix}:{schema}:{b}``: a list of entries, each the JSON text
  ``{"t": unix time, "p": p_value, "id": id, "v": model version, "r": record}``;
- ``{prefix}:{schema}:{b}:meta``: a hash, ``seen`` (records offered to the bucket) and
  ``bytes`` (the list's total entry size).

Each bucket is a reservoir (Algorithm R) of ``ceil(capacity / buckets)`` entries and
``max_bytes / buckets`` bytes, so the buffer is bounded in records and in bytes, and the
buckets together span the window instead of holding only its last minutes. Both keys expire
``window_s + bucket_s`` after their last write. Every record answered without error with a
finite p-value is offered, flagged ones included: the reader decides by p-value. A record whose
JSON exceeds ``max_record_bytes`` counts as offered but is never kept (rare by design: a slight
bias towards records already kept, in exchange for not serialising records the reservoir
rejects).

The same script counts, for the drift monitor, the records scored and flagged per model
version (``{drift_prefix}:counts:{version}``: ``scored``, ``flagged``, ``bound`` =
``fpr_bound_``) when the model has an FPR bound; the monitor reads and deletes the hash.

A batch is written once per ``delivery`` (``worker.tasks.delivery_key``: the same for a broker
redelivery and for a producer's resubmission): the script first sets
``{prefix}:delivery:{digest}`` (``SET NX``, expiring after ``delivery_ttl_s``), and a batch
whose marker is already there adds nothing to the reservoir or the drift counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .settings_sections import BufferSettings

if TYPE_CHECKING:
    from nearwatch.detector import Detector
    from redis import Redis

log = logging.getLogger("nearwatch.buffer")

BUFFER_PREFIX = "nearwatch:buffer"
DRIFT_PREFIX = "nearwatch:drift"
CURRENT_SCHEMA = "current-schema"  # {prefix}:current-schema: the last written record schema
# How long a batch's delivery marker is kept: redeliveries come within the broker's visibility
# timeout, resubmissions within the producer's attempts (the pool passes both, doubled).
DELIVERY_TTL_S = 3600.0

# KEYS: list, meta hash, drift hash, current-schema key, delivery marker. ARGV: cap, byte
# budget, ttl, skipped (echoed back), drift on (1/0), scored, flagged, bound, record schema,
# records offered, the marker's ttl (0: no marker), then (u, position in the batch, entry)
# triples, u uniform in [0, 1). A batch whose marker is already set was written by an earlier
# delivery: nothing is counted twice (seen = -1 says so).
_WRITE_SCRIPT = """
local cap, budget, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[11] ~= '0' and not redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[11]) then
  return {0, tonumber(ARGV[4]), -1}
end
redis.call('SET', KEYS[4], ARGV[9])
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[3], 'scored', ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'flagged', ARGV[7])
  redis.call('HSET', KEYS[3], 'bound', ARGV[8])
end
local meta = redis.call('HMGET', KEYS[2], 'seen', 'bytes')
local base, bytes = tonumber(meta[1]) or 0, tonumber(meta[2]) or 0
local len = redis.call('LLEN', KEYS[1])
local kept = 0
for i = 12, #ARGV, 3 do
  local entry = ARGV[i + 2]
  local size = string.len(entry)
  if len < cap and bytes + size <= budget then
    redis.call('RPUSH', KEYS[1], entry)
    len, bytes, kept = len + 1, bytes + size, kept + 1
  else
    local j = math.floor(tonumber(ARGV[i]) * (base + tonumber(ARGV[i + 1])))
    if j < len then
      local after = bytes - string.len(redis.call('LINDEX', KEYS[1], j)) + size
      if after <= budget then
        redis.call('LSET', KEYS[1], j, entry)
        bytes, kept = after, kept + 1
      end
    end
  end
end
local seen = base + tonumber(ARGV[10])
redis.call('HSET', KEYS[2], 'seen', seen, 'bytes', bytes)
if len > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('EXPIRE', KEYS[2], ttl)
return {kept, tonumber(ARGV[4]), seen}
"""


def record_schema(detector: Detector) -> str:
    """The buffer's key: the record fields the model reads and their kinds.

    Not ``schema_version_``, which also hashes fitted scalings and vocabularies and so changes
    at every retraining: the buffer must outlive a promotion, and records with the same
    fields can train the next model whatever their values.
    """
    fields = [[spec["name"], spec["kind"]] for spec in detector.feature_encoder_.fields_]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def dump_json(value: Any) -> bytes:
    """Compact JSON of ``value`` (orjson; ``json`` with ``default=str`` for >64-bit ints)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, default=str, separators=(",", ":")).encode()


def bucket_of(now: float, settings: BufferSettings) -> int:
    """The bucket number of time ``now``.

    >>> bucket_of(7_300.0, BufferSettings(window_s=86_400.0, buckets=24))
    2
    """
    return math.floor(now / settings.bucket_s)


def bucket_key(prefix: str, schema_version: str, bucket: int) -> str:
    """The list of one bucket (its ``seen``/``bytes`` hash is this plus ``:meta``).

    >>> bucket_key("nearwatch:buffer", "3fc0", 19)
    'nearwatch:buffer:3fc0:19'
    """
    return f"{prefix}:{schema_version}:{bucket}"


def bucket_capacity(settings: BufferSettings) -> tuple[int, int]:
    """(records, bytes) one bucket may hold: the window's bounds split over its buckets.

    >>> bucket_capacity(BufferSettings(capacity=100, max_bytes=1_000, buckets=3))
    (34, 333)
    """
    return math.ceil(settings.capacity / settings.buckets), settings.max_bytes // settings.buckets


def _offered_rows(results: list[dict[str, Any]]) -> list[int]:
    """Positions of the results answered without error with a finite p-value (a float
    whose difference with itself is 0, or an int; a bool is neither).

    >>> import numpy as np
    >>> _offered_rows([{"p_value": 0.5}, {"p_value": float("nan")}, {"p_value": True},
    ...                {"p_value": 1}, {"error": "x", "p_value": 0.5}, {},
    ...                {"p_value": np.float64(0.2)}])
    [0, 3, 6]
    """
    return [i for i, result in enumerate(results) if "error" not in result and (
        (isinstance(p := result.get("p_value"), float) and p - p == 0.0)
        or (isinstance(p, int) and not isinstance(p, bool)))]


class BufferWriter:
    """Adds a scored batch to the reference buffer in one EVALSHA; never raises."""

    def __init__(self, client: Redis, settings: BufferSettings, metrics: Any | None = None,
                 prefix: str = BUFFER_PREFIX, drift_prefix: str = DRIFT_PREFIX,
                 rng: random.Random | None = None,
                 delivery_ttl_s: float = DELIVERY_TTL_S) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.prefix = prefix
        self.drift_prefix = drift_prefix
        self.rng = rng or random.Random()  # the reservoir's draws (seeded in tests)
        self.cap, self.budget = bucket_capacity(settings)
        self.ttl = math.ceil(settings.window_s + settings.bucket_s)
        self.delivery_ttl = max(1, math.ceil(delivery_ttl_s))
        self._script = client.register_script(_WRITE_SCRIPT)
        self._seen: dict[str, int] = {}  # bucket key -> its count as last read
        self._schema: tuple[Any, str] | None = None  # (detector, its record schema)

    def write(self, detector: Detector, version: str, records: list[Any],
              results: list[dict[str, Any]], now: float | None = None,
              delivery: str | None = None) -> int:
        """Offer the batch's records to the buffer (records[i] is the record of results[i]);
        the number offered, 0 on failure, for an empty batch or for a ``delivery`` already
        written (None: the batch is not deduplicated)."""
        if not results:
            return 0
        try:
            stamp = time.time() if now is None else now
            if self._schema is None or self._schema[0] is not detector:
                self._schema = (detector, record_schema(detector))  # once per served model
            schema = self._schema[1]
            key = bucket_key(self.prefix, schema, bucket_of(stamp, self.settings))
            args, offered, skipped = self._entries(key, version, records, results, stamp)
            bound = detector.fpr_bound_
            if not offered and bound is None:
                return 0
            scored = sum(1 for r in results if "error" not in r)
            flagged = sum(1 for r in results if r.get("is_anomaly") is True)
            head = [self.cap, self.budget, self.ttl, skipped, 0 if bound is None else 1,
                    scored, flagged, repr(float(bound)) if bound is not None else "", schema,
                    offered, 0 if delivery is None else self.delivery_ttl]
            marker = f"{self.prefix}:delivery:" + hashlib.sha1(
                (delivery or "").encode()).hexdigest()[:24]
            _, _, seen = self._script(
                keys=[key, f"{key}:meta", f"{self.drift_prefix}:counts:{version}",
                      f"{self.prefix}:{CURRENT_SCHEMA}", marker], args=head + args)
            if int(seen) < 0:  # an earlier delivery of this batch was written
                return 0
            self._seen = {key: int(seen)}  # only the current bucket's count is needed
        except Exception as exc:  # scoring goes on: the buffer only feeds retraining
            log.error("could not write the reference buffer (%s): %s", type(exc).__name__, exc)
            counter = getattr(self.metrics, "buffer_write_failures", None)
            if counter is not None:
                counter.inc()
            return 0
        return offered

    def _entries(self, key: str, version: str, records: list[Any],
                 results: list[dict[str, Any]], stamp: float) -> tuple[list[Any], int, int]:
        """Script arguments (u, position, entry) for the records that may enter; the number
        offered; how many were too large.

        Algorithm R keeps the n-th record offered to a full bucket only if floor(u * n) falls
        in it. ``_seen`` is this process's last reading of the bucket's count, never above
        the true count (other workers only add to it), so a record rejected at that count is
        rejected at the true one too: it is not serialised nor sent. In a full bucket that is
        nearly every record, so the steady-state cost is the counters, not the records.
        """
        args: list[Any] = []
        skipped = 0
        limit = self.settings.max_record_bytes
        base = self._seen.get(key, 0)
        draw = self.rng.random
        rows = _offered_rows(results)
        # the n-th record offered to the bucket enters while it fills, then if floor(u * n)
        # falls in it: decided for the whole batch at once, so a full bucket costs a draw
        # per record and no Python loop
        draws = np.array([draw() for _ in rows])
        counts = base + np.arange(1, len(rows) + 1)
        entering = np.flatnonzero((counts <= self.cap) | (np.floor(draws * counts) < self.cap))
        # records[i] is read only for a record that enters (a numeric batch builds it then)
        for position in entering.tolist():
            i = rows[position]
            body = dump_json(records[i])
            if len(body) > limit:
                skipped += 1
                continue
            result = results[i]
            head = dump_json({"t": stamp, "p": result["p_value"], "id": result.get("id"),
                              "v": version})
            args.extend((float(draws[position]), position + 1,
                         head[:-1] + b',"r":' + body + b"}"))
        offered = len(rows)
        return args, offered, skipped
