"""The maintenance node: Celery beat and the ``maintenance`` queue in one `nearwatch beat`.

Run exactly one (the beat schedule must fire once; the retraining lock would stop a second
node from training twice, but its drift checks would be doubled): the node holds a Redis lease
(``scheduler/lease.py``) and a second one refuses to start. It is a solo-pool worker
with the beat embedded: retraining, drift checks and feedback never take a scoring process.
The schedule lives in memory (``LeasedScheduler``, a ``celery.beat:Scheduler``): the default
persistent scheduler keeps a ``shelve`` file, which is pickle; every entry has ``expires``
instead, so runs missed while the node was down are not replayed.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import redis
from celery import Celery
from celery.beat import Scheduler
from kombu import Queue
from nearwatch.worker.app import create_app, start_worker
from nearwatch.worker.names import MAINTENANCE_QUEUE, SCORING_QUEUE
from nearwatch.worker.settings import Settings

from .lease import BeatLease, LeaseHeld, lease_held
from .schedule import beat_schedule

log = logging.getLogger("nearwatch.scheduler")
IN_MEMORY_SCHEDULER = "nearwatch.scheduler.app:LeasedScheduler"
LEASE_CONF = "nearwatch_beat_lease"  # app.conf: {"url", "key", "holder"} of the node's lease


class LeasedScheduler(Scheduler):
    """Celery's in-memory scheduler, sending a due entry only while this node holds the beat
    lease: the beat process Celery forks keeps no renewal of its own, so it asks Redis. A
    node that lost its lease, or whose main process was killed and left this one behind,
    sends nothing once another beat holds it or it has expired."""

    _lease_client: redis.Redis | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parent = os.getppid()  # the node's main process (this one is its beat child)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        lease = self.app.conf.get(LEASE_CONF)
        if lease is not None:
            if self._lease_client is None:  # made in this process, not inherited over fork
                self._lease_client = redis.Redis.from_url(lease["url"])
            if not lease_held(self._lease_client, lease["key"], lease["holder"]):
                if os.getppid() != self._parent:  # orphaned: its node was killed
                    log.error("the node of this beat process is gone and another holds (or "
                              "nobody holds) the lease %s: exiting", lease["key"])
                    os._exit(1)
                log.error("not sending %s: this beat does not hold the lease %s", entry.name,
                          lease["key"])
                return
        super().apply_entry(entry, producer)


def create_scheduler_app(settings: Settings) -> Celery:
    """The scoring app plus the maintenance queue, tasks and beat schedule."""
    app = create_app(settings)
    app.conf.update(
        task_queues=(Queue(SCORING_QUEUE), Queue(MAINTENANCE_QUEUE)),
        imports=("nearwatch.worker.tasks", "nearwatch.scheduler.tasks"),
        beat_schedule=beat_schedule(settings.retrain),
        beat_scheduler=IN_MEMORY_SCHEDULER,
        timezone="UTC",
    )
    return app


def run_beat_node(settings: Settings, loglevel: str | None = None) -> None:
    """Serve /metrics (retraining, drift, buffer, feedback) and run beat + maintenance,
    holding the beat lease (``scheduler/lease.py``) throughout: exactly one runs."""
    if not settings.redis_url:
        raise RuntimeError("nearwatch beat needs Redis (NEARWATCH_REDIS_URL): the buffer, "
                           "the feedback and the retraining lock live there")
    client = redis.Redis.from_url(settings.redis_url)
    lease = BeatLease(client, settings.retrain.beat_lease_ttl_s)
    # a killed beat's lease expires within one TTL: wait that long (and a bit) before refusing
    lease.acquire(wait_s=1.5 * lease.ttl_s + 1.0)
    try:
        _serve(settings, client, loglevel, lease)
    finally:
        lease.release()
    if lease.lost:
        raise LeaseHeld(f"this beat stopped: its lease {lease.key} was taken by another beat "
                        f"({lease.taken_by}); run exactly one")


def _serve(settings: Settings, client: redis.Redis, loglevel: str | None, lease: BeatLease) -> None:
    import prometheus_client
    from nearwatch.worker.command_settings import metrics_bind_error
    from prometheus_client import CollectorRegistry

    from .metrics import SchedulerCollector

    registry = CollectorRegistry()
    registry.register(SchedulerCollector(client, settings))
    try:
        server, _ = prometheus_client.start_http_server(
            settings.retrain.metrics_port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:
        raise RuntimeError(metrics_bind_error(exc, settings.metrics_host,
                                              settings.retrain.metrics_port,
                                              "NEARWATCH_BEAT_METRICS_PORT")) from exc
    log.warning("beat metrics on http://%s:%d/metrics; schedule: retrain %s, drift check "
                "every %gs", settings.metrics_host, server.server_port,
                settings.retrain.schedule or "by hand and on drift only",
                settings.retrain.drift_check_s)
    app = create_scheduler_app(settings)
    app.conf.update({LEASE_CONF: {"url": settings.redis_url, "key": lease.key,
                                  "holder": lease.holder}})
    app.set_current()
    # losing the lease (another beat took it) stops this node like SIGTERM: a warm shutdown
    lease.keep(on_lost=lambda: os.kill(os.getpid(), signal.SIGTERM))
    start_worker(app, [
        "worker", "--beat", "--scheduler", IN_MEMORY_SCHEDULER,
        "--queues", MAINTENANCE_QUEUE, "--pool", "solo", "--concurrency", "1",
        "--loglevel", loglevel or settings.log_level,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"nearwatch-beat-{os.getpid()}@%h",
    ])
