"""`nearwatch demo`: the whole service path on one machine, with or without Redis.

Without ``NEARWATCH_BROKER_URL`` everything runs in this process but still passes real
messages: Celery's in-memory broker (``memory://``), an in-memory result backend and a
Celery worker (solo pool) in a thread, reading the model from a temporary registry. With
``NEARWATCH_BROKER_URL`` set, the model is added to ``NEARWATCH_MODEL_DIR`` and promoted, and
the records go to the real workers (which hot-reload it).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from .client import ScoringClient

Echo = Callable[[str], None]
TRAIN_RECORDS = 4000
STREAM_RECORDS = 2000  # also the default of `nearwatch demo --records`
BATCH_SIZE = 250  # few records: smaller batches than the service's keep the pool busy
KNOWN_ANOMALIES = 10  # labelled anomalies given to the second model (hard negatives)


def run_demo(settings: Settings, echo: Echo, n_train: int = TRAIN_RECORDS,
             n_stream: int = STREAM_RECORDS, seed: int = 0) -> int:
    """Returns the process exit status (non-zero if a record went unanswered)."""
    from nearwatch.detector import Detector
    from nearwatch.detector.store.registry import ModelRegistry
    from nearwatch.detector.synthetic import LABEL_FIELD, generate_records
    from nearwatch.detector.threads import configure_threads

    from .client import ClientOptions, ScoringClient
    from .remote_registry import open_registry

    configure_threads(settings.threads_per_process)
    started = time.perf_counter()
    echo(f"1. synthetic telemetry: {n_train} training + {n_stream} streamed records")
    train = [r for r in generate_records(n_train, anomaly_rate=0.0, seed=seed)]
    stream = generate_records(n_stream, anomaly_rate=0.02, seed=seed + 1)
    for record in stream:
        record["id"] = f"s{record['id']}"
    stream[7]["latency_ms"] = "fast"  # two bad records: answered with errors, not dropped
    stream[11]["bytes_out"] = {"nested": 1}

    echo("2. training the detector")
    detector = Detector(label_fields=(LABEL_FIELD,), random_state=seed).fit(train)
    echo(f"   {detector.n_reference_} references, threshold {detector.threshold_:.4g}, "
         f"certified FPR <= {detector.fpr_bound_:.4g} (target {detector.alpha})")

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nearwatch-")))
        detector.save(workdir / "bundle", signing_key=settings.bundle_key)
        # real workers: the configured registry (a directory or Redis); else a private one
        registry = (open_registry(settings, workdir / "cache") if settings.broker_configured
                    else ModelRegistry(workdir / "models"))
        version = registry.add(workdir / "bundle", promote=True)
        if settings.broker_configured:
            app, metrics_url = _real_workers(settings)
        else:
            app, metrics_url = stack.enter_context(_embedded_worker(settings, registry.root))
        where = settings.model_store or registry.root
        echo(f"3. model {version} promoted in {where}; "
             f"broker {app.conf.broker_url.split('@')[-1]}")
        client = ScoringClient(app, ClientOptions.from_settings(settings, batch_size=BATCH_SIZE))
        if settings.broker_configured:
            echo(f"   waiting for the workers (`nearwatch worker`) to serve {version}")
            _wait_for_version(client, version, stream[0])
        t0 = time.perf_counter()
        results = list(client.score(stream))
        seconds = time.perf_counter() - t0
        _print_flagged(echo, stream, results)
        echo(f"5. metrics at {metrics_url}:")
        for line in _metrics_excerpt(metrics_url):
            echo(f"   {line}")
        status = _summary(echo, "6. summary", stream, results, seconds,
                          client.stats.unanswered, LABEL_FIELD)
        # The known-anomaly mode: a few labelled anomalies (of other seeds than the stream's)
        # train the encoder as hard negatives; the workers hot-reload the new version.
        known = [r for r in generate_records(50 * KNOWN_ANOMALIES, anomaly_rate=0.02,
                                             seed=seed + 2) if r[LABEL_FIELD]]
        echo(f"7. retraining with {KNOWN_ANOMALIES} known anomalies "
             "(Detector.fit(..., anomalies=...)), promoted while the workers run")
        informed = Detector(label_fields=(LABEL_FIELD,), random_state=seed).fit(
            train, anomalies=known[:KNOWN_ANOMALIES])
        informed.save(workdir / "informed", signing_key=settings.bundle_key)
        informed_version = registry.add(workdir / "informed", promote=True)
        _wait_for_version(client, informed_version, stream[0])
        t0 = time.perf_counter()
        informed_results = list(client.score(stream))
        status |= _summary(echo, f"8. summary with model {informed_version}", stream,
                           informed_results, time.perf_counter() - t0,
                           client.stats.unanswered, LABEL_FIELD)
    echo(f"demo took {time.perf_counter() - started:.1f} s")
    return status


@contextlib.contextmanager
def _embedded_worker(settings: Settings, model_dir: Path) -> Iterator[tuple[Celery, str]]:
    from .app import create_app
    from .metrics import prepare_multiprocess_dir, serve_metrics

    local = replace(settings, broker_url="memory://", result_backend="cache+memory://",
                    redis_url=None, model_dir=model_dir, metrics_dir=None)
    directory = prepare_multiprocess_dir(None)
    port = serve_metrics(0, directory, "127.0.0.1")
    app = create_app(local)
    with embedded_worker(app, wait_on_exit=False):
        yield app, f"http://127.0.0.1:{port}/metrics"


@contextlib.contextmanager
def embedded_worker(app: Celery, wait_on_exit: bool = True) -> Iterator[Any]:
    """A real Celery worker (solo pool) consuming ``app``'s queues from a thread.

    ``wait_on_exit=False`` does not wait for the worker loop's next poll (up to a few
    seconds) when the process is about to exit anyway; the thread is a daemon.
    """
    from celery._state import _set_task_join_will_block
    from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
    from celery.worker import state

    setup_app_for_worker(app, "WARNING", None)
    controller = TestWorkController(
        app=app, pool="solo", concurrency=1, hostname="nearwatch-embedded@localhost",
        loglevel="WARNING", logfile=None, ready_callback=None, without_heartbeat=True,
        without_mingle=True, without_gossip=True,
    )
    thread = threading.Thread(target=controller.start, daemon=True, name="nearwatch-worker")
    thread.start()
    controller.ensure_started()
    # Building the pool marks this whole process as "inside a task", which would make any
    # later ``result.get()`` here refuse to block; celery's own start_worker resets it too.
    _set_task_join_will_block(False)
    try:
        yield controller
    finally:
        state.should_terminate = 0  # the worker loop stops at its next poll
        if wait_on_exit:
            thread.join(30)
            state.should_terminate = None


def _real_workers(settings: Settings) -> tuple[Celery, str]:
    from .app import create_app

    return create_app(settings), f"http://127.0.0.1:{settings.metrics_port}/metrics"


def _wait_for_version(client: ScoringClient, version: str, probe: dict[str, Any],
                      timeout: float = 60.0) -> None:
    started, result = time.monotonic(), {}
    while time.monotonic() < started + timeout:
        (result,) = next(client.score_batches([[probe]]))  # unanswered: after the retries
        if result.get("model_version") == version:
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"no worker served model {version} within {time.monotonic() - started:.0f} s (last "
        f"answer: {result.get('error') or result.get('model_version')}): is `nearwatch worker` "
        "running with the same NEARWATCH_* settings?")


def _print_flagged(echo: Echo, stream: list[dict[str, Any]], results: list[dict[str, Any]]
                   ) -> None:
    flagged = [(r, rec) for r, rec in zip(results, stream, strict=True) if r.get("is_anomaly")]
    flagged.sort(key=lambda pair: -pair[0]["score"])
    echo(f"4. {len(flagged)} flagged records (top 10 by score):")
    echo(f"   {'id':>10}  {'service':<7} {'score':>9} {'p-value':>8}  truth    nearest normal")
    for result, record in flagged[:10]:
        truth = "anomaly" if record.get("is_anomaly") else "normal"
        nearest = result["neighbours"][0]
        echo(f"   {result['id']:>10}  {record['service']:<7} {result['score']:9.3f} "
             f"{result['p_value']:8.4f}  {truth:<8} {nearest['id']} "
             f"(d={nearest['distance']:.3f})")
    for result in results:
        if "error" in result:
            echo(f"   error: {result['error']}")


def _metrics_excerpt(url: str) -> list[str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        return [f"(not reachable: {exc})"]
    wanted = ("nearwatch_records_scored_total", "nearwatch_anomalies_total",
              "nearwatch_record_errors_total", "nearwatch_threshold", "nearwatch_fpr_bound",
              "nearwatch_target_fpr", "nearwatch_certified", "nearwatch_reference_size",
              "nearwatch_model_info",
              "nearwatch_batch_duration_seconds_count", "nearwatch_score_count")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def _summary(echo: Echo, title: str, stream: list[dict[str, Any]],
             results: list[dict[str, Any]], seconds: float, unanswered: int,
             label_field: str) -> int:
    truth = [bool(r.get(label_field)) for r in stream]
    flagged = [bool(r.get("is_anomaly")) for r in results]
    hits = sum(t and f for t, f in zip(truth, flagged, strict=True))
    false_alarms = sum(f and not t for t, f in zip(truth, flagged, strict=True))
    errors = sum("error" in r for r in results)
    normals = max(1, len(truth) - sum(truth))
    echo(f"{title}: {len(results)} records streamed in {seconds:.2f} s "
         f"({len(results) / max(seconds, 1e-9):,.0f} records/s), {sum(flagged)} flagged "
         f"({hits}/{sum(truth)} true anomalies found, false-alarm rate "
         f"{false_alarms / normals:.3%}), {errors} errors, {unanswered} unanswered")
    return 1 if unanswered else 0
