"""A real Prometheus (Debian binary) scrapes a worker node: counts match what was streamed."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service_fixtures import (
    Proc,
    WorkerNode,
    free_port,
    http_get,
    metric_value,
    scoring_client,
    stream_records_for_test,
    wait_broker_idle,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def prometheus(node: WorkerNode, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (make services)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: nearwatch\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{node.metrics_port}']\n"
    )
    proc = Proc([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], dict(os.environ),
                tmp_path / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{url}/-/ready") is not None, 30, "prometheus to start")
        yield url
    finally:
        proc.stop()


def _query(url: str, expression: str) -> float | None:
    text = http_get(f"{url}/api/v1/query?query={urllib.parse.quote(expression)}")
    if text is None:
        return None
    result = json.loads(text)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_counts_match_stream_across_children(
    node: WorkerNode, prometheus: str, node_registry: Any, redis_client: Any
) -> None:
    scored = "sum(nearwatch_records_scored_total)"
    errors = "sum(nearwatch_record_errors_total)"
    # the node's counters before this test (other tests used the same node, and may have
    # left a batch to be redelivered: wait for it to be scored first)
    wait_broker_idle(redis_client)
    base_scored = wait_for(lambda: _query(prometheus, scored) is not None
                           and [_query(prometheus, scored)], 30, "a first scrape")[0]
    base_errors = _query(prometheus, errors) or 0.0
    records: list[Any] = stream_records_for_test(1000, seed=31, prefix="p")
    for i in range(0, 1000, 100):
        records[i] = dict(records[i], retries="many")
    client = scoring_client(node, batch_size=20, max_in_flight=4)
    results = list(client.score(records))
    n_errors = sum("error" in r for r in results)
    n_anomalies = sum(bool(r.get("is_anomaly")) for r in results)
    assert n_errors == 10 and client.stats.unanswered == 0

    wait_for(lambda: _query(prometheus, scored) == base_scored + 990, 30,
             "prometheus to see every scored record")
    assert _query(prometheus, errors) == base_errors + 10
    assert _query(prometheus, 'sum(nearwatch_record_errors_total{reason="invalid_field"})') \
        >= 10
    assert _query(prometheus, "sum(nearwatch_anomalies_total)") >= n_anomalies
    # several pool processes contributed; the merged endpoint still adds up
    writers = [f for f in os.listdir(node.metrics_dir) if f.startswith("counter_")]
    assert len(writers) >= 2
    text = http_get(node.metrics_url) or ""
    assert metric_value(text, "nearwatch_records_scored_total") == base_scored + 990
    # model gauges: one value (not one per child), equal to the serving model's
    _, detector = node_registry.load_current()
    assert _query(prometheus, "count(nearwatch_threshold)") == 1
    assert _query(prometheus, "nearwatch_threshold") == pytest.approx(detector.threshold_)
    assert _query(prometheus, "nearwatch_reference_size") == detector.n_reference_
    assert _query(prometheus, "nearwatch_target_fpr") == pytest.approx(detector.alpha)
    assert _query(prometheus, "nearwatch_fpr_bound") == pytest.approx(detector.fpr_bound_)
    assert _query(prometheus, "nearwatch_certified") == float(getattr(detector, "certified_", True))
    assert _query(prometheus, "sum(nearwatch_batch_duration_seconds_count)") > 0
    assert _query(prometheus, "sum(nearwatch_score_count)") == base_scored + 990
