"""Language-agnostic input: the Redis stream ``nearwatch:records`` → scores → ``nearwatch:scores``.

Producers in any language ``XADD nearwatch:records * record '<JSON object>'``. ``nearwatch
ingest`` reads the stream as a member of the consumer group ``nearwatch``, has each batch
scored by the workers (``ScoringClient``), and then, in one atomic Lua script per batch, for
every entry: ``XACK`` it and, only if that acknowledgement was new, ``XADD`` its result to
``nearwatch:scores`` (fields ``entry``: the source entry id, ``result``: the JSON result).
So a result is written exactly once even when two consumers race for the same entry, and an
entry is never acknowledged without its result.

A consumer that dies leaves its entries pending; any live consumer takes them over with
``XAUTOCLAIM`` once they have been idle for ``claim_idle_ms``. Nothing is lost or left pending.

An entry that cannot be a record (not UTF-8, beyond the size limit, no ``record`` field) is
answered with an error and acknowledged like any other, and its dead letter (reason
``invalid_json``, ``too_large`` or ``no_record``, the entry id, the first 1 KiB of the entry)
is written by the same script, exactly once, whether or not a worker is up. Records sent to
the workers are named by their stream entry in errors and dead letters (``labels``). Redis
outages are retried with backoff for ``outage_deadline`` seconds (``BrokerUnavailable``
after that: the command exits 1 and the entries it had not answered stay pending for the next
consumer).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .client import Unanswered
from .flow import Outage, group_lost
from .records import RecordRefused, check_text, decode_line, dump_result, truncate
from .refusals import excerpt
from .settings import IngestOptions, RecordLimits

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["IngestOptions", "IngestStats", "StreamIngest"]

log = logging.getLogger("nearwatch.ingest")

RECORD_FIELD = "record"
NO_RECORD = "no_record"  # the dead-letter reason of an entry without a record field

# ARGV: group, scores maxlen, deadletter maxlen, then per entry: id, result JSON, and for a
# bad entry its dead letter's reason, error and excerpt ('' reason: none)
_WRITE_AND_ACK = """
local written = 0
for i = 4, #ARGV, 5 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'entry', ARGV[i],
               'result', ARGV[i + 1])
    if ARGV[i + 2] ~= '' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'entry', ARGV[i], 'id', 'null',
                 'error', ARGV[i + 3], 'reason', ARGV[i + 2], 'record', ARGV[i + 4])
    end
    written = written + 1
  end
end
return written
"""

# ScoringClient.score_json_batches: (JSON texts or refusals, record labels) batches → results
BatchScorer = Callable[[Iterable[tuple[list[Any], list[str]]]], Iterator[list[str]]]


@dataclass
class IngestStats:
    entries: int = 0
    written: int = 0
    claimed: int = 0
    errors: int = 0
    unanswered: int = 0  # left pending for a retry


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    record: str  # the record's JSON text, parsed and scored by the workers
    problem: str = ""  # why the entry has no record ('' when it has one)
    reason: str = ""  # the dead letter's reason of such an entry
    excerpt: str = ""  # and the start of the entry (not the whole of a 100 MB value)

    @property
    def label(self) -> str:
        return f"stream entry {self.entry_id}"


class StreamIngest:
    def __init__(self, client: Redis, score_batches: BatchScorer,
                 options: IngestOptions | None = None) -> None:
        self.redis = client
        self.score_batches = score_batches
        self.options = options or IngestOptions()
        self.consumer = self.options.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = IngestStats()
        self.stop = threading.Event()
        self._write_and_ack = client.register_script(_WRITE_AND_ACK)
        self.outage = Outage(self.options.outage_deadline)
        self._claim_cursor = "0-0"
        self._last_claim = 0.0
        self._in_flight: set[str] = set()  # entries read and not yet written: never claimed

    def ensure_group(self) -> None:
        try:
            self.outage.call("creating the consumer group", lambda: self.redis.xgroup_create(
                self.options.records_stream, self.options.group, id="0", mkstream=True))
        except Exception as exc:  # BUSYGROUP: it exists already
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self) -> IngestStats:
        """Consume until ``stop`` is set (or until idle, with ``stop_when_idle``)."""
        self.ensure_group()
        in_flight: deque[list[_Entry]] = deque()

        def batches() -> Iterator[tuple[list[Any], list[str]]]:
            while not self.stop.is_set():
                outstanding = any(in_flight)  # entries read and not yet written
                # While answers are outstanding, block only briefly so they are written soon.
                entries = self._read(block_ms=10 if outstanding else self.options.block_ms)
                if not entries and self.options.stop_when_idle and not outstanding \
                        and self._nothing_left():
                    return
                # An empty batch hands control back to the loop below (nothing is sent).
                in_flight.append(entries)
                self._in_flight.update(e.entry_id for e in entries)
                # each record named by its entry: errors and dead letters can be joined to it
                sent = [e for e in entries if not e.problem]
                yield [e.record for e in sent], [e.label for e in sent]

        for results in self.score_batches(batches()):
            written = in_flight.popleft()
            self._write(written, results)
            self._in_flight.difference_update(e.entry_id for e in written)
        return self.stats

    # ------------------------------------------------------------------ reading
    def _read(self, block_ms: int) -> list[_Entry]:
        try:
            return self._read_entries(block_ms)
        except Exception as exc:
            if not group_lost(exc):
                raise
            log.warning("%s or its consumer group gone (%s): creating it again",
                        self.options.records_stream, exc)
            self.ensure_group()
            return []

    def _read_entries(self, block_ms: int) -> list[_Entry]:
        raw = self.outage.call("claiming entries", self._claim)
        if not raw:
            # RESP2 reply [[stream, entries]]; redis-py types it as the RESP2/RESP3 union.
            answer: Any = self.outage.call("reading entries", lambda: self.redis.xreadgroup(
                self.options.group, self.consumer, {self.options.records_stream: ">"},
                count=self.options.batch_size, block=block_ms))
            raw = answer[0][1] if answer else []
        # A claimed entry deleted from the stream meanwhile comes back as (id, None).
        entries = [_parse(entry_id, fields, self.options.limits) for entry_id, fields in raw
                   if fields is not None]
        self.stats.entries += len(entries)
        return entries

    def _claim(self) -> list[tuple[Any, Any]]:
        # Claim at most every claim_idle_ms / 2: an entry needs that long idle to qualify.
        now = time.monotonic()
        if now - self._last_claim < self.options.claim_idle_ms / 2000 and \
                self._claim_cursor == "0-0":
            return []
        self._last_claim = now
        cursor, claimed, *_ = self.redis.xautoclaim(
            self.options.records_stream, self.options.group, self.consumer,
            min_idle_time=self.options.claim_idle_ms, start_id=self._claim_cursor,
            count=self.options.batch_size)
        self._claim_cursor = _text(cursor)
        # Our own entries waiting for their answer (a batch a dead node held, resubmitted by
        # the client) are idle too: taking them again would score them twice.
        claimed = [(e, f) for e, f in claimed if _text(e) not in self._in_flight]
        if claimed:
            log.warning("claimed %d entries of a stalled consumer", len(claimed))
            self.stats.claimed += len(claimed)
        return claimed

    def _nothing_left(self) -> bool:
        try:
            return bool(self.outage.call("checking for pending entries", self._idle))
        except Exception as exc:  # the stream was deleted meanwhile: nothing is left
            if not group_lost(exc):
                raise
            return False

    def _idle(self) -> bool:
        summary = self.redis.xpending(self.options.records_stream, self.options.group)
        if summary["pending"]:
            return False
        groups = self.redis.xinfo_groups(self.options.records_stream)
        group = next(g for g in groups if _text(g["name"]) == self.options.group)
        lag = group.get("lag")
        return lag == 0 if lag is not None else _text(group["last-delivered-id"]) == \
            _text(self.redis.xinfo_stream(self.options.records_stream)["last-generated-id"])

    # ------------------------------------------------------------------ writing
    def _write(self, entries: list[_Entry], results: list[str]) -> None:
        if not entries:
            return
        answers = iter(results)
        args: list[Any] = [self.options.group, self.options.scores_maxlen,
                           self.options.deadletter_maxlen]
        for entry in entries:
            if entry.problem:
                error = f"{entry.label}: {entry.problem}"
                args += [entry.entry_id, dump_result({"id": None, "error": error}),
                         entry.reason, error, entry.excerpt]
                self.stats.errors += 1
                continue
            result = next(answers)
            if isinstance(result, Unanswered):
                # No worker answered: leave the entry pending; XAUTOCLAIM retries it.
                self.stats.unanswered += 1
                continue
            self.stats.errors += '"error":' in result  # only a key can match (see stream.py)
            args += [entry.entry_id, result, "", "", ""]
        keys = [self.options.records_stream, self.options.scores_stream,
                self.options.deadletter_stream]
        # Safe to repeat after a lost reply: an entry already acknowledged is not re-written.
        self.stats.written += int(self.outage.call(
            "writing results", lambda: self._write_and_ack(keys=keys, args=args)))


def _parse(entry_id: Any, fields: dict[Any, Any], limits: RecordLimits) -> _Entry:
    entry = _text(entry_id)
    raw = fields.get(RECORD_FIELD.encode(), fields.get(RECORD_FIELD))
    if raw is None:
        return _Entry(entry, "", f"no {RECORD_FIELD!r} field", NO_RECORD, excerpt(json.dumps(
            {excerpt(k, 200): excerpt(v, 200) for k, v in list(fields.items())[:20]})))
    try:
        check_text(raw, limits)  # before decoding: a 10 MB entry is not copied again
        record = decode_line(raw) if isinstance(raw, bytes) else str(raw)
    except RecordRefused as exc:
        return _Entry(entry, "", truncate(str(exc), limits.max_error_chars), exc.reason,
                      excerpt(raw))
    return _Entry(entry, record)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
