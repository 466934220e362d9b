"""`nearwatch alerts`: the stream ``nearwatch:alerts`` → de-duplicated notifications → sinks.

Consumer group ``nearwatch-alerts``, as ``nearwatch ingest`` does it (XREADGROUP, XAUTOCLAIM
of a dead consumer's entries). An entry is acknowledged only once the notification counting it
reached every sink or ``nearwatch:alerts:dead``: a consumer killed mid-window loses nothing. A
failing sink is owed the notification (``alert_redelivery.py``). De-duplication: the same
event twice (a redelivered scoring batch) by ``SET NX`` of its id, valued with the entry id
(the *same* entry claimed from a dead consumer is grouped normally); many events, one cause:
equal key (``AlertSettings.key`` fields + model version) within ``window_s`` make one
notification with a ``count``. A sink over its rate limit holds it in its digest
(``alert_digest.py``), sent as one notification as soon as the limit allows.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .alert_digest import TOP_EVENTS, Digest
from .alert_redelivery import OwedNotifications
from .alert_sinks import DeliveryError, RateLimiter, Sink, iso_time
from .alert_state import AlertStats, Group, SinkState
from .alerts import ALERTS_DEAD_STREAM, ALERTS_GROUP, ALERTS_STREAM, event_from_fields
from .backlog import BacklogGauges, as_text, group_lag
from .flow import Outage, group_lost
from .settings import AlertSettings

if TYPE_CHECKING:
    from redis import Redis

    from .alert_metrics import AlertMetrics

log = logging.getLogger("nearwatch.alerts")
SEEN_TTL_S = 24 * 3600


def default_claim_idle_ms(window_s: float) -> int:
    """Our own entries stay pending for a whole window: claim only well after that."""
    return int(max(60_000, 2 * window_s * 1000 + 30_000))


class AlertConsumer:
    def __init__(self, client: Redis, sinks: list[Sink], settings: AlertSettings,
                 consumer: str = "", claim_idle_ms: int | None = None, block_ms: int = 500,
                 batch_size: int = 200, metrics: AlertMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 outage_deadline: float = 120.0) -> None:
        self.redis = client
        self.outage = Outage(outage_deadline)
        self.settings = settings
        self.sinks = [SinkState(s, RateLimiter(
            settings.rate_limit if getattr(s, "rate_limited", True) else 0, clock)) for s in sinks]
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms or default_claim_idle_ms(settings.window_s)
        self.block_ms, self.batch_size = block_ms, batch_size
        self.metrics, self.clock = metrics, clock
        self.stats = AlertStats()
        self.stop = threading.Event()
        self.groups: dict[tuple[Any, ...], Group] = {}
        self._held: set[str] = set()  # entry ids in open groups and owed notifications
        self.owed = OwedNotifications(settings.redeliver_s)
        self._claim_cursor = "0-0"
        self._last_claim = float("-inf")
        self.backlog = BacklogGauges(client, metrics, clock)

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(ALERTS_STREAM, ALERTS_GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists already
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop_when_idle: bool = False) -> AlertStats:
        """Consume until ``stop`` is set (or, with ``stop_when_idle``, nothing is left);
        groups still open then are delivered before returning.

        Redis unreachable: retried with backoff for ``outage_deadline`` s, then
        ``BrokerUnavailable``. The stream or group deleted (or Redis restarted empty): the
        group is created again. Unacknowledged events stay pending either way, so nothing
        is lost (a notification may be sent twice)."""
        self.outage.call("creating the consumer group", self.ensure_group)
        while not self.stop.is_set():
            if self.outage.call("consuming alert events", lambda: self._step(stop_when_idle)):
                break
        self.outage.call("delivering the open groups", lambda: self.flush(everything=True))
        return self.stats

    def _step(self, stop_when_idle: bool) -> bool:
        """One read-fold-flush round; True when idle and asked to stop then."""
        try:
            raw = self._read()
            self.fold(raw)
            self.flush()
            self.backlog.observe()
            return (stop_when_idle and not raw and not self.owed and not self._pending()
                    and not any(state.digest for state in self.sinks))
        except Exception as exc:
            if not group_lost(exc):
                raise
            log.warning("alert stream or consumer group gone (%s): creating it again", exc)
            self.ensure_group()
            return False

    # ------------------------------------------------------------------ reading
    def _read(self) -> list[tuple[Any, Any]]:
        raw = self._claim()
        if raw:
            return raw
        due = [g.opened + self.settings.window_s - self.clock() for g in self.groups.values()]
        due += [item.due - self.clock() for item in self.owed.items]
        block = int(max(1.0, min([self.block_ms / 1000, *due]) * 1000))
        answer: Any = self.redis.xreadgroup(ALERTS_GROUP, self.consumer, {ALERTS_STREAM: ">"},
                                            count=self.batch_size, block=block)
        return list(answer[0][1]) if answer else []

    def _claim(self) -> list[tuple[Any, Any]]:
        now = self.clock()
        if now - self._last_claim < self.claim_idle_ms / 2000 and self._claim_cursor == "0-0":
            return []
        self._last_claim = now
        cursor, claimed, *_ = self.redis.xautoclaim(
            ALERTS_STREAM, ALERTS_GROUP, self.consumer, min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor, count=self.batch_size)
        self._claim_cursor = as_text(cursor)
        fresh = [(e, f) for e, f in claimed if f is not None and as_text(e) not in self._held]
        if fresh:
            log.warning("claimed %d alert events of a stalled consumer", len(fresh))
            self.stats.claimed += len(fresh)
        return fresh

    def _pending(self) -> bool:
        """Anything in Redis that is neither read nor held in our open groups?"""
        summary = self.redis.xpending(ALERTS_STREAM, ALERTS_GROUP)
        return int(summary["pending"]) > len(self._held) or group_lag(
            self.redis, ALERTS_STREAM, ALERTS_GROUP) > 0

    # ------------------------------------------------------------------ grouping
    def fold(self, raw: list[tuple[Any, Any]]) -> None:
        """Add entries to their groups; duplicates and unreadable entries are acknowledged."""
        parsed: list[tuple[str, dict[str, Any]]] = []
        done: list[str] = []
        for entry_id, fields in raw:
            entry = as_text(entry_id)
            try:
                parsed.append((entry, event_from_fields(fields)))
            except ValueError as exc:
                log.error("alert entry %s is unreadable, acknowledged: %s", entry, exc)
                done.append(entry)
                self._count("invalid")
        pipe = self.redis.pipeline(transaction=False)
        for entry, event in parsed:
            key = f"{ALERTS_STREAM}:seen:{event['event_id']}"
            pipe.set(key, entry, nx=True, ex=SEEN_TTL_S)
            pipe.get(key)
        owners = pipe.execute()[1::2] if parsed else []
        for (entry, event), owner in zip(parsed, owners, strict=True):
            if owner is not None and as_text(owner) != entry:
                done.append(entry)
                self._count("duplicate")
                continue
            self._group(entry, event)
            self._count("grouped")
        if done:
            self.redis.xack(ALERTS_STREAM, ALERTS_GROUP, *done)

    def _group(self, entry: str, event: dict[str, Any]) -> None:
        raw = event.get("record")
        record: dict[str, Any] = raw if isinstance(raw, dict) else {}
        key = {name: record.get(name) for name in self.settings.key}
        key["model_version"] = event.get("model_version")
        ident = tuple(json.dumps(v, sort_keys=True, default=str) for v in key.values())
        stamp = float(event.get("time") or time.time())
        group = self.groups.get(ident)
        if group is None:
            group = self.groups[ident] = Group(key, self.clock(), stamp, stamp)
        group.count += 1
        group.first_seen, group.last_seen = min(group.first_seen, stamp), max(group.last_seen,
                                                                               stamp)
        group.entries.append(entry)
        self._held.add(entry)
        group.top.append(event)
        group.top.sort(key=lambda e: -(e.get("score") or 0.0))
        del group.top[TOP_EVENTS:]

    # ------------------------------------------------------------------ delivering
    def flush(self, everything: bool = False) -> None:
        """Deliver the digests the rate limits allow now, then the groups whose window has
        ended (all of them with ``everything``)."""
        self._send_digests()
        now = self.clock()
        for ident, group in list(self.groups.items()):
            if everything or now - group.opened >= self.settings.window_s:
                self._deliver(group)
                del self.groups[ident]
        self._redeliver()
        if self.metrics is not None:
            self.metrics.open_groups.set(len(self.groups))

    def _deliver(self, group: Group) -> None:
        notification = {
            "key": group.key, "count": group.count, "window_s": self.settings.window_s,
            "first_seen": iso_time(group.first_seen), "last_seen": iso_time(group.last_seen),
            "first_seen_epoch": group.first_seen, "last_seen_epoch": group.last_seen,
            "events": group.top,
        }
        self.stats.notifications += 1
        owed = []
        for state in self.sinks:
            if not state.limiter.allow():  # held, not dropped: it follows in the digest
                state.digest.add(notification, group.entries)
                self._outcome(state.sink.name, "rate_limited")
            elif self._send(state, notification, final=self.settings.redeliver_s <= 0):
                owed.append(state.sink.name)
        if owed:  # its entries stay held and pending until no sink is owed it
            self.owed.add(notification, owed, group.entries, self.clock())
        else:
            self._acknowledge(group.entries)

    def _send_digests(self) -> None:
        for state in self.sinks:
            if not state.digest or state.backoff.down(self.clock()) or \
                    not state.limiter.allow():  # a sink backing off keeps it (and the token)
                continue
            digest, state.digest = state.digest, Digest()
            note, entries = digest.notification(self.settings.window_s), sorted(digest.entries)
            if self._send(state, note, final=self.settings.redeliver_s <= 0):
                self.owed.add(note, [state.sink.name], entries, self.clock())
            else:
                self._acknowledge(entries)

    def _redeliver(self) -> None:
        """Send the owed notifications that are due again (``worker/alert_redelivery.py``)."""
        by_name = {state.sink.name: state for state in self.sinks}
        for item in self.owed.due(self.clock()):
            self._keep_owned()  # between items too: a pass can be long
            if item not in self.owed.items:
                continue  # another consumer took its entries
            final = self.owed.expired(item, self.clock())
            item.sinks = [name for name in item.sinks
                          if self._send(by_name[name], item.notification, final)]
            if item.sinks:
                self.owed.later(item, self.clock())
            else:
                self._acknowledge(item.entries, settling=item)  # first: a failure keeps it
                self.owed.settle(item)
        self._keep_owned()

    def _keep_owned(self) -> None:
        lost = self.owed.keep(self.redis, self.consumer, self.clock(), self.claim_idle_ms / 3000,
                              self._digested())
        self._held.difference_update(lost)
        for state in self.sinks:  # another consumer took them: it delivers them
            state.digest.entries.difference_update(lost)

    def _digested(self) -> set[str]:
        return set().union(*(state.digest.entries for state in self.sinks))

    def _send(self, state: SinkState, notification: dict[str, Any], final: bool) -> bool:
        """Deliver to one sink; True when it stays owed (a retryable failure, not final).
        A sink that failed is not tried again before its backoff ends."""
        name = state.sink.name
        if not final and state.backoff.down(self.clock()):
            self._outcome(name, "deferred")
            return True
        try:
            state.sink.send({**notification, "suppressed": state.digest.notifications})
        except (DeliveryError, OSError) as exc:
            if not final and getattr(exc, "retryable", True):
                log.warning("alert notification to %s failed, sent again later: %s", name, exc)
                state.backoff.failed(self.clock())
                self._outcome(name, "deferred")
                return True
            log.error("alert notification to %s failed, dead-lettered: %s", name, exc)
            self.redis.xadd(ALERTS_DEAD_STREAM, {
                "sink": name, "error": str(exc)[:2000],
                "notification": json.dumps(notification, default=str)})
            self._outcome(name, "failed")
            if self.metrics is not None:
                self.metrics.dead_letters.inc()
            return False
        state.backoff.answered()
        self._outcome(name, "delivered")
        return False

    def _acknowledge(self, entries: list[str], settling: Any = None) -> None:
        # Delivered or dead-lettered everywhere (no sink owes them but in ``settling``, no
        # digest holds them): only now is the hand-off complete.
        still: set[str] = set()
        if self.owed.items or any(state.digest for state in self.sinks):  # else: none held
            still = {entry for item in self.owed.items if item is not settling
                     for entry in item.entries} | self._digested()
        done = [entry for entry in entries if entry not in still]
        if done:
            self.redis.xack(ALERTS_STREAM, ALERTS_GROUP, *done)
            self._held.difference_update(done)

    def _outcome(self, sink: str, outcome: str) -> None:
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if self.metrics is not None:
            self.metrics.notifications.labels(sink, outcome).inc()

    def _count(self, outcome: str) -> None:
        counted = {"grouped": "events", "duplicate": "duplicates"}.get(outcome, "invalid")
        setattr(self.stats, counted, getattr(self.stats, counted) + 1)
        if self.metrics is not None:
            self.metrics.events.labels(outcome).inc()
