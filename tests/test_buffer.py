"""The reference buffer (worker/reference_buffer.py, scheduler/buffer.py) against a real Redis."""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from nearwatch.scheduler.buffer import (
    buffer_size,
    golden_records,
    golden_size,
    pin_golden,
    read_buffer,
)
from nearwatch.worker.reference_buffer import (
    BufferWriter,
    bucket_capacity,
    bucket_of,
    record_schema,
)
from nearwatch.worker.settings_sections import BufferSettings
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.service_fixtures import flushed_redis, free_port

BUFFER_DB = "redis://127.0.0.1:6379/10"
T0 = 1_700_000_100.0  # a bucket boundary for window_s=3600, buckets=4 (bucket_s=900)


class CountingConnection(redis.Connection):
    """Counts what is sent to the server: one call per round trip (a pipeline is one)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


class FakeCounter:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


@pytest.fixture()
def client() -> Iterator[Any]:
    yield from flushed_redis(BUFFER_DB)


@pytest.fixture(scope="module")
def scored() -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    from nearwatch.detector import Detector
    from nearwatch.detector.synthetic import LABEL_FIELD, generate_records

    detector = Detector(label_fields=(LABEL_FIELD,), encoder="identity").fit(
        generate_records(1500, anomaly_rate=0.0, seed=1))
    records = generate_records(300, anomaly_rate=0.1, seed=2)
    results = detector.score_records(records, 3)
    for result in results:
        result.pop("index")
    assert sum(r["is_anomaly"] for r in results) >= 3
    return detector, records, results


def fake_batch(ids: range) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records = [{"id": i, "service": "api", "latency_ms": 1.5} for i in ids]
    results = [{"id": i, "score": 1.0, "p_value": 0.5, "is_anomaly": False} for i in ids]
    return records, results


def model(schema: str = "s1", bound: float | None = 0.01) -> Any:
    encoder = SimpleNamespace(fields_=[{"name": schema, "kind": "numeric"}])
    return SimpleNamespace(feature_encoder_=encoder, fpr_bound_=bound)


S1 = record_schema(model())  # the buffer key of the default fake model


def settings(**changes: Any) -> BufferSettings:
    values: dict[str, Any] = {"capacity": 400, "max_bytes": 1 << 20, "window_s": 3600.0,
                              "buckets": 4}
    values.update(changes)
    return BufferSettings(**values)


def test_one_batch_is_one_round_trip(scored: Any) -> None:
    detector, records, results = scored
    pool = redis.ConnectionPool.from_url(BUFFER_DB, connection_class=CountingConnection)
    counted = redis.Redis(connection_pool=pool)
    try:
        counted.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379 (make services)")
    counted.flushdb()
    try:
        writer = BufferWriter(counted, settings())
        writer.write(detector, "v1", records, results, now=T0)  # loads the script once
        before = CountingConnection.sent
        assert writer.write(detector, "v1", records, results, now=T0) == len(records)
        assert CountingConnection.sent - before == 1
        assert writer.write(detector, "v1", [], [], now=T0) == 0
        assert CountingConnection.sent - before == 1  # an empty batch costs nothing
    finally:
        counted.flushdb()
        counted.close()


def test_entries_carry_p_values_flagged_records_too(client: Any, scored: Any) -> None:
    detector, records, results = scored
    refused = [{"id": "bad", "error": "field latency_ms: not a number"}]
    limits = settings(capacity=1600)
    assert BufferWriter(client, limits).write(
        detector, "v7", [*records, {"id": "bad"}], [*results, *refused], now=T0) == 300
    entries = read_buffer(client, record_schema(detector), limits, now=T0)
    assert buffer_size(client, record_schema(detector), limits, now=T0) == 300
    by_id = {e.record_id: e for e in entries}
    assert set(by_id) == {r["id"] for r in results}
    for record, result in zip(records, results, strict=True):
        entry = by_id[result["id"]]
        assert (entry.p_value, entry.record, entry.time, entry.model_version) == (
            result["p_value"], record, T0, "v7")
    assert min(by_id[r["id"]].p_value for r in results if r["is_anomaly"]) < 0.01


def test_bounded_in_records_and_bytes(client: Any) -> None:
    rng = random.Random(3)
    for limits, bound in ((settings(capacity=40, max_bytes=1 << 20), "records"),
                          (settings(capacity=4000, max_bytes=4 * 2_000), "bytes")):
        client.flushdb()
        writer = BufferWriter(client, limits, rng=random.Random(1))
        cap, budget = bucket_capacity(limits)
        for batch in range(30):
            records, results = fake_batch(range(batch * 50, batch * 50 + 50))
            for record in records:  # sizes vary, so replacements change the byte count
                record["pad"] = "x" * rng.randrange(0, 120)
            writer.write(model(), "v1", records, results, now=T0 + batch)
        key = f"nearwatch:buffer:{S1}:{bucket_of(T0, limits)}"
        values = client.lrange(key, 0, -1)
        meta = client.hgetall(f"{key}:meta")
        assert len(values) <= cap and sum(map(len, values)) <= budget, bound
        assert int(meta[b"bytes"]) == sum(map(len, values)) and int(meta[b"seen"]) == 1500
        if bound == "records":
            assert len(values) == cap
        else:
            assert sum(map(len, values)) > budget - 300 and len(values) < cap


def test_the_reservoir_is_uniform_over_the_bucket(client: Any) -> None:
    limits = settings(capacity=200, buckets=1)
    writer = BufferWriter(client, limits, rng=random.Random(11))
    for batch in range(20):
        writer.write(model(), "v1", *fake_batch(range(batch * 100, batch * 100 + 100)),
                     now=T0 + batch)
    kept = [e.record_id for e in read_buffer(client, S1, limits, now=T0 + 20)]
    assert len(kept) == 200 and len(set(kept)) == 200
    # Uniform over 0..1999: the mean of 200 kept positions is 999.5 +- 39 (1 sd).
    assert abs(statistics.mean(kept) - 999.5) < 120
    early = sum(1 for i in kept if i < 500)  # first 5 batches: 50 expected
    late = sum(1 for i in kept if i >= 1500)  # last 5 batches: 50 expected
    assert 25 <= early <= 75 and 25 <= late <= 75


def test_oversized_records_are_skipped(client: Any) -> None:
    limits = settings(max_record_bytes=300)
    records, results = fake_batch(range(10))
    for record in records[:3]:
        record["blob"] = "y" * 400
    # offered (and counted by the reservoir), but never kept
    assert BufferWriter(client, limits).write(model(), "v1", records, results, now=T0) == 10
    kept = sorted(e.record_id for e in read_buffer(client, S1, limits, now=T0))
    assert kept == list(range(3, 10))


def test_a_full_bucket_is_not_sent_the_records_it_would_reject(client: Any) -> None:
    """Once a bucket holds its capacity and has seen n records, a record enters with
    probability cap / n; the writer drops the others before serialising them, using the
    count it last read (never above the true one), so the sample stays Algorithm R's."""
    limits = settings(capacity=400, buckets=4)  # 100 per bucket
    writer = BufferWriter(client, limits, rng=random.Random(5))
    sent: list[int] = []
    script = writer._script

    def counting(keys: list[str], args: list[Any]) -> Any:
        sent.append((len(args) - 11) // 3)  # after the 11 head arguments
        return script(keys=keys, args=args)

    writer._script = counting  # type: ignore[assignment]
    for start in range(0, 10_000, 500):
        writer.write(model(), "v1", *fake_batch(range(start, start + 500)), now=T0)
    # the first batch: the first 100 fill the bucket, then about 100 * ln(500 / 100) more
    assert 200 <= sent[0] <= 330
    # the last batch: records 9500..9999 of a 100-record reservoir, about 100 * ln(10000/9500)
    assert sent[-1] <= 20
    meta = client.hgetall(f"nearwatch:buffer:{S1}:{bucket_of(T0, limits)}:meta")
    assert int(meta[b"seen"]) == 10_000


def test_window_buckets_and_expiry(client: Any) -> None:
    limits = settings()  # window 3600 s in 4 buckets of 900 s
    writer = BufferWriter(client, limits)
    writer.write(model(), "v1", *fake_batch(range(0, 5)), now=T0)
    writer.write(model(), "v1", *fake_batch(range(5, 8)), now=T0 + 900)
    assert buffer_size(client, S1, limits, now=T0 + 900) == 8
    late = T0 + 3600 - 1  # T0's bucket is the oldest of the window still
    assert len(read_buffer(client, S1, limits, now=late)) == 8
    later = T0 + 3600  # T0's bucket has left the window (its key lives on a little)
    assert sorted(e.record_id for e in read_buffer(client, S1, limits, now=later)) == [5, 6, 7]
    assert buffer_size(client, S1, limits, now=later) == 3
    assert read_buffer(client, "other-schema", limits, now=T0) == []
    key = f"nearwatch:buffer:{S1}:{bucket_of(T0, limits)}"
    for name in (key, f"{key}:meta"):
        assert 4400 <= client.ttl(name) <= 4500  # window_s + bucket_s


def test_drift_counters(client: Any, scored: Any) -> None:
    detector, records, results = scored
    refused = [{"id": "bad", "error": "not a JSON object"}]
    writer = BufferWriter(client, settings())
    writer.write(detector, "v3", [*records, 5], [*results, *refused], now=T0)
    writer.write(detector, "v3", records[:10], results[:10], now=T0)
    counts = client.hgetall("nearwatch:drift:counts:v3")
    flagged = sum(r["is_anomaly"] for r in results) + sum(r["is_anomaly"] for r in results[:10])
    assert int(counts[b"scored"]) == 310 and int(counts[b"flagged"]) == flagged
    assert float(counts[b"bound"]) == detector.fpr_bound_
    writer.write(model(bound=None), "v4", *fake_batch(range(3)), now=T0)
    assert not client.exists("nearwatch:drift:counts:v4")


def test_a_batch_is_written_once_per_delivery(client: Any, scored: Any) -> None:
    """A redelivered or resubmitted batch (same delivery) adds nothing to the reservoir or
    the drift counts; the same records under another delivery are new traffic."""
    detector, records, results = scored
    limits = settings(capacity=8000, max_bytes=16 << 20)  # room for every offer
    writer = BufferWriter(client, limits, delivery_ttl_s=120)
    flagged = sum(r["is_anomaly"] for r in results)
    for delivery, offered in (("task:a", 300), ("task:a", 0), ("answers:x@0", 300),
                              ("answers:x@0", 0), (None, 300), (None, 300)):
        assert writer.write(detector, "v5", records, results, now=T0,
                            delivery=delivery) == offered
    counts = client.hgetall("nearwatch:drift:counts:v5")
    assert (int(counts[b"scored"]), int(counts[b"flagged"])) == (1200, 4 * flagged)
    meta = client.hgetall(f"nearwatch:buffer:{record_schema(detector)}:{bucket_of(T0, limits)}"
                          ":meta")
    assert int(meta[b"seen"]) == 1200
    assert buffer_size(client, record_schema(detector), limits, now=T0) == 1200
    markers = client.keys("nearwatch:buffer:delivery:*")
    assert len(markers) == 2 and all(90 <= client.ttl(m) <= 120 for m in markers)


def test_a_redis_that_is_down_costs_a_logged_failure(caplog: pytest.LogCaptureFixture) -> None:
    # No retries: redis-py's default (10, with backoff) makes each failure take ~4 s.
    down = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    metrics = SimpleNamespace(buffer_write_failures=FakeCounter())
    with caplog.at_level(logging.ERROR, logger="nearwatch.buffer"):
        assert BufferWriter(down, settings(), metrics).write(
            model(), "v1", *fake_batch(range(5))) == 0
        assert BufferWriter(down, settings(), object()).write(
            model(), "v1", *fake_batch(range(5))) == 0
    assert metrics.buffer_write_failures.value == 1
    assert "could not write the reference buffer" in caplog.text


def test_unparsable_entries_are_skipped_with_one_warning(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    limits = settings()
    BufferWriter(client, limits).write(model(), "v1", *fake_batch(range(4)), now=T0)
    key = f"nearwatch:buffer:{S1}:{bucket_of(T0, limits)}"
    client.rpush(key, b"not json", b'{"t": 1, "p": 0.5}', b"[1]")
    with caplog.at_level(logging.WARNING, logger="nearwatch.buffer"):
        entries = read_buffer(client, S1, limits, now=T0)
    assert [e.record_id for e in entries] == [0, 1, 2, 3]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 unparsable" in warnings[0].getMessage()


def test_big_integers_and_unicode_survive(client: Any) -> None:
    records = [{"id": 2**70, "name": "café ☕"}]
    results = [{"id": 2**70, "p_value": 0.25, "is_anomaly": False, "score": 1.0}]
    assert BufferWriter(client, settings()).write(model(), "v1", records, results, now=T0) == 1
    [entry] = read_buffer(client, S1, settings(), now=T0)
    assert entry.record["name"] == "café ☕" and str(entry.record_id) == str(2**70)


def test_golden_set(client: Any) -> None:
    records = [{"id": i, "x": i * 0.5} for i in range(100)]
    assert pin_golden(client, records, capacity=30, seed=4) == 30
    first = golden_records(client)
    assert golden_size(client) == 30 and len({r["id"] for r in first}) == 30
    assert all(r == records[r["id"]] for r in first)
    assert pin_golden(client, records, capacity=30, seed=4) == 30
    assert golden_records(client) == first  # the seed fixes the sample
    assert pin_golden(client, records[:10], capacity=30) == 10  # replaces, all of them
    assert sorted(r["id"] for r in golden_records(client)) == list(range(10))
    assert client.keys("nearwatch:golden:*") == []  # no temporary key left behind
    with pytest.raises(ValueError, match="golden record 2 is not a JSON object"):
        pin_golden(client, [{"a": 1}, {"a": 2}, [3]], capacity=2)  # type: ignore[list-item]
    assert golden_size(client) == 10  # a refused pin leaves the set as it was
    assert pin_golden(client, [], capacity=5) == 0 and golden_records(client) == []
