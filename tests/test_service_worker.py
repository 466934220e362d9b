"""Real worker nodes on real Redis: bad records, kill -9, hot reload.

Every test streams through `nearwatch worker` subprocesses started here (prefork pools; one
test runs a node of scoring processes, `--pool processes`, worker/node.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service_fixtures import (
    CLI,
    Proc,
    WorkerNode,
    http_get,
    metric_value,
    read_jsonl,
    scoring_client,
    service_env,
    start_worker_node,
    stream_records_for_test,
    wait_broker_idle,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow


def test_bad_records_are_answered_and_dead_lettered(node: WorkerNode, redis_client: Any) -> None:
    for key in redis_client.scan_iter("nearwatch:deadletter*"):
        redis_client.delete(key)
    records: list[Any] = stream_records_for_test(40, prefix="bad")
    records[3] = dict(records[3], latency_ms="fast")
    records[9] = dict(records[9], bytes_out=[1, 2])
    records[20] = "just a string"
    client = scoring_client(node, batch_size=40)
    (results,) = list(client.score_batches([records]))
    assert [r["id"] for r in results] == [
        r["id"] if isinstance(r, dict) else None for r in records]
    errors = {i: r["error"] for i, r in enumerate(results) if "error" in r}
    assert sorted(errors) == [3, 9, 20]
    assert "latency_ms" in errors[3] and "bytes_out" in errors[9]
    assert "not a JSON object" in errors[20]
    assert all(r["model_version"].startswith("v") for r in results if "error" not in r)
    letters = redis_client.xrange("nearwatch:deadletter")
    assert sorted(json.loads(f[b"id"]) or "" for _, f in letters) == ["", "badr0000003",
                                                                        "badr0000009"]
    # the same records sent again are new bad records: same answers, dead-lettered again
    # (a broker redelivery of the same task is not: test_service_unit)
    (again,) = list(client.score_batches([records]))
    assert [r.get("error") for r in again] == [r.get("error") for r in results]
    assert redis_client.xlen("nearwatch:deadletter") == 6


def test_records_the_producer_refuses_are_dead_lettered_with_their_reason(
        node: WorkerNode, redis_client: Any) -> None:
    """The client answers what it cannot send; a worker still writes its dead letter, with
    the producer's reason and the start of the record, and counts it (worker/refusals.py)."""
    import numpy as np
    from nearwatch.worker.settings import RecordLimits

    for key in redis_client.scan_iter("nearwatch:deadletter*"):
        redis_client.delete(key)

    def errors(reason: str) -> float:
        text = http_get(node.metrics_url) or ""
        return metric_value(text, "nearwatch_record_errors_total", f'reason="{reason}"')

    before = {reason: errors(reason) for reason in ("invalid_json", "too_large")}
    good = stream_records_for_test(2, prefix="ok")
    mixed = [good[0], dict(good[1], id="np", load=np.float32(1.5)),
             {"id": "big", "note": "a" * 5000}]
    alone = [{"id": "alone", "load": np.int64(3)}]  # a batch with nothing a worker can score
    client = scoring_client(node, limits=RecordLimits(max_bytes=4096))
    first, second = list(client.score_batches([mixed, alone]))
    assert "score" in first[0] and [r["id"] for r in first + second] == [
        good[0]["id"], "np", "big", "alone"]
    assert "field 'load': a float32 is not a JSON value" in first[1]["error"]
    assert "numpy" in first[1]["error"] and "size limit of 4096 bytes" in first[2]["error"]
    assert "field 'load': a int64" in second[0]["error"]
    letters = wait_for(lambda: redis_client.xrange("nearwatch:deadletter")
                       if redis_client.xlen("nearwatch:deadletter") >= 3 else None,
                       30, "the dead letters of the refused records")
    by_id = {json.loads(f[b"id"]): f for _, f in letters}
    assert sorted(by_id) == ["alone", "big", "np"]
    assert {k: by_id[k][b"reason"].decode() for k in by_id} == {
        "np": "invalid_json", "alone": "invalid_json", "big": "too_large"}
    assert by_id["np"][b"error"].decode() == first[1]["error"]
    assert b"float32" in by_id["np"][b"record"] and b"'np'" in by_id["np"][b"record"]
    assert by_id["big"][b"record"].startswith(b"{'id': 'big'")
    assert len(by_id["big"][b"record"]) < 1100  # an excerpt, not the 5 kB record
    wait_for(lambda: errors("invalid_json") >= before["invalid_json"] + 2, 10,
             "the refusals counted as invalid_json")
    assert errors("too_large") == before["too_large"] + 1


def test_fields_the_model_does_not_know_are_scored_without_and_counted(
        node: WorkerNode) -> None:
    """An unknown field is ignored, not refused (the record is scored on what the model
    knows), and counted on /metrics: a producer's new or renamed field must show somewhere."""

    def unknown() -> float:
        return metric_value(http_get(node.metrics_url) or "", "nearwatch_unknown_fields_total")

    before = unknown()
    records = stream_records_for_test(6, prefix="newfield")
    sent = [dict(r, region_v2="eu", sampled=True) if i % 2 else r
            for i, r in enumerate(records)]
    (results,) = list(scoring_client(node, batch_size=10).score_batches([sent]))
    plain = list(scoring_client(node, batch_size=10).score_batches([records]))[0]
    assert [r["score"] for r in results] == [r["score"] for r in plain]  # scored without them
    wait_for(lambda: unknown() == before + 6, 10, "the 6 unknown fields counted")


def test_a_field_every_training_record_had_is_counted_when_missing(node: WorkerNode) -> None:
    """Scored as if it held a typical value (no missing-indicator column), so a producer that
    stops sending it would hide its anomalies: counted per field on /metrics. A field that
    training had missing (``cache_hit``: it has an indicator) is not counted."""

    def missing(field: str) -> float:
        return metric_value(http_get(node.metrics_url) or "", "nearwatch_missing_fields_total",
                            f'field="{field}"')

    before = missing("latency_ms"), missing("cache_hit")
    records = stream_records_for_test(6, prefix="nolatency")
    sent = [dict(r, latency_ms=None, cache_hit=None) if i % 2 else
            {k: v for k, v in r.items() if k != "latency_ms"} for i, r in enumerate(records)]
    (results,) = list(scoring_client(node, batch_size=10).score_batches([sent]))
    assert all("score" in r for r in results)  # scored, not refused
    wait_for(lambda: missing("latency_ms") == before[0] + 6, 10, "6 records without latency_ms")
    assert missing("cache_hit") == before[1]


def test_a_category_no_training_record_had_is_counted_per_field(node: WorkerNode) -> None:
    """Counted on /metrics, so a producer that changes a field's vocabulary shows as such and
    not only as anomalies; a known value of another field is not counted."""

    def unseen(field: str) -> float:
        return metric_value(http_get(node.metrics_url) or "",
                            "nearwatch_unseen_categories_total", f'field="{field}"')

    before = unseen("region"), unseen("service")
    records = stream_records_for_test(5, prefix="mars")
    sent = [dict(r, region="mars-north") for r in records]
    (results,) = list(scoring_client(node, batch_size=10).score_batches([sent]))
    plain = list(scoring_client(node, batch_size=10).score_batches([records]))[0]
    assert all(r["score"] > p["score"] for r, p in zip(results, plain, strict=True))
    wait_for(lambda: unseen("region") == before[0] + 5, 10, "5 unseen regions counted")
    assert unseen("service") == before[1]


def _stream_proc(tmp_path: Path, node: WorkerNode, n: int, batch: int, timeout: float
                 ) -> tuple[Proc, list[dict[str, Any]], Path]:
    records = stream_records_for_test(n, seed=11, prefix="k")
    data = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    env = service_env(node.settings.model_dir, NEARWATCH_BATCH_TIMEOUT=str(timeout),
                      NEARWATCH_MAX_IN_FLIGHT="6")
    proc = Proc([*CLI, "stream", "--data", str(data), "--batch", str(batch), "--out", str(out)],
                env, tmp_path / "stream.log")
    return proc, records, out


def _assert_exactly_once(proc: Proc, records: list[dict[str, Any]], out: Path) -> None:
    assert proc.process.wait(180) == 0, proc.log()[-3000:]
    results = read_jsonl(out)
    assert [r["id"] for r in results] == [r["id"] for r in records]  # once each, in order
    assert not [r for r in results if "error" in r]
    assert "0 unanswered" in proc.log()


def _scored(node: WorkerNode) -> float:
    return metric_value(http_get(node.metrics_url) or "", "nearwatch_records_scored_total")


def test_kill9_pool_child_mid_batch_loses_nothing(node: WorkerNode, tmp_path: Path) -> None:
    before = _scored(node)
    log_start = len(node.proc.log())
    # Batches of 2 000 keep the pool busy (each takes a pool process well over 0.1 s, and the
    # client sends them faster than the node scores them), so a kill lands mid-batch.
    batch = 2000
    proc, records, out = _stream_proc(tmp_path, node, n=80000, batch=batch, timeout=60)
    kills = 0
    try:
        wait_for(lambda: _scored(node) >= before + 1000, 60, "the stream to get going")
        # Kill a pool process while it is scoring a batch; retry in case it was between
        # batches. Its broker message is then requeued and scored again.
        while "WorkerLostError" not in node.proc.log()[log_start:] and kills < 10 \
                and proc.process.poll() is None:
            busy = _busy_child(node)
            if busy is not None:
                os.kill(busy, signal.SIGKILL)
                kills += 1
                time.sleep(0.3)
        _assert_exactly_once(proc, records, out)
    finally:
        proc.stop()
    log = node.proc.log()[log_start:]
    print(f"{kills} kill(s) of a pool process")
    assert "WorkerLostError" in log, f"no kill landed mid-batch in {kills} tries"
    received = len(re.findall(r"Task nearwatch\.score_json_batch\[[^]]+\] received", log))
    assert received > len(records) // batch  # the lost batch was delivered again
    wait_for(lambda: len(node.proc.children()) == 2, 30, "the pool to replace its processes")


def _cpu_ticks(pid: int) -> tuple[int, float] | None:
    """CPU time (user + system, in clock ticks) and start time (s after boot) of ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12]), int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _busy_child(node: WorkerNode, timeout: float = 5.0, min_age: float = 3.0,
                window: float = 0.1) -> int | None:
    """A pool process that spent at least 30 % of the last ``window`` s on a CPU, i.e. is
    scoring a batch (an idle one waits on its pipe and spends none); not one started less
    than ``min_age`` s ago (it is loading the model, not scoring)."""
    deadline = time.monotonic() + timeout
    least = 0.3 * window * os.sysconf("SC_CLK_TCK")
    while time.monotonic() < deadline:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        first = {pid: _cpu_ticks(pid) for pid in node.proc.children()}
        time.sleep(window)
        for pid, start in first.items():
            now = _cpu_ticks(pid)
            if start is not None and now is not None and uptime - start[1] >= min_age \
                    and now[0] - start[0] >= least:
                return pid
    return None


def _running_child(node: WorkerNode, timeout: float = 2.0, min_age: float = 3.0
                   ) -> int | None:
    """A pool process that is on a CPU right now (state R), i.e. scoring a batch; not one
    started less than ``min_age`` s ago (it is loading the model, not scoring)."""
    deadline = time.monotonic() + timeout
    ticks = os.sysconf("SC_CLK_TCK")
    while time.monotonic() < deadline:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        for pid in node.proc.children():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "R" and uptime - int(fields[19]) / ticks >= min_age:
                return pid
        time.sleep(0.005)
    return None


def test_kill9_whole_node_mid_stream_loses_nothing(node: WorkerNode, tmp_path: Path,
                                                   redis_client: Any) -> None:
    other = start_worker_node(tmp_path, node.settings.model_dir, "victim", concurrency=1)
    before = _scored(other)
    proc, records, out = _stream_proc(tmp_path, node, n=8000, batch=20, timeout=4)
    try:
        wait_for(lambda: _scored(other) >= before + 200, 60, "the second node to score")
        _running_child(other, min_age=0.0)  # best effort: catch it mid-batch
        os.killpg(other.proc.pid, signal.SIGKILL)  # parent and pool, no warm shutdown
        assert proc.process.poll() is None, "the stream ended before the kill"
        # its unacknowledged batches come back after the visibility timeout, and the client
        # resubmits after its batch timeout: both may answer, the output has each record once
        _assert_exactly_once(proc, records, out)
        # the dead node's batch comes back after the visibility timeout (8 s here) and is
        # scored again by the live node; its answer is ignored (the batch was resubmitted)
        started = time.monotonic()
        wait_broker_idle(redis_client)
        print(f"unacked batches restored after {time.monotonic() - started:.1f} s")
    finally:
        proc.stop()
        other.proc.stop()


def test_an_idle_node_follows_a_promotion_without_a_batch(
        tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    """Every scoring process loads a promoted model while idle (``ModelHolder.watch``), so
    /metrics tells what is served before traffic comes: an idle worker used to report the
    old version (and its threshold, its certification) until its next batch."""
    from nearwatch.detector.store.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    first = registry.add(bundles[0], promote=True)
    idle = start_worker_node(tmp_path, registry.root, "idle", concurrency=2)
    try:
        children = sorted(idle.proc.children())
        second = registry.add(bundles[1], promote=True)
        wait_for(lambda: {int(pid) for pid in re.findall(
            rf"serving model {second} \(was {first}\) in process (\d+)", idle.proc.log())}
            == set(children), 30, f"both idle processes to load {second}")
        text = http_get(idle.metrics_url) or ""
        assert metric_value(text, "nearwatch_model_info", f'version="{second}"') == 1
        assert metric_value(text, "nearwatch_model_info", f'version="{first}"') == 0
        assert metric_value(text, "nearwatch_records_scored_total") == 0  # no batch did it
    finally:
        idle.proc.stop()


def test_hot_reload_mid_stream(node: WorkerNode, node_registry: Any,
                               bundles: tuple[Path, Path]) -> None:
    pool_before = sorted(node.proc.children())
    current = node_registry.current_version()
    client = scoring_client(node, batch_size=20, max_in_flight=2)
    records = stream_records_for_test(1200, seed=21, prefix="h")
    chunks = [records[i:i + 20] for i in range(0, len(records), 20)]
    promoted: list[str] = []

    def batches() -> Any:
        for i, chunk in enumerate(chunks):
            if i == 10:
                promoted.append(node_registry.add(bundles[1], promote=True))
            time.sleep(0.03)  # ~2 s of stream: the reload happens while batches are in flight
            yield chunk

    versions = []
    for chunk, results in zip(chunks, client.score_batches(batches()), strict=True):
        assert [r["id"] for r in results] == [r["id"] for r in chunk]
        assert not [r for r in results if "error" in r]
        versions.append({r["model_version"] for r in results})
    assert all(len(v) == 1 for v in versions)  # a batch is scored by one model
    sequence = [v.pop() for v in versions]
    # each pool process switches at its next pointer check (every 0.3 s here), so the two
    # versions may interleave briefly; the stream then ends on the new version
    assert sequence[0] == current and set(sequence) == {current, promoted[0]}
    assert set(sequence[-10:]) == {promoted[0]}

    # every pool process switches at its next batch (a process that was idle so far, too)
    probe = scoring_client(node, batch_size=5, max_in_flight=4)

    def all_switched() -> bool:
        list(probe.score(records[:40]))
        return node.proc.log().count(f"serving model {promoted[0]} (was") >= 2

    wait_for(all_switched, 30, "both pool processes to load the new model", interval=0.3)

    # a version failing verification is refused; the workers keep serving the old one. The
    # refused series reads 0 before (a series born at 1 is no increase: the alert missed it)
    before = http_get(node.metrics_url) or ""
    assert re.search(r'nearwatch_model_reloads_total\{[^}]*outcome="refused"[^}]*\} 0\.0',
                     before), before[:3000]
    bad = node_registry.add(bundles[0])
    (node_registry.path(bad) / "reference_ids.json").write_text("[]")
    (node_registry.root / "CURRENT").write_text(bad + "\n")
    try:
        time.sleep(1.0)
        served = set()
        for results in client.score_batches(chunks[:10]):
            served |= {r["model_version"] for r in results}
        assert served == {promoted[0]}
        text = http_get(node.metrics_url) or ""
        assert metric_value(text, "nearwatch_model_reloads_total", 'outcome="refused"') >= 1
        assert f'version="{promoted[0]}"' in text
    finally:
        node_registry.promote(promoted[0])
    assert sorted(node.proc.children()) == pool_before  # no restart


def test_scoring_processes_node_serves_replaces_and_stops(tmp_path: Path,
                                                         node_registry: Any) -> None:
    """`--pool processes`: N solo-pool workers under a supervisor (worker/node.py) answer
    exactly once, a killed process is replaced (its batch, if it held one, requeued), and
    SIGTERM stops the node cleanly."""
    node = start_worker_node(tmp_path, node_registry.root, "processes", pool="processes")
    try:
        children = node.proc.children()
        assert len(children) == 2
        client = scoring_client(node, batch_size=50, max_in_flight=4)
        records = stream_records_for_test(600, seed=41, prefix="p")
        results = list(client.score(records))
        assert [r["id"] for r in results] == [r["id"] for r in records]
        assert not [r for r in results if "error" in r]
        os.kill(children[0], signal.SIGKILL)
        wait_for(lambda: len(node.proc.children()) == 2
                 and children[0] not in node.proc.children(), 30,
                 "the supervisor to replace the killed process")
        assert f"scoring process {children[0]} died (signal SIGKILL)" in node.proc.log()
        again = list(client.score(records[:200]))
        assert [r["id"] for r in again] == [r["id"] for r in records[:200]]
    finally:
        status = node.proc.stop()
    assert status == 0, node.proc.log()[-2000:]
    assert "stopping 2 scoring processes (SIGTERM)" in node.proc.log()
