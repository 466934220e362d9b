"""Issue 7 end to end: a real worker node, a real `nearwatch beat` node, real Redis.

A short schedule fires while records stream; retraining promotes; the workers switch to the
new version without a restart and every record is answered exactly once; `models rollback`
brings every pool process back to the previous version; a shifted stream raises the drift
signal and triggers a retraining while a stationary one does not; a retraining process
killed mid-way leaves the registry consistent and the champion serving.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nearwatch.detector import Detector
from nearwatch.detector.store.registry import ModelRegistry
from nearwatch.detector.synthetic import LABEL_FIELD, generate_records
from nearwatch.scheduler.lease import LEASE_KEY
from nearwatch.worker.app import create_app
from nearwatch.worker.client import ClientOptions, ScoringClient
from nearwatch.worker.names import FEEDBACK, MAINTENANCE_QUEUE
from nearwatch.worker.settings import Settings

from tests.service_fixtures import (
    CLI,
    REPO,
    Proc,
    flushed_redis,
    free_port,
    http_get,
    metric_value,
    service_env,
    start_worker_node,
    wait_for,
)

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/7"


@pytest.fixture
def redis_client() -> Iterator[Any]:
    yield from flushed_redis(REDIS_URL)


def loop_env(model_dir: Path, **extra: str) -> dict[str, str]:
    settings = {"NEARWATCH_BROKER_URL": REDIS_URL, "NEARWATCH_REDIS_URL": REDIS_URL,
                "NEARWATCH_BUFFER_BUCKETS": "1", "NEARWATCH_BUFFER_RECORDS": "20000",
                "NEARWATCH_RETRAIN_MIN_RECORDS": "1500", "NEARWATCH_DRIFT_CHECK_S": "1",
                "NEARWATCH_DRIFT_WINDOW": "500", "NEARWATCH_ALERTS": "0",
                "NEARWATCH_BEAT_METRICS_PORT": str(free_port())}
    settings.update(extra)
    return service_env(model_dir, **settings)


def champion(tmp_path: Path) -> ModelRegistry:
    Detector(label_fields=(LABEL_FIELD,), encoder="identity").fit(
        generate_records(3000, anomaly_rate=0.0, seed=1)).save(tmp_path / "champion")
    registry = ModelRegistry(tmp_path / "models")
    registry.add(tmp_path / "champion", promote=True)
    return registry


def client_for(env: dict[str, str]) -> ScoringClient:
    return ScoringClient(create_app(Settings.from_env(env)),
                         ClientOptions(batch_size=100, max_in_flight=4, batch_timeout=30.0))


def paced(records: list[dict[str, Any]], per_second: float) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(records), 100):
        yield records[start:start + 100]
        time.sleep(100 / per_second)


def serving_by_process(log: str) -> dict[int, str]:
    """The model each scoring process (by pid) loaded last, from the worker log."""
    serving = {}
    for version, pid in re.findall(r"serving model (v\d+) \(was [^)]*\) in process (\d+)", log):
        serving[int(pid)] = version
    return serving


def answered_exactly_once(records: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    counts = Counter(r["id"] for r in results)
    assert set(counts) == {r["id"] for r in records}
    assert max(counts.values()) == 1
    assert not [r for r in results if "error" in r]


def test_schedule_promotes_workers_switch_without_loss_and_rollback_reaches_every_worker(
        tmp_path: Path, redis_client: Any) -> None:
    registry = champion(tmp_path)
    env = loop_env(registry.root, NEARWATCH_RETRAIN_SCHEDULE="4")
    node = start_worker_node(tmp_path, registry.root, "loop", concurrency=2, **env)
    beat = Proc([*CLI, "beat"], env, tmp_path / "beat.log")
    try:
        client = client_for(env)
        warmup = generate_records(2000, anomaly_rate=0.0, seed=2)
        assert {r["model_version"] for r in client.score(warmup)} == {"v0001"}
        records = generate_records(9000, anomaly_rate=0.01, seed=3)
        results = [r for batch in client.score_batches(paced(records, 600)) for r in batch]
        answered_exactly_once(records, results)
        versions = [r["model_version"] for r in results]
        assert len(set(versions)) >= 2, f"no promotion while streaming:\n{beat.log()[-3000:]}"
        # (the schedule keeps running: the current version may have moved on since)
        assert versions[-1] != "v0001" and str(registry.current_version()) >= versions[-1]
        decision = registry.decision(versions[-1])
        assert decision is not None and decision["outcome"] == "promoted"
        assert decision["trigger"] == "schedule"
        url = f"http://127.0.0.1:{env['NEARWATCH_BEAT_METRICS_PORT']}/metrics"
        metrics = wait_for(lambda: http_get(url), 10, "beat metrics")
        assert metric_value(metrics, "nearwatch_retrain_total", 'outcome="promoted"') >= 1
        # the buffer outlives promotions: keyed by the record fields, not the fitted schema
        assert metric_value(metrics, "nearwatch_reference_buffer_records") > 1500
        assert 0 <= metric_value(metrics, "nearwatch_model_age_seconds") < 120
        assert metric_value(metrics, "nearwatch_scheduler_redis_up") == 1
        # programmatic feedback: the task runs on the maintenance node
        answer = create_app(Settings.from_env(env)).send_task(
            FEEDBACK, args=[records[5]["id"], "normal", None],
            queue=MAINTENANCE_QUEUE).get(timeout=30)
        assert answer == {"id": records[5]["id"], "label": "normal", "source": "buffer"}
        assert beat.stop() == 0, beat.log()[-2000:]

        current = registry.current_version()
        history = [h["version"] for h in registry.history()]
        rolled = subprocess.run([*CLI, "models", "rollback"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert rolled.returncode == 0, rolled.stderr
        previous = history[history.index(str(current)) - 1]
        assert registry.current_version() == previous
        time.sleep(1.0)  # > NEARWATCH_RELOAD_INTERVAL (0.3 s) in every pool process
        after = list(client.score(generate_records(1000, anomaly_rate=0.0, seed=4)))
        assert {r["model_version"] for r in after} == {previous}
        processes = node.proc.children()
        assert len(processes) == 2
        serving = serving_by_process(node.proc.log())
        assert {pid: serving.get(pid) for pid in processes} == dict.fromkeys(processes, previous)
    finally:
        beat.stop()
        node.proc.stop()


def test_drift_triggers_a_retraining_and_a_stationary_stream_does_not(
        tmp_path: Path, redis_client: Any) -> None:
    registry = champion(tmp_path)
    # no schedule: retraining by hand and on drift only; the first drift window is the baseline
    env = loop_env(registry.root, NEARWATCH_DRIFT_BASELINE_WINDOWS="1")
    node = start_worker_node(tmp_path, registry.root, "drift", concurrency=1, **env)
    beat = Proc([*CLI, "beat"], env, tmp_path / "beat.log")
    url = f"http://127.0.0.1:{env['NEARWATCH_BEAT_METRICS_PORT']}/metrics"
    try:
        client = client_for(env)
        stationary = generate_records(5000, anomaly_rate=0.0, seed=5)
        list(client.score_batches(paced(stationary, 2500)))
        time.sleep(2.5)  # > two drift checks
        metrics = wait_for(lambda: http_get(url), 10, "beat metrics")
        assert metric_value(metrics, "nearwatch_drift_alarms_total") == 0
        assert redis_client.get("nearwatch:retrain:last") is None
        # the traffic shifts: every request reports three times its load
        shifted = [{**r, "load": r["load"] * 3}
                   for r in generate_records(3000, anomaly_rate=0.0, seed=6)]
        list(client.score_batches(paced(shifted, 2500)))

        def retrained_on_drift() -> bool:
            last = redis_client.get("nearwatch:retrain:last")
            return last is not None and json.loads(last)["trigger"] == "drift"

        wait_for(retrained_on_drift, 60, f"a drift retraining:\n{beat.log()[-3000:]}")
        metrics = wait_for(lambda: http_get(url), 10, "beat metrics")
        assert metric_value(metrics, "nearwatch_drift_alarms_total") >= 1
        assert "drift on model v0001" in beat.log()
    finally:
        beat.stop()
        node.proc.stop()


def test_killing_a_retraining_mid_way_leaves_the_champion_serving(
        tmp_path: Path, redis_client: Any) -> None:
    # A learned encoder makes the fit long enough to be killed in the middle of it.
    Detector(label_fields=(LABEL_FIELD,)).fit(
        generate_records(3000, anomaly_rate=0.0, seed=1)).save(tmp_path / "champion")
    registry = ModelRegistry(tmp_path / "models")
    registry.add(tmp_path / "champion", promote=True)
    # long enough for the second command to start while the dead run's lock holds
    env = loop_env(registry.root, NEARWATCH_RETRAIN_LOCK_TTL_S="15")
    node = start_worker_node(tmp_path, registry.root, "kill", concurrency=1, **env)
    try:
        list(client_for(env).score(generate_records(6000, anomaly_rate=0.0, seed=2)))
        retrain = Proc([*CLI, "retrain"], env, tmp_path / "retrain.log")
        wait_for(lambda: redis_client.get("nearwatch:retrain:lock") is not None, 60,
                 "the retraining to take its lock")
        time.sleep(1.0)  # inside the fit
        retrain.process.send_signal(signal.SIGKILL)
        retrain.process.wait(10)
        assert registry.versions() == ["v0001"] and registry.current_version() == "v0001"
        assert not [p for p in registry.root.iterdir() if p.name.startswith(".adding")]
        blocked = subprocess.run([*CLI, "retrain"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert json.loads(blocked.stdout)["outcome"] == "skipped", blocked.stdout  # its lock
        wait_for(lambda: redis_client.get("nearwatch:retrain:lock") is None, 30,
                 "the dead run's lock to expire (NEARWATCH_RETRAIN_LOCK_TTL_S)")
        done = subprocess.run([*CLI, "retrain"], cwd=REPO, capture_output=True, text=True,
                              env={**env, "NEARWATCH_RETRAIN_LOCK_TTL_S": "600"}, timeout=180)
        assert json.loads(done.stdout)["outcome"] == "promoted", done.stdout + done.stderr
        assert registry.current_version() == "v0002"
    finally:
        node.proc.stop()


def test_a_second_beat_process_refuses_to_start_naming_the_first(
        tmp_path: Path, redis_client: Any) -> None:
    """Exactly one beat (scheduler/lease.py): a second one waits out a lease that a killed
    beat could have left, then refuses, naming the live one; a beat whose lease another takes
    stops with exit 1; a clean stop releases it."""
    registry = champion(tmp_path)
    env = loop_env(registry.root, NEARWATCH_BEAT_LEASE_TTL_S="2")
    first = Proc([*CLI, "beat"], env, tmp_path / "beat-1.log")
    try:
        wait_for(lambda: "ready." in first.log(), 60, f"the first beat ({first.log_path})")
        second = subprocess.run([*CLI, "beat"], env=loop_env(registry.root,
                                NEARWATCH_BEAT_LEASE_TTL_S="2"), cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr[-2000:]
        assert f"another nearwatch beat holds {LEASE_KEY}" in second.stderr
        assert f"pid {first.process.pid} " in second.stderr and "Traceback" not in second.stderr
    finally:
        assert first.stop() == 0, first.log()[-2000:]
    assert redis_client.get(LEASE_KEY) is None  # a clean stop releases it
    third = Proc([*CLI, "beat"], env, tmp_path / "beat-3.log")
    try:
        wait_for(lambda: "ready." in third.log(), 60, f"the third beat ({third.log_path})")
        redis_client.set(LEASE_KEY, "intruder")  # another beat took it
        assert third.process.wait(30) == 1, third.log()[-2000:]
        assert "taken by another beat (intruder)" in third.log()
    finally:
        third.stop()


def test_a_beat_process_left_behind_by_a_killed_node_exits(
        tmp_path: Path, redis_client: Any) -> None:
    """`kill -9` of the node's main process leaves Celery's forked beat process behind; once
    the lease has expired it sends nothing and exits at its next due entry."""
    registry = champion(tmp_path)
    env = loop_env(registry.root, NEARWATCH_BEAT_LEASE_TTL_S="2")  # drift check every 1 s
    beat = Proc([*CLI, "beat"], env, tmp_path / "beat.log")
    try:
        wait_for(lambda: "ready." in beat.log(), 60, f"the beat ({beat.log_path})")
        (child,) = wait_for(lambda: beat.children() or None, 30, "the beat's forked process")
        beat.process.kill()  # the main process only
        beat.process.wait(10)

        def gone() -> bool:
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return True
            return state in ("Z", "X")

        wait_for(gone, 30, f"the orphaned beat process {child} to exit ({beat.log_path})")
        assert "the node of this beat process is gone" in beat.log()
    finally:
        beat.stop()
