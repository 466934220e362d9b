"""The shipped monitoring stack end to end, with real processes on loopback only.

1. A real Prometheus, loaded with ``deploy/prometheus/rules.yml`` (its windows and ``for:``
   durations shortened, nothing else changed), scrapes a real worker node. A normal stream
   leaves the flag-rate alert silent (its z statistic is evaluated and low); an anomalous
   stream makes ``NearwatchAnomalyRateAboveTarget`` fire, and a real Alertmanager running
   ``deploy/alertmanager/alertmanager.yml`` (receiver URLs → a webhook receiver started here,
   group waits shortened) delivers it to that receiver, with the counts of the stream.
2. `nearwatch alerts` (a real process) reads the per-record events the worker wrote to
   ``nearwatch:alerts`` and delivers them to a test webhook and to that Alertmanager:
   the events of one key within the window become one notification whose ``count`` is the
   number of flagged records of that key; a re-written event (a redelivered batch) is dropped.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.service_fixtures import (
    CLI,
    REPO,
    Proc,
    WorkerNode,
    free_port,
    http_get,
    scoring_client,
    service_env,
    wait_broker_idle,
    wait_for,
)

pytestmark = pytest.mark.slow
DEPLOY = REPO / "deploy"
FLAG_RATE_ALERT = "NearwatchAnomalyRateAboveTarget"
RECORD_ALERT = "NearwatchAnomalousRecords"
RULE_WINDOW = "60s"  # every [Nm] range of the shipped rules (10m, 5m, 15m) becomes this
RULE_FOR = "3s"  # every `for: Nm` becomes this
ALERT_STREAM = "nearwatch:alerts"


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{names[0]} is not installed (make services)")


class Receiver:
    """Webhook receiver on 127.0.0.1: keeps (path, JSON body) of every POST, answers 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body in self.posts if p == path]

    def alerts(self, alertname: str) -> list[tuple[str, dict[str, Any]]]:
        """(path, alert) of every alert named ``alertname`` Alertmanager posted."""
        with self.lock:
            posts = list(self.posts)
        return [(p, alert) for p, body in posts if isinstance(body, dict)
                for alert in body.get("alerts", [])
                if alert.get("labels", {}).get("alertname") == alertname]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def adapted_rules(text: str) -> str:
    """The shipped rules with short windows and ``for:`` durations (checked to apply)."""
    ranges = re.findall(r"\[\d+m\]", text)
    fors = re.findall(r"\bfor: \d+m\b", text)
    assert len(ranges) >= 5 and len(fors) >= 5, "the shipped rules changed shape: adapt the test"
    text = re.sub(r"\[\d+m\]", f"[{RULE_WINDOW}]", text)
    return re.sub(r"\bfor: \d+m\b", f"for: {RULE_FOR}", text)


def adapted_alertmanager(text: str, receiver_url: str) -> str:
    """The shipped Alertmanager config: receivers → ``receiver_url`` (same paths), short
    group waits; routes, matchers, grouping and inhibitions unchanged."""
    config = yaml.safe_load(text)

    def shorten(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    urls = 0
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = receiver_url + urllib.parse.urlsplit(hook["url"]).path
            urls += 1
    assert urls >= 2
    return yaml.safe_dump(config, sort_keys=False)


def _get_json(url: str) -> Any:
    text = http_get(url)
    return None if text is None else json.loads(text)


def _query(prometheus: str, expression: str) -> float | None:
    answer = _get_json(f"{prometheus}/api/v1/query?query={urllib.parse.quote(expression)}")
    if answer is None:
        return None
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _series(prometheus: str, expression: str) -> list[dict[str, Any]]:
    answer = _get_json(f"{prometheus}/api/v1/query?query={urllib.parse.quote(expression)}")
    return [] if answer is None else list(answer["data"]["result"])


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def alertmanager(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    binary = _binary("prometheus-alertmanager", "alertmanager")
    tmp = tmp_path_factory.mktemp("alertmanager")
    config = tmp / "alertmanager.yml"
    config.write_text(adapted_alertmanager(
        (DEPLOY / "alertmanager" / "alertmanager.yml").read_text(), receiver.url))
    port = free_port()
    # --cluster.listen-address= (empty): no gossip port, nothing listens beyond loopback
    proc = Proc([binary, f"--config.file={config}", f"--storage.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                dict(os.environ), tmp / "alertmanager.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.process.poll() is None and http_get(f"{url}/-/ready"), 30,
                 f"alertmanager to start ({proc.log_path})")
        yield url
    finally:
        proc.stop()


@pytest.fixture()
def prometheus(node: WorkerNode, alertmanager: str, tmp_path: Path) -> Iterator[str]:
    binary = _binary("prometheus")
    am_port = urllib.parse.urlsplit(alertmanager).port
    (tmp_path / "rules.yml").write_text(adapted_rules(
        (DEPLOY / "prometheus" / "rules.yml").read_text()))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        # the job name of deploy/prometheus/prometheus.yml (rules select on it)
        "scrape_configs": [{"job_name": "nearwatch", "static_configs": [
            {"targets": [f"127.0.0.1:{node.metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = Proc([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], dict(os.environ),
                tmp_path / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.process.poll() is None and http_get(f"{url}/-/ready"), 30,
                 f"prometheus to start ({proc.log_path})")
        rules = _get_json(f"{url}/api/v1/rules")["data"]["groups"]
        loaded = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
        assert FLAG_RATE_ALERT in loaded, proc.log()[-2000:]
        yield url
    finally:
        proc.stop()


def records(n: int, seed: int, prefix: str, shifted_every: int = 0) -> list[dict[str, Any]]:
    """Normal records of the training distribution; with ``shifted_every`` = k, every k-th
    one has load and CPU 20 times their normal values (far outside it; latency and sizes
    are log-scaled by the encoder, so those would need far bigger shifts)."""
    from nearwatch.detector.synthetic import generate_records

    out = generate_records(n, anomaly_rate=0.0, seed=seed)
    for i, record in enumerate(out):
        record["id"] = f"{prefix}{record['id']}"
        if shifted_every and i % shifted_every == 0:
            for name in ("load", "cpu_pct"):
                if isinstance(record.get(name), int | float):
                    record[name] = record[name] * 20
    return out


def score(node: WorkerNode, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    client = scoring_client(node, batch_size=100, max_in_flight=4)
    results = list(client.score(batch))
    assert client.stats.unanswered == 0 and not [r for r in results if "error" in r]
    return results


def test_flag_rate_alert_fires_and_alertmanager_delivers_it(
        node: WorkerNode, prometheus: str, receiver: Receiver, redis_client: Any) -> None:
    scored = "sum(nearwatch_records_scored_total)"
    n_records = "nearwatch:records_scored:increase10m"  # recording rules (name kept)
    z_rule = "nearwatch:flag_rate_z:10m"
    wait_broker_idle(redis_client)
    wait_for(lambda: _query(prometheus, scored) is not None, 30, "a first scrape of the worker")
    base_scored = _query(prometheus, scored)
    base_flags = _query(prometheus, "sum(nearwatch_anomalies_total)")
    assert base_scored is not None and base_flags is not None
    alpha = wait_for(lambda: _query(prometheus, "max(nearwatch_target_fpr)"), 10,
                     "the target FPR gauge")

    # 1. normal records (the training distribution): the z-test runs and stays silent
    normal = score(node, records(800, seed=41, prefix="e2e-n"))
    assert 800 * alpha >= 5  # enough records for the rule to give a verdict
    wait_for(lambda: (_query(prometheus, n_records) or 0) >= 800, 30,
             "the recording rule to count the normal stream")
    for _ in range(4):  # several evaluations: neither pending nor firing
        z = _query(prometheus, z_rule)
        assert z is not None and z < 3.09, f"normal stream gave z = {z}"
        assert _series(prometheus, f'ALERTS{{alertname="{FLAG_RATE_ALERT}"}}') == []
        time.sleep(1.0)
    assert receiver.alerts(FLAG_RATE_ALERT) == []

    # 2. an anomalous stream: far more flags than alpha allows
    anomalous = score(node, records(600, seed=43, prefix="e2e-a", shifted_every=2))
    flagged = sum(bool(r["is_anomaly"]) for r in normal + anomalous)
    assert sum(bool(r["is_anomaly"]) for r in anomalous) >= 250
    wait_for(lambda: _series(prometheus, f'ALERTS{{alertname="{FLAG_RATE_ALERT}",'
                                         'alertstate="firing"}'), 30,
             "prometheus to fire the flag-rate alert")
    delivered = wait_for(lambda: receiver.alerts(FLAG_RATE_ALERT), 30,
                         "alertmanager to deliver the flag-rate alert to the webhook")
    path, alert = delivered[0]
    # shipped routing: severity warning → receiver nearwatch-warning (/warning)
    assert path == "/warning" and alert["status"] == "firing"
    assert alert["labels"]["severity"] == "warning"
    body = next(b for b in receiver.bodies("/warning")
                if alert in b["alerts"])
    assert body["receiver"] == "nearwatch-warning" and body["status"] == "firing"
    # the description carries the counts the rule saw when it fired (the anomalous stream
    # may still have been arriving; increase() extrapolates a little) and its z follows
    text = " ".join(alert["annotations"]["description"].split())
    described = re.search(r"(\d+) records flagged out of (\d+) in 10 minutes: z = ([\d.]+) "
                          r"against the target FPR (\d+(?:\.\d+)?(?:e-?\d+)?)\.", text)
    assert described, text
    flags_then, n_then, z_then = int(described[1]), int(described[2]), float(described[3])
    assert float(described[4]) == pytest.approx(alpha) and z_then > 3.09
    assert 800 <= n_then <= 1400 * 1.2 + 1 and flags_then <= flagged * 1.2 + 1
    assert z_then == pytest.approx((flags_then - n_then * alpha)
                                   / (n_then * alpha * (1 - alpha)) ** 0.5, abs=0.3)
    # once everything is scraped: the worker counted exactly what its answers flagged
    wait_for(lambda: _query(prometheus, "sum(nearwatch_anomalies_total)") == base_flags + flagged
             and _query(prometheus, scored) == base_scored + 1400, 30,
             "prometheus to see every scored and flagged record")
    assert flagged <= (_query(prometheus, "nearwatch:anomalies:increase10m") or 0) \
        <= flagged * 1.2 + 1

def test_alerts_consumer_delivers_deduplicated_events_to_webhook_and_alertmanager(
        node: WorkerNode, alertmanager: str, receiver: Receiver, redis_client: Any,
        tmp_path: Path) -> None:
    wait_broker_idle(redis_client)
    # only this test's events in the stream (earlier tests scored on the same node)
    redis_client.delete(ALERT_STREAM)
    batch = records(300, seed=47, prefix="e2e-r", shifted_every=3)
    results = score(node, batch)
    flagged = [r for r in results if r["is_anomaly"]]
    service_of = {r["id"]: r["service"] for r in batch}
    expected = Counter(service_of[r["id"]] for r in flagged)
    assert len(flagged) >= 40 and max(expected.values()) >= 5
    wait_for(lambda: redis_client.xlen(ALERT_STREAM) == len(flagged), 10,
             "the worker's alert events")
    # a redelivered batch writes an event again: it must not be counted twice
    _, first_fields = redis_client.xrange(ALERT_STREAM, count=1)[0]
    redis_client.xadd(ALERT_STREAM, first_fields)

    proc = Proc([*CLI, "alerts", "--consumer", "e2e"], service_env(
        node.settings.model_dir, NEARWATCH_ALERT_WEBHOOK_URL=f"{receiver.url}/records",
        NEARWATCH_ALERTMANAGER_URL=alertmanager, NEARWATCH_ALERT_WINDOW_S="2",
        NEARWATCH_ALERT_KEY="service", NEARWATCH_ALERT_RATE_LIMIT="0",
        NEARWATCH_ALERT_METRICS_PORT=str(free_port()), NEARWATCH_ALERT_RETRIES="1",
        NEARWATCH_METRICS_HOST="127.0.0.1"),
        tmp_path / "alerts.log")
    try:
        # until every event is accounted for (or the count overshoots: fail below)
        notes = wait_for(lambda: sum(n["count"] for n in receiver.bodies("/records"))
                         >= len(flagged) and receiver.bodies("/records"), 30,
                         f"the webhook notifications ({proc.log_path})")
    finally:
        status = proc.stop()
    log = proc.log()
    assert status == 0, log[-2000:]
    # one notification per key (service + model version), counting that key's events
    assert len(notes) == len(expected), notes
    got = {n["key"]["service"]: n for n in notes}
    assert {s: n["count"] for s, n in got.items()} == dict(expected)
    version = notes[0]["key"]["model_version"]
    assert version and all(n["key"]["model_version"] == version for n in notes)
    by_id = {r["id"]: r for r in flagged}
    for service, note in got.items():
        events = note["events"]
        assert 1 <= len(events) <= 5 and note["window_s"] == 2.0
        assert [e["score"] for e in events] == sorted((e["score"] for e in events), reverse=True)
        for event in events:  # real events of flagged records of this key
            assert event["id"] in by_id and event["record"]["service"] == service
            assert event["score"] == pytest.approx(by_id[event["id"]]["score"])
            assert event["score"] > event["threshold"]
    assert f"{len(flagged)} events, 1 duplicates, {len(expected)} notifications " \
           f"({2 * len(expected)} delivered, 0 dead-lettered" in log, log[-2000:]

    # Alertmanager holds one NearwatchAnomalousRecords alert per key, with the same count
    query = urllib.parse.quote(f'alertname="{RECORD_ALERT}"')

    def record_alerts() -> list[dict[str, Any]]:
        answer = _get_json(f"{alertmanager}/api/v2/alerts?filter={query}") or []
        return [a for a in answer if a["labels"].get("record_service") in expected]

    held = wait_for(lambda: len(record_alerts()) >= len(expected) and record_alerts(), 10,
                    "the record alerts in alertmanager")
    assert {a["labels"]["record_service"]: int(a["annotations"]["count"]) for a in held} \
        == dict(expected)
    assert all(a["labels"]["model_version"] == version and a["status"]["state"] == "active"
               for a in held)
    # and its shipped route (group_by '...': one group per key) delivers each to the receiver
    routed = wait_for(lambda: {a["labels"].get("record_service") for p, a in
                               receiver.alerts(RECORD_ALERT)} >= set(expected), 15,
                      "alertmanager to route the record alerts to the webhook")
    assert routed
    assert {p for p, _ in receiver.alerts(RECORD_ALERT)} == {"/warning"}
