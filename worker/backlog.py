"""The scoring backlog (broker queue, ingest stream), exported by `nearwatch alerts` for the
stall alert (NearwatchScoringStalled), and a consumer group's lag."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .names import INGEST_GROUP, RECORDS_STREAM, SCORING_QUEUE

if TYPE_CHECKING:
    from redis import Redis

    from .alert_metrics import AlertMetrics

log = logging.getLogger("nearwatch.alerts")
BACKLOG_EVERY_S = 5.0


class BacklogGauges:
    """Sets the backlog gauges at most every ``BACKLOG_EVERY_S``; never raises."""

    def __init__(self, client: Redis, metrics: AlertMetrics | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis, self.metrics, self.clock = client, metrics, clock
        self._last = float("-inf")

    def observe(self) -> None:
        now = self.clock()
        if self.metrics is None or now - self._last < BACKLOG_EVERY_S:
            return
        self._last = now
        try:
            self.metrics.queue_messages.labels(SCORING_QUEUE).set(self.redis.llen(SCORING_QUEUE))
            backlog = group_lag(self.redis, RECORDS_STREAM, INGEST_GROUP, pending=True)
            self.metrics.stream_backlog.labels(RECORDS_STREAM).set(backlog)
        except Exception as exc:  # a gauge is not worth stopping delivery for
            log.warning("could not read the scoring backlog: %s", exc)


def group_lag(client: Redis, stream: str, group: str, pending: bool = False) -> int:
    """Entries of ``stream`` not yet delivered to ``group`` (+ pending ones if asked)."""
    if not client.exists(stream):
        return 0
    for info in client.xinfo_groups(stream):
        if as_text(info["name"]) == group:
            lag = info.get("lag")
            return int(lag or 0) + (int(info["pending"]) if pending else 0)
    return int(client.xlen(stream))  # no group yet: nothing has been read


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
