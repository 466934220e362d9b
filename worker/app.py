"""The Celery app, configured once from ``Settings``.

``create_app(settings)`` builds an app; ``worker.app:app`` (resolved lazily, for
``celery -A worker.app``) is the one built from the environment. Delivery guarantees:
JSON only (never pickle), tasks acknowledged late and requeued when their process dies,
prefetch of one message per process so a killed process holds at most one batch.
The queue and task names come from ``names.py``; each scoring process's scorer is built by
``pool.build_runtime`` (by ``node.py`` before the process consumes; for a prefork pool here,
at ``worker_process_init``), which the tasks read. ``run_worker_node`` runs one node.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from kombu import Queue

from . import fast_json
from .names import MAINTENANCE_QUEUE, MAINTENANCE_TASKS, SCORING_QUEUE, TASK_PATTERN
from .node import worker_argv
from .pool import SETTINGS_KEY, build_runtime
from .settings import Settings

log = logging.getLogger("nearwatch.worker")
_env_app: Celery | None = None


def create_app(settings: Settings) -> Celery:
    fast_json.install()  # kombu's JSON decoded by orjson, same values (fast_json.py)
    app = Celery("nearwatch", broker=settings.broker_url, backend=settings.result_backend,
                 set_as_current=False)
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_accept_content=["json"],
        task_queues=(Queue(SCORING_QUEUE),),
        task_default_queue=SCORING_QUEUE,
        # exact names first: maintenance tasks never land on the scoring queue
        task_routes={**{name: {"queue": MAINTENANCE_QUEUE} for name in MAINTENANCE_TASKS},
                     TASK_PATTERN: {"queue": SCORING_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A redelivered batch that already succeeded is answered from the result backend.
        worker_deduplicate_successful_tasks=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Loading torch, faiss and a model in a fresh pool process can exceed the 4 s default.
        worker_proc_alive_timeout=120.0,
        broker_connection_retry_on_startup=True,
        # kombu's Redis transport, able to close a channel while Redis is down: without it
        # a node that loses Redis dies instead of reconnecting (see redis_broker.py).
        broker_transport=("nearwatch.worker.redis_broker:Transport"
                          if settings.broker_url.startswith(("redis://", "rediss://"))
                          else None),
        broker_transport_options=_transport_options(settings),
        # The Redis result backend re-subscribes once a second; its default gives up after
        # 20 tries and leaves the app unusable ("must be restarted"): ride out as long an
        # outage as the producers do (NEARWATCH_OUTAGE_DEADLINE).
        result_backend_transport_options={"retry_policy": {
            "max_retries": max(20, math.ceil(settings.outage_deadline)), "interval_start": 0,
            "interval_step": 1, "interval_max": 1}},
        result_expires=settings.result_expires,
        task_send_sent_event=False,
        worker_send_task_events=False,
        # The worker imports the tasks; they find their scorer through worker/pool.py.
        imports=("nearwatch.worker.tasks",),
    )
    app.conf[SETTINGS_KEY] = settings
    return app


def _transport_options(settings: Settings) -> dict[str, Any]:
    timeout = settings.visibility_timeout
    options: dict[str, Any] = {
        "visibility_timeout": timeout,
        # Scan for a dead node's unacknowledged batches every few seconds (kombu's default
        # scan period is ~100 s on top of the visibility timeout).
        "unacked_restore_interval": max(1, min(10, int(timeout // 4))),
        "unacked_restore_throttle": 1,
        # The lock around that scan expires after 300 s by default: a scoring process killed
        # while it held it (e.g. during the scan it makes at start) would stop every node
        # from restoring unacknowledged batches for 5 minutes. A scan takes milliseconds, and
        # two scans at once cannot restore a batch twice (kombu restores in a transaction).
        "unacked_mutex_expire": max(5, min(60, int(timeout // 2))),
        # Task bodies (JSON text) go into kombu's JSON envelope as they are, not base64
        # encoded first: base64 cost the producer 0.9 and the worker 2.7 µs per 40-field
        # record (decoding 1 MB of base64 takes CPython ~2.7 ms); measured end to end at 10k
        # references, producer 13.5 -> 11.7 µs/record, worker node ~1 µs less. Consumers
        # read each message's own encoding, so either kind of producer works with any worker.
        "body_encoding": None,
    }
    if settings.broker_url.startswith("memory://"):
        options["polling_interval"] = 0.005  # in-process queue: poll it often (default 1 s)
    return options


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    # Runs in each prefork child right after fork: the model is loaded before the first
    # task (a missing or refused model is logged; the child retries at each batch).
    from celery import current_app

    if current_app.conf.get(SETTINGS_KEY) is None:
        return  # some other Celery app's pool
    build_runtime(current_app, watch=True)


@worker_process_shutdown.connect
def _pool_process_exit(**_: Any) -> None:
    from .metrics import active_multiprocess_dir

    directory = active_multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), str(directory))


POOLS = ("prefork", "processes")


def run_worker_node(settings: Settings, concurrency: int, loglevel: str | None = None,
                    pool: str = "prefork") -> None:
    """One worker node: metrics endpoint in this (parent) process; a prefork pool of
    ``concurrency`` processes, or as many solo-pool scoring processes (``worker/node.py``)."""
    if pool not in POOLS:
        raise RuntimeError(f"unknown pool {pool!r} (one of {', '.join(POOLS)})")
    from nearwatch.detector.threads import configure_threads

    from .command_settings import metrics_bind_error
    from .metrics import prepare_multiprocess_dir, serve_metrics
    from .remote_registry import location_of, open_registry

    cache: Path | None = None
    if settings.model_store is not None and settings.model_cache is None:
        # one cache per node, made before the fork: its pool processes share the files
        cache = Path(tempfile.mkdtemp(prefix="nearwatch-models-"))
        settings = dataclasses.replace(settings, model_cache=cache)
    registry = open_registry(settings)
    if registry.current_version() is None:
        log.warning("no current model in %s yet: batches fail (and are retried by the "
                    "clients) until `nearwatch models add BUNDLE_DIR --promote`",
                    location_of(registry))
    configure_threads(settings.threads_per_process)  # before fork: children inherit it
    directory = prepare_multiprocess_dir(settings.metrics_dir)
    try:
        port = serve_metrics(settings.metrics_port, directory, settings.metrics_host)
    except OSError as exc:
        raise RuntimeError(metrics_bind_error(exc, settings.metrics_host, settings.metrics_port,
                                              "NEARWATCH_METRICS_PORT")) from exc
    log.warning("metrics on http://%s:%d/metrics (multiprocess dir %s)",
                settings.metrics_host, port, directory)
    app = create_app(settings)
    app.set_current()
    level = loglevel or settings.log_level
    # the processes pool's delivery-tag files (node.py); prefork needs none
    run_dir = None if pool == "prefork" else Path(tempfile.mkdtemp(prefix="nearwatch-node-"))
    try:
        if run_dir is None:
            start_worker(app, worker_argv("prefork", concurrency, level))
        else:
            from .node import Supervisor

            logging.basicConfig(level=level.upper(),
                                format="[%(asctime)s: %(levelname)s/%(process)d] %(message)s")
            Supervisor(app, concurrency, level, run_dir, directory).run()
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def start_worker(app: Celery, argv: list[str]) -> None:
    """``app.worker_main(argv)``, but a worker that stopped on an unrecoverable error exits
    non-zero: worker_main drops Celery's exit code, so a node that could not start or crashed
    exited 0, which systemd's ``Restart=on-failure`` takes for a clean stop."""
    import click
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # as app.start does
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    finally:
        celery_command.params[0].default = None
    if isinstance(code, int) and code != 0:
        raise SystemExit(code)


def __getattr__(name: str) -> Any:
    # `celery -A worker.app worker` looks up `app`; build it from the environment on demand
    # so that importing this module as a library reads no environment.
    global _env_app
    if name in ("app", "celery"):
        if _env_app is None:
            _env_app = create_app(Settings.from_env())
        return _env_app
    raise AttributeError(name)
