"""Metrics of `nearwatch alerts`: one process, so a plain registry (no multiprocess mmap files).

Kept apart from ``worker/metrics.py`` (the worker node's multiprocess metrics): this process
never enables multiprocess mode, and its metric objects must not land in a worker's files.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

ALERT_SINKS = ("webhook", "alertmanager", "jsonl")
ALERT_OUTCOMES = ("delivered", "deferred", "failed", "rate_limited")


class AlertMetrics:
    """The metrics of `nearwatch alerts` (one process: a plain registry, no mmap files)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "nearwatch_alert_events_consumed", "Alert events read by nearwatch alerts, by "
            "outcome (grouped | duplicate | invalid)", ["outcome"], registry=r)
        self.notifications = Counter(
            "nearwatch_alert_notifications", "Notifications per sink and outcome "
            "(delivered | deferred: to be sent again | failed | rate_limited)",
            ["sink", "outcome"], registry=r)
        self.attempts = Counter(
            "nearwatch_alert_delivery_attempts", "HTTP delivery attempts per sink",
            ["sink"], registry=r)
        self.dead_letters = Counter(
            "nearwatch_alert_dead_letters",
            "Notifications written to nearwatch:alerts:dead (undeliverable)", registry=r)
        self.open_groups = Gauge(
            "nearwatch_alert_open_groups", "De-duplication groups waiting for their window",
            registry=r)
        # Backlog of the scoring path, read from Redis at each scrape: what arrives and is not
        # scored yet (the rule "records arrive but none are scored" needs it).
        self.queue_messages = Gauge(
            "nearwatch_queue_messages", "Batches waiting in the broker queue", ["queue"],
            registry=r)
        self.stream_backlog = Gauge(
            "nearwatch_stream_backlog", "Stream entries not yet read or acknowledged by "
            "their consumer group", ["stream"], registry=r)
        for outcome in ("grouped", "duplicate", "invalid"):
            self.events.labels(outcome)
        for sink in ALERT_SINKS:
            self.attempts.labels(sink)
            for outcome in ALERT_OUTCOMES:
                self.notifications.labels(sink, outcome)

    def serve(self, port: int, host: str) -> int:
        server, _thread = prometheus_client.start_http_server(port, addr=host,
                                                              registry=self.registry)
        return int(server.server_port)
