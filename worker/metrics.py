"""Prometheus metrics for a worker node, correct with several scoring processes.

prometheus_client multiprocess mode: every scoring process (worker/node.py, or a prefork pool
child) writes its samples to mmap files in
one directory; the node's parent process (which never scores) serves a single ``/metrics``
endpoint that merges them. One endpoint per node, never one per child: children come and go
(a killed child is replaced), the merged counters stay monotonic.

- ``prepare_multiprocess_dir`` (parent, before the pool forks) wipes the directory, so a
  restarted node does not report the previous run's samples, and switches the client library
  into multiprocess mode.
- ``serve_metrics`` (parent) serves the merged view; before each scrape it marks dead
  children (``mark_process_dead``) so their live gauges disappear (counters are kept).
- ``ServiceMetrics`` (each pool process) holds the metric objects. Labels are bounded: error
  reasons come from ``ERROR_REASONS``; model versions are the registry's few version names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client import values as prom_values
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict

from .metric_values import count_per_field, counted_fields, observe_many

if TYPE_CHECKING:
    from nearwatch.detector import Detector

ERROR_REASONS = ("not_an_object", "invalid_field", "invalid_json", "scoring_failed",
                 "too_large", "invalid_id")
# Scores are distances in embedding space; a wide exponential range covers every model.
SCORE_BUCKETS = tuple(round(0.01 * 2**i, 4) for i in range(18))
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PID_FILE = re.compile(r"_(\d+)\.db$")
_active_dir: Path | None = None  # set by prepare_multiprocess_dir; inherited by pool children
log = logging.getLogger("nearwatch.worker")


class _AllocatedMmapedDict(MmapedDict):
    """prometheus_client's sample file with its disk blocks allocated before they are mapped.

    The library grows a file with ``truncate`` (a sparse file) and maps it: on a full
    filesystem the first write to a new page is a ``SIGBUS`` that kills the process. Here
    the blocks are reserved first (``posix_fallocate``), so a full disk is an ``OSError`` at
    metric creation, which ``ServiceMetrics`` logs and counts while scoring goes on.
    """

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            with open(filename, "a+b") as stream:
                size = max(os.fstat(stream.fileno()).st_size, 1 << 16)
                os.posix_fallocate(stream.fileno(), 0, size)
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        needed = self._used + len(key.encode("utf-8")) + 40
        capacity = self._capacity
        while needed > capacity:
            capacity *= 2
        if capacity != self._capacity:
            os.posix_fallocate(self._f.fileno(), 0, capacity)
        super()._init_value(key)


def active_multiprocess_dir() -> Path | None:
    """The multiprocess directory of this worker node, if metrics are enabled."""
    return _active_dir


def prepare_multiprocess_dir(directory: Path | None) -> Path:
    """Create/wipe the multiprocess directory and enable multiprocess mode in this process.

    Must run before any metric object exists; pool children inherit the mode by fork.
    """
    global _active_dir
    path = Path(tempfile.mkdtemp(prefix="nearwatch-metrics-")) if directory is None else directory
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    # prometheus_client reads this variable when it opens its per-process files; setting it
    # here (not reading it) keeps worker/settings.py the only reader of configuration.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    prom_values.MmapedDict = _AllocatedMmapedDict  # type: ignore[misc]
    prom_values.ValueClass = prom_values.MultiProcessValue()
    _active_dir = path
    return path


def mark_dead_processes(directory: Path) -> list[int]:
    """``mark_process_dead`` for every pid with sample files that is no longer running."""
    dead = []
    pids = {int(m.group(1)) for f in os.listdir(directory) if (m := _PID_FILE.search(f))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prom_multiprocess.mark_process_dead(pid, str(directory))
            dead.append(pid)
        except PermissionError:  # alive, owned by someone else
            pass
    return dead


class _MergedLiveCollector:
    """Merges all processes' files, after dropping the live gauges of dead processes."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._merged = prom_multiprocess.MultiProcessCollector(None, path=str(directory))

    def collect(self) -> Iterable[Metric]:
        mark_dead_processes(self._directory)
        return self._merged.collect()


def serve_metrics(port: int, directory: Path, host: str) -> int:
    """Serve the merged metrics on ``host:port`` from a daemon thread; returns the port."""
    registry = CollectorRegistry()
    registry.register(_MergedLiveCollector(directory))
    server, _thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


class ServiceMetrics:
    """The metric objects of one pool process (create after ``prepare_multiprocess_dir``)."""

    def __init__(self) -> None:
        # registry=None: in multiprocess mode the samples live in the mmap files, and the
        # parent's collector reads them; nothing is registered in-process.
        r = None
        self.records_scored = Counter(
            "nearwatch_records_scored", "Records scored (each delivery of a batch counts)",
            registry=r)
        self.anomalies = Counter("nearwatch_anomalies", "Records flagged as anomalous", registry=r)
        self.record_errors = Counter(
            "nearwatch_record_errors", "Records answered with an error, by reason",
            ["reason"], registry=r)
        self.batches = Counter("nearwatch_batches", "Batches scored", registry=r)
        self.score = Histogram(
            "nearwatch_score", "Anomaly score (mean kNN distance)", buckets=SCORE_BUCKETS,
            registry=r)
        self.batch_duration = Histogram(
            "nearwatch_batch_duration_seconds", "Time to score one batch",
            buckets=BATCH_BUCKETS, registry=r)
        self.model_reloads = Counter("nearwatch_model_reloads", "Model (re)loads by outcome "
                                     "(loaded | refused)", ["outcome"], registry=r)
        for outcome in ("loaded", "refused"):  # 0 from the start: increase() sees the first
            self.model_reloads.labels(outcome)
        self.dead_letters = Counter("nearwatch_dead_letters", "Records written to the "
                                    "dead-letter stream", registry=r)
        self.write_errors = Counter(
            "nearwatch_metrics_write_errors", "Metric updates lost (e.g. the metrics "
            "directory is full); scoring goes on", registry=r)
        self.lost_updates = 0  # the same, kept in memory when even the counter cannot write
        self._logged_at = 0.0
        self.alert_events = Counter("nearwatch_alert_events", "Alert events written to "
                                    "nearwatch:alerts", registry=r)
        self.alert_write_failures = Counter(
            "nearwatch_alert_write_failures",
            "Scored batches whose alert events could not be written", registry=r)
        self.unknown_fields = Counter(
            "nearwatch_unknown_fields", "Fields of scored records that the serving model does "
            "not know (ignored; a new field reaches a model only through `nearwatch train`)",
            registry=r)
        self.missing_fields = Counter(
            "nearwatch_missing_fields", "Model fields missing from scored records that training "
            "always had (scored as a typical value: a producer that stops sending a field hides "
            "anomalies in it)", ["field"], registry=r)
        self.unseen_categories = Counter(
            "nearwatch_unseen_categories", "Values of categorical fields that no training "
            "record had (each scores as far out as a 3 sd deviation)", ["field"], registry=r)
        self.buffer_write_failures = Counter(
            "nearwatch_buffer_write_failures", "Batches not added to the reference buffer "
            "(Redis unreachable)", registry=r)
        # Every reason exists from the start (at 0): rules and dashboards see the series.
        for reason in ERROR_REASONS:
            self.record_errors.labels(reason)
        # Live gauges: a dead child's values vanish at the next scrape; "mostrecent" picks
        # the value written last, i.e. the model loaded last.
        self.threshold = Gauge(
            "nearwatch_threshold", "Certified score threshold of the serving model",
            multiprocess_mode="livemostrecent", registry=r)
        self.fpr_bound = Gauge(
            "nearwatch_fpr_bound", "Certified upper bound on the false-positive rate",
            multiprocess_mode="livemostrecent", registry=r)
        self.target_fpr = Gauge(
            "nearwatch_target_fpr", "Target false-positive rate (alpha) of the serving model",
            multiprocess_mode="livemostrecent", registry=r)
        self.reference_size = Gauge(
            "nearwatch_reference_size", "Normal reference records in the serving model",
            multiprocess_mode="livemostrecent", registry=r)
        self.reference_distinct = Gauge(
            "nearwatch_reference_distinct", "Distinct reference records (each indexed once)",
            multiprocess_mode="livemostrecent", registry=r)
        self.duplicate_factor = Gauge(
            "nearwatch_reference_duplicate_factor",
            "Reference records per distinct indexed reference in the serving model",
            multiprocess_mode="livemostrecent", registry=r)
        self.certified = Gauge(
            "nearwatch_certified",
            "1 if the threshold of the serving model is certified (alpha, delta), 0 if too "
            "few calibration records", multiprocess_mode="livemostrecent", registry=r)
        self.calibration_index = Gauge(
            "nearwatch_calibration_index_info",
            "1 for the index kind (flat | hnsw) whose search produced the calibration scores",
            ["kind"], multiprocess_mode="livemax", registry=r)
        self.model_info = Gauge(
            "nearwatch_model_info", "1 for the model version(s) being served by live processes",
            ["version", "model_hash"], multiprocess_mode="livemax", registry=r)
        self._info_labels: tuple[str, str] | None = None

    def degraded(self, exc: BaseException) -> None:
        """A metric update failed: count it, log it (at most once a minute), go on."""
        self.lost_updates += 1
        with contextlib.suppress(Exception):  # the in-memory count above is what is left
            self.write_errors.inc()
        now = time.monotonic()
        if now - self._logged_at > 60:
            self._logged_at = now
            log.error("metrics degraded (%d updates lost so far): %s", self.lost_updates, exc)

    def model_refused(self) -> None:
        with self._guard():
            self.model_reloads.labels("refused").inc()

    def _guard(self) -> _Guard:
        return _Guard(self)

    def model_loaded(self, version: str, detector: Detector) -> None:
        with self._guard():
            self._model_loaded(version, detector)

    def _model_loaded(self, version: str, detector: Detector) -> None:
        self.model_reloads.labels("loaded").inc()
        self.threshold.set(_number(detector.threshold_))
        self.fpr_bound.set(_number(detector.fpr_bound_))
        self.target_fpr.set(_number(detector.alpha))
        self.reference_size.set(float(detector.n_reference_))
        self.reference_distinct.set(float(detector.n_unique_reference_))
        self.duplicate_factor.set(float(detector.duplicate_factor_))
        missing, unseen = counted_fields(getattr(detector, "feature_encoder_", None))
        for counter, fields in ((self.missing_fields, missing), (self.unseen_categories, unseen)):
            for field in fields:  # each series at 0 from the start, for rules and dashboards
                counter.labels(field)
        # Bundles older than `certified_` are certified: fitting then refused too few records.
        self.certified.set(float(bool(getattr(detector, "certified_", True))))
        for kind in ("flat", "hnsw"):
            self.calibration_index.labels(kind).set(float(kind == detector.calibration_index_))
        if self._info_labels is not None:
            self.model_info.labels(*self._info_labels).set(0)
        self._info_labels = (version, str(detector.model_version_))
        self.model_info.labels(*self._info_labels).set(1)

    def batch_scored(self, results: list[dict[str, Any]], reasons: list[str], seconds: float,
                     unknown_fields: int = 0, missing_fields: dict[str, int] | None = None,
                     unseen_categories: dict[str, int] | None = None) -> None:
        with self._guard():
            self._batch_scored(results, reasons, seconds)
            if unknown_fields:
                self.unknown_fields.inc(unknown_fields)
            count_per_field(self.missing_fields, missing_fields)
            count_per_field(self.unseen_categories, unseen_categories)

    def _batch_scored(self, results: list[dict[str, Any]], reasons: list[str], seconds: float
                      ) -> None:
        self.batches.inc()
        self.batch_duration.observe(seconds)
        scored = [r["score"] for r in results if "score" in r]
        if scored:
            self.records_scored.inc(len(scored))
            anomalies = sum(1 for r in results if r.get("is_anomaly"))
            if anomalies:
                self.anomalies.inc(anomalies)
            observe_many(self.score, scored)
        for reason in reasons:
            self.record_errors.labels(reason).inc()


class _Guard:
    """``with metrics._guard():`` a failing metric update degrades, never raises."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            self._metrics.degraded(exc)
            return True
        return False


def create_service_metrics() -> ServiceMetrics | None:
    """``ServiceMetrics()``, or None (logged) when its sample file cannot be created."""
    try:
        return ServiceMetrics()
    except OSError as exc:
        log.error("metrics disabled in this process: %s (scoring goes on)", exc)
        return None


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)
