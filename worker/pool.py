"""The runtime of one worker process: its scorer, built once and shared by its tasks.

Imports run one way: ``app`` → ``pool`` ← ``tasks`` (``tasks`` never imports ``app``).
``create_app`` stores the ``Settings`` in the Celery app's configuration; each scoring
process of a node calls ``build_runtime`` before it consumes (``node.py``; a prefork child in
the app's ``worker_process_init`` handler), so the model is loaded before the first task; a
task calls ``scorer_for``, which builds the runtime on first use where neither runs (the
embedded solo-pool worker of the demo and the tests). ``push_answer_for`` pushes a batch's
answer onto a producer's Redis list with the process's Redis client (``answers.py``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from .metrics import ServiceMetrics
    from .runtime import BatchScorer, DeadLetters

# The Celery configuration key that holds the app's Settings (set by create_app).
SETTINGS_KEY = "nearwatch_settings"
# The app attribute that caches the scorer (per app: tests run several apps in one process).
_SCORER_ATTRIBUTE = "nearwatch_scorer"
_REDIS_ATTRIBUTE = "nearwatch_redis"  # the process's Redis client (answers, dead letters)
_lock = threading.Lock()
log = logging.getLogger("nearwatch.worker")
_metrics: ServiceMetrics | None = None


def settings_of(app: Celery) -> Settings:
    settings = app.conf.get(SETTINGS_KEY)
    if not isinstance(settings, Settings):
        raise RuntimeError("this Celery app was not built by worker.app.create_app")
    return settings


def scorer_for(app: Celery) -> BatchScorer:
    """The process's scorer for ``app``: built by ``worker_process_init`` or on first use."""
    scorer: BatchScorer | None = getattr(app, _SCORER_ATTRIBUTE, None)
    return scorer if scorer is not None else build_runtime(app)


def build_runtime(app: Celery, watch: bool = False) -> BatchScorer:
    """Load the current model and wire the scorer of this process (once per process);
    ``watch``: also follow the registry pointer while idle (``ModelHolder.watch``), as the
    scoring processes of a node do."""
    from nearwatch.detector.threads import configure_threads

    from .remote_registry import open_registry
    from .runtime import BatchScorer, LoggedDeadLetters, ModelHolder, RedisDeadLetters

    with _lock:
        scorer: BatchScorer | None = getattr(app, _SCORER_ATTRIBUTE, None)
        if scorer is not None:
            return scorer
        settings = settings_of(app)
        configure_threads(settings.threads_per_process)
        metrics = process_metrics()
        # a directory, or Redis mirrored into the node's cache (NEARWATCH_MODEL_DIR)
        holder = ModelHolder(open_registry(settings), settings.reload_interval, metrics)
        holder.load_initial()
        if watch:
            holder.watch()
        dead_letters: DeadLetters
        alerts = buffer = None
        if settings.redis_url:
            import redis

            from .alerts import RedisAlertWriter

            client = redis.Redis.from_url(settings.redis_url)
            setattr(app, _REDIS_ATTRIBUTE, client)
            dead_letters = RedisDeadLetters(client)
            if settings.alerts.enabled:
                alerts = RedisAlertWriter(client, settings.alerts.maxlen,
                                          settings.alerts.explain_max, metrics)
            if settings.buffer.enabled:
                from .reference_buffer import DELIVERY_TTL_S, BufferWriter

                # a batch's marker outlives its redeliveries and resubmissions
                repeats_within = max(settings.visibility_timeout,
                                     settings.batch_timeout * settings.max_attempts)
                buffer = BufferWriter(client, settings.buffer, metrics,
                                      delivery_ttl_s=max(DELIVERY_TTL_S, 2 * repeats_within))
        else:
            dead_letters = LoggedDeadLetters()
        scorer = BatchScorer(holder, dead_letters, metrics, alerts, settings.limits, buffer)
        setattr(app, _SCORER_ATTRIBUTE, scorer)
        return scorer


def push_answer_for(app: Celery, key: str, entry: bytes, best_effort: bool = False) -> None:
    """Push a batch's answer onto a producer's Redis list (``worker/answers.py``)."""
    from .answers import push_answer

    try:
        client = getattr(app, _REDIS_ATTRIBUTE, None)
        if client is None:
            scorer_for(app)  # builds the runtime, and with it the Redis client
            client = getattr(app, _REDIS_ATTRIBUTE, None)
        broker_url = settings_of(app).broker_url
        if client is None and broker_url.startswith(("redis://", "rediss://", "unix://")):
            import redis  # no NEARWATCH_REDIS_URL: the producer's list is on the broker

            client = redis.Redis.from_url(broker_url)
            setattr(app, _REDIS_ATTRIBUTE, client)
        if client is None:
            raise RuntimeError("answer_key given, but this worker has no Redis "
                               "(NEARWATCH_REDIS_URL)")
        push_answer(client, key, entry, settings_of(app).result_expires)
    except Exception:
        if not best_effort:
            raise
        log.exception("could not push an answer to %s", key)


def process_metrics() -> ServiceMetrics | None:
    """This process's ``ServiceMetrics``, or None when multiprocess metrics are not enabled."""
    global _metrics
    from .metrics import active_multiprocess_dir, create_service_metrics

    if _metrics is None and active_multiprocess_dir() is not None:
        _metrics = create_service_metrics()  # None (logged) if its files cannot be created
    return _metrics
