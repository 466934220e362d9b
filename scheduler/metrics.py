"""``/metrics`` of `nearwatch beat`: retraining, drift, buffer and feedback, read at scrape.

Every figure lives in Redis (written by the retraining, the drift check, the workers and the
feedback command), so a hand-run ``nearwatch retrain`` counts too and a restarted beat node
loses nothing. The collector reads them when Prometheus scrapes; an unreachable Redis gives
``nearwatch_scheduler_redis_up 0`` and nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nearwatch.worker.reference_buffer import BUFFER_PREFIX, CURRENT_SCHEMA
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from .buffer import buffer_size, golden_size
from .drift_monitor import DRIFT_ALARMS_KEY, DriftMonitor
from .feedback import FEEDBACK_TOTAL_KEY
from .retrain import DURATION_KEY, LAST_KEY, OUTCOMES, OUTCOMES_KEY

if TYPE_CHECKING:
    from nearwatch.worker.settings import Settings
    from redis import Redis

log = logging.getLogger("nearwatch.scheduler")


def current_model_facts(settings: Settings) -> dict[str, Any]:
    """Version and creation time of the current model, without loading it."""
    from nearwatch.detector.store.registry import ModelRegistry
    from nearwatch.worker.remote_store import RedisModelStore

    if settings.model_store is not None:
        store = RedisModelStore.from_url(settings.model_store)
        version = store.current_version()
        index = store.index(version) if version else {}
        return {"version": version, "created_at": index.get("created_at")}
    registry = ModelRegistry(settings.model_dir)
    version = registry.current_version()
    if version is None:
        return {"version": None}
    manifest = json.loads((registry.path(version) / "manifest.json").read_text())
    return {"version": version, "created_at": manifest.get("created_at")}


class SchedulerCollector:
    """A prometheus_client collector over the Redis state of the retraining loop."""

    def __init__(self, client: Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("nearwatch_scheduler_redis_up",
                               "1 when the scheduler's Redis answered this scrape")
        try:
            families = list(self._families())
        except Exception as exc:  # a scrape never fails: it reports Redis down
            log.warning("scheduler metrics: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        client, retrain = self.client, self.settings.retrain
        outcomes = _decoded(client.hgetall(OUTCOMES_KEY))
        counter = CounterMetricFamily("nearwatch_retrain", "Retrainings by outcome",
                                      labels=["outcome"])
        for outcome in OUTCOMES:
            counter.add_metric([outcome], float(outcomes.get(outcome, 0)))
        yield counter
        duration = _decoded(client.hgetall(DURATION_KEY))
        yield SummaryMetricFamily("nearwatch_retrain_duration_seconds",
                                  "Time taken by retrainings",
                                  count_value=int(float(duration.get("count", 0))),
                                  sum_value=float(duration.get("sum", 0.0)))
        last = client.get(LAST_KEY)
        if last is not None:
            finished = json.loads(last)
            gauge = GaugeMetricFamily("nearwatch_retrain_last_timestamp_seconds",
                                      "When the last retraining started, by its outcome",
                                      labels=["outcome"])
            gauge.add_metric([str(finished.get("outcome"))],
                             float(finished.get("started_at") or 0.0))
            yield gauge
        facts = current_model_facts(self.settings)
        if facts.get("created_at"):
            created = datetime.fromisoformat(str(facts["created_at"])).timestamp()
            yield GaugeMetricFamily("nearwatch_model_age_seconds",
                                    "Seconds since the current model was trained",
                                    value=max(0.0, time.time() - created))
        yield GaugeMetricFamily(
            "nearwatch_drift_statistic",
            "Shiryaev-Roberts drift statistic of the current model (alarm at the threshold)",
            value=DriftMonitor(client, retrain.drift_threshold, retrain.drift_window)
            .statistic())
        yield GaugeMetricFamily("nearwatch_drift_threshold", "Drift alarm level",
                                value=retrain.drift_threshold)
        yield CounterMetricFamily("nearwatch_drift_alarms", "Drift alarms raised",
                                  value=float(client.get(DRIFT_ALARMS_KEY) or 0))
        schema = client.get(f"{BUFFER_PREFIX}:{CURRENT_SCHEMA}")
        # 0 before any worker wrote (NEARWATCH_BUFFER=0 on every worker, say): an absent
        # series kept NearwatchReferenceBufferEmpty from ever firing
        yield GaugeMetricFamily(
            "nearwatch_reference_buffer_records",
            "Records in the reference buffer of the record schema written last",
            value=buffer_size(client, _text(schema), self.settings.buffer) if schema else 0.0)
        yield GaugeMetricFamily("nearwatch_golden_records", "Pinned golden records",
                                value=golden_size(client))
        feedback = _decoded(client.hgetall(FEEDBACK_TOTAL_KEY))
        verdicts = CounterMetricFamily("nearwatch_feedback", "Analyst verdicts received",
                                       labels=["label"])
        for label in ("normal", "anomaly"):
            verdicts.add_metric([label], float(feedback.get(label, 0)))
        yield verdicts


def _decoded(mapping: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else str(k)):
            (v.decode() if isinstance(v, bytes) else str(v)) for k, v in mapping.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
