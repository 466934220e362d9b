"""The Celery app, configured once from ``Settings``.

``create_app(settings)`` builds an app; ``worker.app:app`` (resolved lazily, for
``celery -A worker.app``) is the one built from the environment. Delivery guarantees:
JSON only (never pickle), tasks acknowledged late and requeued when their process dies,
prefetch of one message per process so a killed process holds at most one batch.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from kombu import Queue

from worker.settings import Settings
from worker.tasks import SCORE_BATCH, SCORING_QUEUE

log = logging.getLogger("nearwatch.worker")
_runtime_lock = threading.Lock()
_process_metrics: Any = None
_env_app: Celery | None = None


def create_app(settings: Settings) -> Celery:
    app = Celery("nearwatch", broker=settings.broker_url, backend=settings.result_backend,
                 set_as_current=False)
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_accept_content=["json"],
        task_queues=(Queue(SCORING_QUEUE),),
        task_default_queue=SCORING_QUEUE,
        task_routes={SCORE_BATCH: {"queue": SCORING_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A redelivered batch that already succeeded is answered from the result backend.
        worker_deduplicate_successful_tasks=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Loading torch, faiss and a model in a fresh pool process can exceed the 4 s default.
        worker_proc_alive_timeout=120.0,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_expires=settings.result_expires,
        task_send_sent_event=False,
        worker_send_task_events=False,
        imports=("worker.tasks",),
    )
    app.conf.nearwatch_settings = settings
    return app


def settings_of(app: Any) -> Settings:
    settings = app.conf.get("nearwatch_settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("this Celery app was not built by worker.app.create_app")
    return settings


def build_runtime(app: Any) -> Any:
    """Load the current model and wire the scorer of this process (once per process)."""
    from detector.index import configure_threads
    from detector.registry import ModelRegistry
    from worker.runtime import BatchScorer, LoggedDeadLetters, ModelHolder, RedisDeadLetters

    with _runtime_lock:
        scorer = getattr(app, "nearwatch_scorer", None)
        if scorer is not None:
            return scorer
        settings = settings_of(app)
        configure_threads(settings.threads_per_process)
        metrics = process_metrics()
        holder = ModelHolder(ModelRegistry(settings.model_dir), settings.reload_interval, metrics)
        holder.load_initial()
        if settings.redis_url:
            import redis

            dead_letters: Any = RedisDeadLetters(redis.Redis.from_url(settings.redis_url))
        else:
            dead_letters = LoggedDeadLetters()
        scorer = BatchScorer(holder, dead_letters, metrics)
        app.nearwatch_scorer = scorer
        return scorer


def process_metrics() -> Any:
    """This process's ``ServiceMetrics``, or None when multiprocess metrics are not enabled."""
    global _process_metrics
    from prometheus_client import values as prom_values

    from worker.metrics import ServiceMetrics

    if _process_metrics is None and getattr(prom_values.ValueClass, "_multiprocess", False):
        _process_metrics = ServiceMetrics()
    return _process_metrics


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    # Runs in each prefork child right after fork: the model is loaded before the first
    # task, and a child that cannot load it fails loudly instead of failing every batch.
    from celery import current_app

    if current_app.conf.get("nearwatch_settings") is None:
        return  # some other Celery app's pool
    try:
        build_runtime(current_app)
    except Exception:
        log.exception("pool process %d could not load the model", os.getpid())
        raise


@worker_process_shutdown.connect
def _pool_process_exit(**_: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), directory)


def run_worker_node(settings: Settings, concurrency: int, loglevel: str | None = None) -> None:
    """One worker node: metrics endpoint in this (parent) process, prefork pool for scoring."""
    from detector.index import configure_threads
    from detector.registry import ModelRegistry
    from worker.metrics import prepare_multiprocess_dir, serve_metrics

    registry = ModelRegistry(settings.model_dir)
    if registry.current_version() is None:
        raise RuntimeError(
            f"no current model in {settings.model_dir}: run "
            "`nearwatch models add BUNDLE_DIR --promote` (NEARWATCH_MODEL_DIR sets the registry)"
        )
    configure_threads(settings.threads_per_process)  # before fork: children inherit it
    directory = prepare_multiprocess_dir(settings.metrics_dir)
    port = serve_metrics(settings.metrics_port, directory, settings.metrics_host)
    log.warning("metrics on http://%s:%d/metrics (multiprocess dir %s)",
                settings.metrics_host, port, directory)
    app = create_app(settings)
    app.set_current()
    app.worker_main([
        "worker", "--queues", SCORING_QUEUE, "--pool", "prefork",
        "--concurrency", str(concurrency), "--loglevel", loglevel or settings.log_level,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"nearwatch-{os.getpid()}@%h",
    ])


def __getattr__(name: str) -> Any:
    # `celery -A worker.app worker` looks up `app`; build it from the environment on demand
    # so that importing this module as a library reads no environment.
    global _env_app
    if name in ("app", "celery"):
        if _env_app is None:
            _env_app = create_app(Settings.from_env())
        return _env_app
    raise AttributeError(name)
