"""Notifications a sink could not take yet: tried again with backoff, then dead-lettered.

A sink's own retries last seconds (``retries`` x ``backoff_s``); an Alertmanager restart or a
webhook outage lasts longer, and the notification went to ``nearwatch:alerts:dead`` with
nothing to send it again: the page was lost. Now a retryable failure (network, HTTP 5xx, 429)
leaves the notification *owed* to that sink: it is tried again after 5 s, doubling up to 5
minutes, until ``redeliver_s`` after its first failure, and only then dead-lettered. The
stream entries it counts stay unacknowledged meanwhile, so a consumer killed in between loses
nothing (another one claims and delivers them again; a sink may then get it twice).

>>> owed = OwedNotifications(redeliver_s=60)
>>> owed.add({"count": 1}, ["webhook"], ["1-0"], now=0.0)
>>> [o.sinks for o in owed.due(now=1.0)], [o.sinks for o in owed.due(now=5.0)]
([], [['webhook']])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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


class OwedNotifications:
    def __init__(self, redeliver_s: float) -> None:
        self.redeliver_s = redeliver_s
        self.items: list[Owed] = []
        self._touched = float("-inf")

    def add(self, notification: dict[str, Any], sinks: list[str], entries: list[str],
            now: float) -> None:
        self.items.append(Owed(notification, sinks, entries, now, now + FIRST_DELAY_S))

    def due(self, now: float) -> Iterator[Owed]:
        """The owed notifications to try now (each then either settled or ``later``)."""
        ready = [item for item in self.items if item.due <= now]
        self.items = [item for item in self.items if item.due > now]
        yield from ready

    def expired(self, item: Owed, now: float) -> bool:
        return now - item.failed_since >= self.redeliver_s

    def later(self, item: Owed, now: float) -> None:
        item.delay = min(MAX_DELAY_S, item.delay * 2)
        item.due = now + item.delay
        self.items.append(item)

    def touch_due(self, now: float, every_s: float) -> bool:
        """Whether to reset the owed entries' idle time now: a notification owed for longer
        than the claim idle time would be claimed and sent again by another consumer."""
        if not self.items or now - self._touched < every_s:
            return False
        self._touched = now
        return True

    def entries(self) -> set[str]:
        return {entry for item in self.items for entry in item.entries}

    def __len__(self) -> int:
        return len(self.items)
