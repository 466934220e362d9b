"""Maintenance tasks on the ``maintenance`` queue: retraining, drift checks, feedback.

Stable names (``worker/names.py``), JSON arguments, thin bodies. ``nearwatch.retrain`` is
not acknowledged late: re-running a half-done retraining is safe (single flight, the gate,
atomic registry writes) but pointless, and the next schedule runs anyway.
``nearwatch.feedback`` is (re-storing a verdict is idempotent: one verdict per id).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from nearwatch.worker.names import DRIFT_CHECK, FEEDBACK, MAINTENANCE_QUEUE, RETRAIN
from nearwatch.worker.pool import settings_of
from nearwatch.worker.remote_registry import registry_session

from .drift_monitor import DRIFT_ALARMS_KEY, DriftMonitor
from .feedback import FEEDBACK_TOTAL_KEY, FeedbackStore, record_feedback
from .retrain import retrain_once

if TYPE_CHECKING:
    from nearwatch.worker.settings import Settings
    from redis import Redis

log = logging.getLogger("nearwatch.scheduler")
DRIFT_RETRAIN_GUARD = "nearwatch:drift:retrain-guard"  # rate limit of drift retrainings


@lru_cache(maxsize=4)
def redis_for(url: str) -> Redis:
    import redis

    return redis.Redis.from_url(url)


def _client(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise RuntimeError("maintenance tasks need Redis: set NEARWATCH_REDIS_URL")
    return redis_for(settings.redis_url)


@shared_task(name=RETRAIN, bind=True, ignore_result=False)
def retrain(self: Task, trigger: str = "schedule") -> dict[str, Any]:
    """One retraining (``scheduler/retrain.py``); its outcome and figures."""
    settings = settings_of(self.app)
    with registry_session(settings) as registry:
        return retrain_once(_client(settings), registry, settings, str(trigger)).to_json()


@shared_task(name=DRIFT_CHECK, bind=True, ignore_result=True)
def drift_check(self: Task) -> dict[str, Any]:
    """Close drift windows; on an alarm, log, count and trigger a retraining (rate-limited)."""
    settings = settings_of(self.app)
    client = _client(settings)
    report = DriftMonitor(client, settings.retrain.drift_threshold, settings.retrain.drift_window,
                          baseline_windows=settings.retrain.drift_baseline_windows
                          ).check(current_version(settings))
    triggered = False
    if report.alarm:
        client.incr(DRIFT_ALARMS_KEY)
        interval = int(max(1, settings.retrain.drift_min_interval_s))
        triggered = bool(client.set(DRIFT_RETRAIN_GUARD, "1", nx=True, ex=interval))
        log.warning("drift on model %s: statistic crossed %g; %s", report.version,
                    settings.retrain.drift_threshold,
                    "retraining now" if triggered else "retraining rate-limited")
        if triggered:
            self.app.send_task(RETRAIN, args=["drift"], queue=MAINTENANCE_QUEUE)
    return {"version": report.version, "statistic": report.statistic, "alarm": report.alarm,
            "windows": len(report.steps), "retraining": triggered}


@shared_task(name=FEEDBACK, bind=True, acks_late=True, ignore_result=False)
def feedback(self: Task, record_id: Any, label: str,
             record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store an analyst verdict (``normal`` or ``anomaly``) for the next retraining."""
    settings = settings_of(self.app)
    return give_feedback(_client(settings), settings, record_id, label, record)


def current_version(settings: Settings) -> str | None:
    """The registry's pointer, read without downloading or loading the model."""
    from nearwatch.detector.store.registry import ModelRegistry
    from nearwatch.worker.remote_store import RedisModelStore

    if settings.model_store is not None:
        return RedisModelStore.from_url(settings.model_store).current_version()
    return ModelRegistry(settings.model_dir).current_version()


def give_feedback(client: Redis, settings: Settings, record_id: Any, label: str,
                  record: dict[str, Any] | None) -> dict[str, Any]:
    """The task's body, shared with ``nearwatch feedback``."""
    store = FeedbackStore(client, settings.retrain.feedback_max)
    verdict = record_feedback(client, store, record_id, label, record)
    client.hincrby(FEEDBACK_TOTAL_KEY, verdict.label, 1)
    return {"id": verdict.record_id, "label": verdict.label, "source": verdict.source}
