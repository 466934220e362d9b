"""Notifications a sink could not take yet: tried again with backoff, then dead-lettered.

A sink's own retries last seconds (``retries`` x ``backoff_s``); an Alertmanager restart or a
webhook outage lasts longer, and the notification went to ``nearwatch:alerts:dead`` with
nothing to send it again: the page was lost. Now a retryable failure (network, HTTP 5xx, 429)
leaves the notification *owed* to that sink: it is tried again after 5 s, doubling up to 5
minutes, until ``redeliver_s`` after its first failure, and only then dead-lettered. A sink
that failed is *down* for as long (``SinkBackoff``): what it is owed meanwhile is not tried,
so an outage costs one attempt per period, not one per notification. The stream entries stay
unacknowledged and owned by this consumer (their idle time reset, ``keep``), so a consumer
killed in between loses nothing: another one claims them and sends them again.

>>> owed = OwedNotifications(redeliver_s=60)
>>> owed.add({"count": 1}, ["webhook"], ["1-0"], now=0.0)
>>> [o.sinks for o in owed.due(now=1.0)], [o.sinks for o in owed.due(now=5.0)]
([], [['webhook']])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .alerts import ALERTS_GROUP, ALERTS_STREAM

if TYPE_CHECKING:
    from redis import Redis

FIRST_DELAY_S = 5.0
MAX_DELAY_S = 300.0


@dataclass
class Owed:
    notification: dict[str, Any]
    sinks: list[str]  # names of the sinks still owed it
    entries: list[str]  # the stream entries it counts, acknowledged once nothing is owed
    failed_since: float  # consumer clock
    due: float
    delay: float = FIRST_DELAY_S


@dataclass
class SinkBackoff:
    """A sink that failed is not tried again before ``until`` (5 s, doubling to 5 min)."""

    until: float = float("-inf")
    delay: float = FIRST_DELAY_S

    def down(self, now: float) -> bool:
        return now < self.until

    def failed(self, now: float) -> None:
        self.until = now + self.delay
        self.delay = min(MAX_DELAY_S, self.delay * 2)

    def answered(self) -> None:
        self.until, self.delay = float("-inf"), FIRST_DELAY_S


class OwedNotifications:
    def __init__(self, redeliver_s: float) -> None:
        self.redeliver_s = redeliver_s
        self.items: list[Owed] = []
        self._touched = float("-inf")

    def add(self, notification: dict[str, Any], sinks: list[str], entries: list[str],
            now: float) -> None:
        self.items.append(Owed(notification, sinks, entries, now, now + FIRST_DELAY_S))

    def due(self, now: float) -> list[Owed]:
        """The owed notifications to try now; each stays listed until ``settle`` (a failure
        half-way through a pass loses none)."""
        return [item for item in self.items if item.due <= now]

    def expired(self, item: Owed, now: float) -> bool:
        return now - item.failed_since >= self.redeliver_s

    def later(self, item: Owed, now: float) -> None:
        item.delay = min(MAX_DELAY_S, item.delay * 2)
        item.due = now + item.delay

    def settle(self, item: Owed) -> None:
        self.items.remove(item)

    def entries(self) -> set[str]:
        return {entry for item in self.items for entry in item.entries}

    def keep(self, client: Redis, consumer: str, now: float, every_s: float,
             also: set[str] | None = None) -> set[str]:
        """Every ``every_s``: reset the idle time of the owed entries (and of ``also``: the
        digests') this consumer still owns (else another consumer would claim them and send
        them to every sink again) and forget the items whose entries another consumer took
        meanwhile (it delivers them). Returns the forgotten entries."""
        also = also or set()
        if not (self.items or also) or now - self._touched < every_s:
            return set()
        self._touched = now
        wanted = self.entries() | also
        owned = _owned(client, consumer, wanted)
        lost = {item_id for item_id in wanted - owned}
        self.items = [item for item in self.items if not lost.intersection(item.entries)]
        kept: list[Any] = sorted(self.entries() | (also - lost))
        if kept:
            client.xclaim(ALERTS_STREAM, ALERTS_GROUP, consumer, 0, kept, justid=True)
        return wanted - set(kept)

    def __len__(self) -> int:
        return len(self.items)


def _owned(client: Redis, consumer: str, wanted: set[str], page: int = 1000) -> set[str]:
    """The entries of ``wanted`` pending for ``consumer``, paging through its whole pending
    list: its open groups' entries come first in it, and one page of them made an owed entry
    look taken by another consumer (then sent twice)."""
    owned: set[str] = set()
    start = "-"
    while True:
        pending = client.xpending_range(ALERTS_STREAM, ALERTS_GROUP, start, "+", count=page,
                                        consumername=consumer)
        owned.update(_text(p["message_id"]) for p in pending)
        if len(pending) < page or wanted <= owned:
            return owned & wanted
        start = "(" + _text(pending[-1]["message_id"])  # exclusive: after the last one


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
