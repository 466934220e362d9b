"""Prometheus metrics for a worker node, correct under the prefork pool.

prometheus_client multiprocess mode: every pool process writes its samples to mmap files in
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

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client import values as prom_values
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from nearwatch.detector import Detector

ERROR_REASONS = ("not_an_object", "invalid_field", "invalid_json", "scoring_failed")
# Scores are distances in embedding space; a wide exponential range covers every model.
SCORE_BUCKETS = tuple(round(0.01 * 2**i, 4) for i in range(18))
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PID_FILE = re.compile(r"_(\d+)\.db$")
_active_dir: Path | None = None  # set by prepare_multiprocess_dir; inherited by pool children


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
        self.anomalies = Counter(
            "nearwatch_anomalies", "Records flagged as anomalous", registry=r)
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
        self.model_reloads = Counter(
            "nearwatch_model_reloads", "Model (re)loads by outcome (loaded | refused)",
            ["outcome"], registry=r)
        self.dead_letters = Counter(
            "nearwatch_dead_letters", "Records written to the dead-letter stream", registry=r)
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

    def model_loaded(self, version: str, detector: Detector) -> None:
        self.model_reloads.labels("loaded").inc()
        self.threshold.set(_number(detector.threshold_))
        self.fpr_bound.set(_number(detector.fpr_bound_))
        self.target_fpr.set(_number(detector.alpha))
        self.reference_size.set(float(detector.n_reference_))
        self.reference_distinct.set(float(detector.n_unique_reference_))
        self.duplicate_factor.set(float(detector.duplicate_factor_))
        # Bundles older than `certified_` are certified: fitting then refused too few records.
        self.certified.set(float(bool(getattr(detector, "certified_", True))))
        for kind in ("flat", "hnsw"):
            self.calibration_index.labels(kind).set(float(kind == detector.calibration_index_))
        if self._info_labels is not None:
            self.model_info.labels(*self._info_labels).set(0)
        self._info_labels = (version, str(detector.model_version_))
        self.model_info.labels(*self._info_labels).set(1)

    def batch_scored(self, results: list[dict[str, Any]], reasons: list[str], seconds: float
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


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``observe`` each value, with one file write per touched bucket instead of per value.

    Uses the histogram's internal bucket counters (stable across prometheus_client releases
    for years); falls back to plain ``observe`` if they are not there.
    """
    import numpy as np

    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = np.bincount(np.searchsorted(np.asarray(bounds), values, side="left"),
                         minlength=len(bounds))
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))
    total.inc(float(np.sum(values)))


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)
