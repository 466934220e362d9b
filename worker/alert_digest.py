"""Notifications a sink's rate limit held back, delivered together as one digest.

A flood of notifications (many keys in one window: a port scan, or false alarms at flow
volumes) spent the sink's allowance on the first ones and dropped the rest: an exfiltration
among them never paged, and nothing said which keys were dropped. Now a held notification
joins the sink's digest: the keys with their event counts (the highest-scored key first),
the highest-scored events of all of them, and their stream entries. The digest goes out as one
notification as soon as the limit allows one, before any newer notification. Its entries stay
unacknowledged (and owned by this consumer) until then, so a consumer killed meanwhile loses
nothing: another one claims the events and sends them again.

>>> digest = Digest()
>>> for service, n in (("api", 3), ("db", 1)):
...     digest.add({"key": {"service": service}, "count": n, "first_seen_epoch": 10.0,
...                 "last_seen_epoch": 20.0, "events": [{"score": float(n)}]}, [service])
>>> note = digest.notification(window_s=60.0)
>>> note["count"], note["digest"]["notifications"], [k["count"] for k in note["digest"]["keys"]]
(4, 2, [3, 1])
>>> note["events"]
[{'score': 3.0}, {'score': 1.0}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .alert_sinks import iso_time

DIGEST_KEYS = 20  # keys listed by name in a digest; the rest are counted
TOP_EVENTS = 5  # events carried by a notification (highest scores first)


@dataclass
class Digest:
    notifications: int = 0
    count: int = 0  # events
    keys: dict[str, list[Any]] = field(default_factory=dict)  # ident -> [key, n, top score]
    top: list[dict[str, Any]] = field(default_factory=list)
    entries: set[str] = field(default_factory=set)
    first_seen: float = float("inf")
    last_seen: float = float("-inf")

    def __bool__(self) -> bool:
        return self.notifications > 0

    def add(self, notification: dict[str, Any], entries: list[str]) -> None:
        self.notifications += 1
        self.count += notification["count"]
        ident = json.dumps(notification["key"], sort_keys=True, default=str)
        held = self.keys.setdefault(ident, [notification["key"], 0, float("-inf")])
        held[1] += notification["count"]
        held[2] = max([held[2], *(e.get("score") or 0.0 for e in notification["events"])])
        self.top = sorted([*self.top, *notification["events"]],
                          key=lambda e: -(e.get("score") or 0.0))[:TOP_EVENTS]
        self.entries.update(entries)
        self.first_seen = min(self.first_seen, notification["first_seen_epoch"])
        self.last_seen = max(self.last_seen, notification["last_seen_epoch"])

    def notification(self, window_s: float) -> dict[str, Any]:
        """One notification for all the held ones; its key is ``{"digest": "rate_limited",
        "first_entry": ...}`` (a receiver routes it apart; the first stream entry it holds
        tells one digest from the next, else Alertmanager merged them all into one alert) and
        ``digest`` lists the keys it holds."""
        # the most anomalous keys first (an exfiltration among a scan's many sources)
        busiest = sorted(self.keys.values(), key=lambda held: (-held[2], -held[1]))
        first_entry = min(self.entries, key=_entry_order, default="")
        return {
            "key": {"digest": "rate_limited", "first_entry": first_entry},
            "count": self.count, "window_s": window_s,
            "first_seen": iso_time(self.first_seen), "last_seen": iso_time(self.last_seen),
            "first_seen_epoch": self.first_seen, "last_seen_epoch": self.last_seen,
            "events": self.top,
            "digest": {"notifications": self.notifications,
                       "keys": [{"key": key, "count": count}
                                for key, count, _ in busiest[:DIGEST_KEYS]],
                       "more_keys": max(0, len(busiest) - DIGEST_KEYS)},
        }


def _entry_order(entry: str) -> tuple[int, ...]:
    """Stream ids ("1700000000000-3") in stream order."""
    return tuple(int(part) if part.isdigit() else 0 for part in entry.split("-"))
