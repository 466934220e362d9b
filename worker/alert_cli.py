"""Wiring of `nearwatch alerts`: settings → sinks, metrics endpoint, signals, consumer."""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import ExitStack
from typing import Any, TextIO

import click

from .alert_consumer import AlertConsumer
from .alert_metrics import AlertMetrics
from .alert_sinks import AlertmanagerSink, JsonlSink, Retry, Sink, WebhookSink
from .flow import BrokerUnavailable
from .settings import Settings


def build_sinks(settings: Settings, jsonl_out: TextIO | None, metrics: AlertMetrics | None
                ) -> list[Sink]:
    """The configured sinks; ``ValueError`` naming the settings when there is none."""
    alert = settings.alerts

    def counted(sink: str) -> Any:
        return (lambda: metrics.attempts.labels(sink).inc()) if metrics else (lambda: None)

    sinks: list[Sink] = []
    if alert.webhook_url:
        sinks.append(WebhookSink(alert.webhook_url, alert.timeout_s,
                                 Retry(alert.retries, alert.backoff_s),
                                 counted=counted("webhook")))
    if alert.alertmanager_url:
        sinks.append(AlertmanagerSink(alert.alertmanager_url, alert.timeout_s,
                                      Retry(alert.retries, alert.backoff_s), alert.severity,
                                      alert.resolve_s, counted=counted("alertmanager")))
    if jsonl_out is not None:
        sinks.append(JsonlSink(jsonl_out))
    if not sinks:
        raise ValueError("no alert sink configured: set NEARWATCH_ALERT_WEBHOOK_URL, "
                         "NEARWATCH_ALERTMANAGER_URL or NEARWATCH_ALERT_JSONL (or --jsonl)")
    return sinks


def run_alerts(settings: Settings, consumer: str, claim_idle_ms: int | None,
               jsonl: str | None, stop_when_idle: bool) -> None:
    import redis

    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = jsonl if jsonl is not None else settings.alerts.jsonl
    with ExitStack() as stack:
        out: TextIO | None = None
        if target == "-":
            out = sys.stdout
        elif target:
            out = stack.enter_context(open(target, "a"))  # noqa: SIM115 (closed by the stack)
        metrics = AlertMetrics()
        sinks = build_sinks(settings, out, metrics)
        assert settings.redis_url is not None  # checked by the command
        alerts = AlertConsumer(redis.Redis.from_url(settings.redis_url), sinks, settings.alerts,
                               consumer=consumer, claim_idle_ms=claim_idle_ms, metrics=metrics,
                               outage_deadline=settings.outage_deadline)
        port = metrics.serve(settings.alerts.metrics_port, settings.metrics_host)

        def stop(*_: Any) -> None:  # deliver the open groups, acknowledge, exit
            alerts.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"alerts: consumer {alerts.consumer}, sinks "
              f"{', '.join(s.name for s in sinks)}, /metrics on port {port}", file=sys.stderr)
        try:
            stats = alerts.run(stop_when_idle=stop_when_idle)
        except BrokerUnavailable as exc:
            raise click.ClickException(
                f"alerts stopped: {exc}; unacknowledged events stay pending and are taken "
                "over by the next consumer") from exc
        print(f"alerts: {stats.events} events, {stats.duplicates} duplicates, "
              f"{stats.notifications} notifications ({stats.delivered} delivered, "
              f"{stats.failed} dead-lettered, {stats.rate_limited} rate-limited), "
              f"{stats.claimed} claimed", file=sys.stderr, flush=True)
