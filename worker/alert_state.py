"""The alert consumer's state: its counters, its open groups, and each sink's own state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .alert_digest import Digest
from .alert_redelivery import SinkBackoff
from .alert_sinks import RateLimiter, Sink


@dataclass
class AlertStats:
    events: int = 0
    duplicates: int = 0
    invalid: int = 0
    claimed: int = 0
    notifications: int = 0
    delivered: int = 0
    failed: int = 0
    rate_limited: int = 0
    deferred: int = 0  # failed attempts to be made again (alert_redelivery.py)


@dataclass
class Group:
    key: dict[str, Any]
    opened: float  # consumer clock
    first_seen: float  # event time (epoch)
    last_seen: float
    count: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)


@dataclass
class SinkState:
    sink: Sink
    limiter: RateLimiter
    digest: Digest = field(default_factory=Digest)  # held by the rate limit, to follow
    backoff: SinkBackoff = field(default_factory=SinkBackoff)  # down after a failure
