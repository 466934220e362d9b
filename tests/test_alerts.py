"""Alert events (worker side) and their delivery (`nearwatch alerts`), against a real Redis."""

from __future__ import annotations

import http.server
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nearwatch.worker.alert_consumer import AlertConsumer
from nearwatch.worker.alert_digest import Digest
from nearwatch.worker.alert_redelivery import OwedNotifications
from nearwatch.worker.alert_sinks import (
    AlertmanagerSink,
    DeliveryError,
    JsonlSink,
    RateLimiter,
    Retry,
    WebhookSink,
    alertmanager_alert,
)
from nearwatch.worker.alerts import (
    ALERTS_DEAD_STREAM,
    ALERTS_GROUP,
    ALERTS_STREAM,
    RedisAlertWriter,
    build_events,
)
from nearwatch.worker.settings import AlertSettings, Settings, SettingsError

from tests.service_fixtures import flushed_redis, stream_records_for_test

ALERT_DB = "redis://127.0.0.1:6379/12"  # not the service tests' DB 11: their workers emit too


@pytest.fixture()
def alert_redis() -> Iterator[Any]:
    yield from flushed_redis(ALERT_DB)


@pytest.fixture(scope="module")
def scored(bundles: tuple[Path, Path]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    from nearwatch.detector import Detector

    detector = Detector.load(bundles[0])
    records = stream_records_for_test(800, seed=7, prefix="a")
    results = detector.score_records(records, 3)
    assert sum(r["is_anomaly"] for r in results) >= 5
    return detector, records, results


class FakeCounter:
    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class FakeMetrics:
    def __init__(self) -> None:
        self.alert_events, self.alert_write_failures = FakeCounter(), FakeCounter()


def test_events_for_flagged_records_only_with_explanations_capped(scored: Any) -> None:
    detector, records, results = scored
    flagged = [r for r in results if r["is_anomaly"]]
    events = build_events(detector, "v0001", records, results, explain_max=3, now=100.0)
    assert [e["id"] for e in events] == [r["id"] for r in flagged]
    first = events[0]
    assert first["threshold"] == detector.threshold_ and first["fpr_bound"] == detector.fpr_bound_
    assert first["certified"] is True and first["model_version"] == "v0001"
    assert first["score"] > first["threshold"] and len(first["neighbours"]) == 3
    assert first["record"]["id"] == first["id"] and "service" in first["record"]
    assert len(first["fields"]) == 3 and {"field", "deviation"} <= set(first["fields"][0])
    assert all(e["fields"] for e in events[:3]) and all(e["fields"] is None for e in events[3:])
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    # a redelivery (same delivery) repeats the ids; the same records sent again do not
    delivered = [build_events(detector, "v0001", records, results, explain_max=0,
                              delivery=delivery) for delivery in ("task:a", "task:a", "task:b")]
    first, redelivered, sent_again = ([e["event_id"] for e in batch] for batch in delivered)
    assert redelivered == first and not set(sent_again) & set(first)
    assert not set(ids) & set(first)  # no delivery: a new one per call
    other = build_events(detector, "v0002", records, results, explain_max=0, delivery="task:a")
    assert other[0]["event_id"] != first[0]


def test_scoring_explains_its_flagged_records_from_its_own_search(
        scored: Any, alert_redis: Any) -> None:
    """The worker gets the alert's explanations from the scoring search (no second search):
    the same fields ``explain`` gives, for the first ``explain_max`` flagged records only, in
    the events and never in the answers."""
    from nearwatch.worker.runtime import BatchScorer, LoggedDeadLetters

    detector, records, results = scored
    explained = detector.score_records(records, 3, explain=4)
    flagged = [i for i, r in enumerate(results) if r["is_anomaly"]]
    assert [i for i, r in enumerate(explained) if "fields" in r] == flagged[:4]
    for i in flagged[:4]:
        (alone,) = detector.explain([records[i]], n_neighbours=1, n_fields=3)
        assert explained[i].pop("fields") == alone["fields"]
    assert explained == results  # nothing else differs

    class Holder:
        def current(self) -> tuple[str, Any]:
            return "v0001", detector

    writer = RedisAlertWriter(alert_redis, maxlen=1000, explain_max=2)
    scorer = BatchScorer(Holder(), LoggedDeadLetters(), alerts=writer)  # type: ignore[arg-type]
    answers = scorer.score_batch([dict(r) for r in records], delivery="task:x")
    assert not [a for a in answers if "fields" in a]
    events = [json.loads(f[b"event"]) for _, f in alert_redis.xrange(ALERTS_STREAM)]
    assert [e["id"] for e in events] == [records[i]["id"] for i in flagged]
    assert [e["fields"] for e in events] == [
        detector.explain([records[i]], n_neighbours=1)[0]["fields"] for i in flagged[:2]
    ] + [None] * (len(flagged) - 2)


def test_a_bisected_batch_explains_the_same_records_and_no_more(
        scored: Any, alert_redis: Any) -> None:
    """A batch that raises is halved until the bad record is alone (``_score_objects``); the
    halves share one allowance of ``explain_max`` explanations, in batch order."""
    from nearwatch.worker.runtime import BatchScorer, LoggedDeadLetters

    detector, records, results = scored
    explained: list[int] = []

    class Fragile:  # the real detector, but a batch holding "boom" raises
        id_field = detector.id_field

        def score_records(self, batch: list[dict[str, Any]], n: int, explain: int = 0
                          ) -> list[dict[str, Any]]:
            if any(r.get("id") == "boom" for r in batch):
                raise RuntimeError("unexpected")
            answer = detector.score_records(batch, n, explain=explain)
            explained.append(sum("fields" in r for r in answer))
            return answer

        def __getattr__(self, name: str) -> Any:
            return getattr(detector, name)

    class Holder:
        def current(self) -> tuple[str, Any]:
            return "v0001", Fragile()

    flagged = [i for i, r in enumerate(results) if r["is_anomaly"]]
    batch = [dict(r) for r in records]
    batch.insert(len(batch) // 2, {"id": "boom"})
    scorer = BatchScorer(Holder(), LoggedDeadLetters(),  # type: ignore[arg-type]
                         alerts=RedisAlertWriter(alert_redis, maxlen=1000, explain_max=4))
    answers = scorer.score_batch(batch, delivery="task:bisect")
    assert "internal error" in answers[len(records) // 2]["error"]
    assert sum(explained) == 4 and len(explained) > 2  # bisected, and no more than allowed
    events = [json.loads(f[b"event"]) for _, f in alert_redis.xrange(ALERTS_STREAM)]
    assert [e["fields"] for e in events] == [
        detector.explain([records[i]], n_neighbours=1)[0]["fields"] for i in flagged[:4]
    ] + [None] * (len(flagged) - 4)


def test_a_failing_explanation_never_fails_the_scoring(
        bundles: tuple[Path, Path], scored: Any, caplog: Any) -> None:
    from nearwatch.detector import Detector

    _, records, results = scored
    broken = Detector.load(bundles[0])
    columns = broken.feature_encoder_.field_columns_  # read by explanations only
    broken.feature_encoder_.field_columns_ = {name: [10**6] for name in columns}
    with pytest.raises(IndexError):
        broken.explain(records[:1])
    assert broken.score_records(records, 3, explain=4) == results  # scored, not explained
    assert "could not explain 4 flagged records" in caplog.text


def test_writer_one_entry_per_flagged_record_and_failure_never_raises(
        scored: Any, alert_redis: Any) -> None:
    import redis

    detector, records, results = scored
    metrics = FakeMetrics()
    writer = RedisAlertWriter(alert_redis, maxlen=1000, explain_max=20, metrics=metrics)  # type: ignore[arg-type]
    written = writer.emit(detector, "v0001", records, results)
    assert written == sum(r["is_anomaly"] for r in results) == alert_redis.xlen(ALERTS_STREAM)
    assert metrics.alert_events.value == written
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2,
                              retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    waits: list[float] = []
    down = RedisAlertWriter(unreachable, 1000, 20, metrics, sleep=waits.append)  # type: ignore[arg-type]
    assert down.emit(detector, "v0001", records, results) == 0
    assert metrics.alert_write_failures.value == 1 and waits == [0.5, 1.0, 2.0, 4.0]
    # the outage goes on: the next batches try once, not 7.5 s each
    assert down.emit(detector, "v0001", records, results) == 0
    assert metrics.alert_write_failures.value == 2 and len(waits) == 4


def test_a_redis_stall_delays_the_alert_events_and_loses_none(
        scored: Any, alert_redis: Any) -> None:
    """A 6 s CLIENT PAUSE timed the write out once: the events of records answered as
    flagged were lost for good. The write is tried again (the consumer takes an event id
    once, so a first write that got half through pages nobody twice)."""
    import redis

    detector, records, results = scored
    stalls = [redis.TimeoutError("Timeout reading from socket"), redis.ConnectionError("reset")]

    class Stalling:
        def pipeline(self, transaction: bool) -> Any:
            pipe = alert_redis.pipeline(transaction=transaction)
            execute = pipe.execute

            def after_the_stall() -> Any:
                if stalls:
                    execute()  # half through: written, then the reply is lost
                    raise stalls.pop()
                return execute()

            pipe.execute = after_the_stall
            return pipe

    metrics, waits = FakeMetrics(), []
    writer = RedisAlertWriter(Stalling(), 1000, 20, metrics, sleep=waits.append)  # type: ignore[arg-type]
    written = writer.emit(detector, "v0001", records, results)
    assert written == sum(r["is_anomaly"] for r in results) and waits == [0.5, 1.0]
    assert metrics.alert_write_failures.value == 0
    events = [json.loads(f[b"event"])["event_id"] for _, f in alert_redis.xrange(ALERTS_STREAM)]
    assert len(set(events)) == written  # written three times, one event id each


def test_retry_backoff_with_jitter_and_only_retryable_failures() -> None:
    waits: list[float] = []
    retry = Retry(retries=3, backoff_s=1.0, sleep=waits.append, rng=random.Random(0))
    calls = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise DeliveryError("HTTP 503", retryable=True)

    retry.run(flaky, lambda: None)
    assert len(calls) == 3 and len(waits) == 2
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0
    calls.clear()

    def refused() -> None:
        calls.append(1)
        raise DeliveryError("HTTP 400", retryable=False)

    with pytest.raises(DeliveryError, match="HTTP 400"):
        retry.run(refused, lambda: None)
    assert len(calls) == 1


def test_rate_limiter_refills_per_minute() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    now[0] = 30.0  # 2 per minute: one token back after 30 s
    assert [limiter.allow(), limiter.allow()] == [True, False]
    assert all(RateLimiter(0).allow() for _ in range(100))


def test_alertmanager_alert_follows_the_conventions() -> None:
    notification = {"key": {"service": "payments", "model_version": "v0003"}, "count": 4,
                    "first_seen": "2030-01-01T00:00:00.000Z", "last_seen": "x",
                    "last_seen_epoch": 1_893_456_000.0, "suppressed": 2,
                    "events": [{"id": "r1", "score": 9.5, "threshold": 4.0, "p_value": 0.001,
                                "fpr_bound": 0.009, "fields": [
                                    {"field": "latency_ms", "value": 9000, "typical": 40.5},
                                    {"field": "hashed"}]}]}
    alert = alertmanager_alert(notification, "critical", resolve_s=300)
    assert alert["labels"] == {"alertname": "NearwatchAnomalousRecords", "severity": "critical",
                               "service": "nearwatch", "model_version": "v0003",
                               "record_service": "payments"}
    assert alert["annotations"]["summary"].startswith("4 anomalous record(s)")
    assert "fields: latency_ms=9000 (typical 40.5), hashed." in alert["annotations"][
        "description"]
    assert "2 more notifications are held by the rate limit" in alert["annotations"][
        "description"]
    assert alert["startsAt"] == "2030-01-01T00:00:00.000Z"
    assert alert["endsAt"] == "2030-01-01T00:05:00.000Z"
    # delivered an hour after its last event (a consumer taken over, a sink back up): it
    # still fires for resolve_s from now, instead of arriving resolved
    late = alertmanager_alert(notification, "critical", 300, now=1_893_456_000.0 + 3600)
    assert late["endsAt"] == "2030-01-01T01:05:00.000Z"


class Receiver:
    """A local HTTP receiver answering with the statuses given, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.bodies: list[Any] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                receiver.bodies.append(json.loads(self.rfile.read(
                    int(self.headers["Content-Length"]))))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


def test_webhook_and_alertmanager_sinks_over_real_http() -> None:
    receiver = Receiver([500, 503])
    fast = Retry(retries=3, backoff_s=0.01)
    WebhookSink(receiver.url + "/hook", 2.0, fast).send({"key": {}, "count": 1})
    assert len(receiver.bodies) == 3 and receiver.bodies[-1]["count"] == 1
    refusing = Receiver([400])
    with pytest.raises(DeliveryError, match="HTTP 400"):
        WebhookSink(refusing.url, 2.0, fast).send({"count": 1})
    assert len(refusing.bodies) == 1  # a 4xx is not retried
    with pytest.raises(DeliveryError, match="127.0.0.1:1"):
        WebhookSink("http://127.0.0.1:1/", 0.5, Retry(1, 0.01)).send({})
    am = Receiver([])
    AlertmanagerSink(am.url + "/", 2.0, fast, "warning", 60).send(
        {"key": {"model_version": "v1"}, "count": 1, "first_seen": "t", "last_seen": "t",
         "last_seen_epoch": 0.0, "events": []})
    assert am.bodies[0][0]["labels"]["model_version"] == "v1"


class ListSink:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail
        self.sent: list[dict[str, Any]] = []

    def send(self, notification: dict[str, Any]) -> None:
        if self.fail:
            raise DeliveryError("receiver down", retryable=True)
        self.sent.append(notification)


def _add(client: Any, event_id: str, service: str, score: float = 5.0) -> str:
    event = {"event_id": event_id, "time": 1000.0, "id": event_id, "score": score,
             "model_version": "v0001", "record": {"service": service}}
    return client.xadd(ALERTS_STREAM, {"event": json.dumps(event)}).decode()


def test_consumer_groups_dedupes_dead_letters_and_rate_limits(alert_redis: Any) -> None:
    now = [0.0]
    settings = AlertSettings(window_s=10, key=("service",), rate_limit=1, redeliver_s=30)
    good, bad = ListSink("webhook"), ListSink("alertmanager", fail=True)
    consumer = AlertConsumer(alert_redis, [good, bad], settings, consumer="c1",
                             clock=lambda: now[0])
    consumer.ensure_group()
    for i in range(5):
        _add(alert_redis, f"e{i}", "payments", score=float(i))
    _add(alert_redis, "e0", "payments")  # a redelivered batch wrote e0 again
    f0 = _add(alert_redis, "f0", "search")
    alert_redis.xadd(ALERTS_STREAM, {"junk": "1"})
    consumer.fold(consumer._read())
    consumer.flush()
    assert good.sent == []  # the window is still open
    assert consumer.stats.duplicates == 1 and consumer.stats.invalid == 1
    now[0] = 11.0
    consumer.flush()
    # rate limit 1/min: "search" (grouped second) was held back from both sinks, and says so
    assert [(n["key"]["service"], n["count"]) for n in good.sent] == [("payments", 5)]
    assert consumer.stats.rate_limited == 2 and consumer.stats.deferred == 1
    assert good.sent[0]["key"]["model_version"] == "v0001"
    assert [state.digest.notifications for state in consumer.sinks] == [1, 1]
    assert [e["score"] for e in good.sent[0]["events"]] == [4.0, 3.0, 2.0, 1.0, 0.0]
    # the failing sink is owed "payments", "search" waits in both digests: their six events
    # stay pending, nothing is dead-lettered yet
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 6
    assert alert_redis.xrange(ALERTS_DEAD_STREAM) == []
    now[0] = 16.0  # tried again 5 s later, still down; then 10 s later, past redeliver_s
    consumer.flush()
    assert consumer.stats.deferred == 2 and consumer.stats.failed == 0
    now[0] = 45.0
    consumer.flush()
    assert consumer.stats.failed == 1 and len(good.sent) == 1  # the webhook got it once
    dead = alert_redis.xrange(ALERTS_DEAD_STREAM)
    assert len(dead) == 1 and dead[0][1][b"sink"] == b"alertmanager"
    assert b"receiver down" in dead[0][1][b"error"]
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 1  # "search"
    now[0] = 200.0  # the bucket refilled: the digest goes first, then the new notification
    _add(alert_redis, "g0", "payments")
    consumer.fold(consumer._read())
    consumer.flush(everything=True)
    digest = good.sent[1]
    assert digest["key"] == {"digest": "rate_limited", "first_entry": f0} and \
        digest["count"] == 1
    assert digest["digest"]["keys"] == [
        {"key": {"service": "search", "model_version": "v0001"}, "count": 1}]
    assert [e["id"] for e in digest["events"]] == ["f0"]
    # f0 is owed to the failing sink again; g0 came after the digest took the token: held
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 2
    now[0] = 300.0
    consumer.flush()
    assert good.sent[-1]["digest"]["keys"][0]["key"]["service"] == "payments"
    assert [e["id"] for e in good.sent[-1]["events"]] == ["g0"]


def test_a_sink_that_comes_back_gets_what_it_missed(alert_redis: Any) -> None:
    """An Alertmanager down for longer than its retries (seconds) lost the notification to
    the dead stream, and nothing sent it again when it came back: now it is owed it."""
    now = [0.0]
    settings = AlertSettings(window_s=10, key=("service",), redeliver_s=3600)
    good, flaky = ListSink("webhook"), ListSink("alertmanager", fail=True)
    consumer = AlertConsumer(alert_redis, [good, flaky], settings, consumer="c2",
                             clock=lambda: now[0], claim_idle_ms=200)
    consumer.ensure_group()
    for i in range(3):
        _add(alert_redis, f"h{i}", "payments")
    consumer.fold(consumer._read())
    now[0] = 11.0
    consumer.flush()
    assert [n["count"] for n in good.sent] == [3] and flaky.sent == []
    # owed longer than the claim idle time, its events stay this consumer's: another one
    # would claim them and send them to every sink again
    time.sleep(0.3)
    now[0] = 12.0
    consumer.flush()
    other = AlertConsumer(alert_redis, [ListSink("webhook")], settings, consumer="other",
                          claim_idle_ms=200)
    assert other._claim() == []
    for later in (16.0, 26.0):  # down for half a minute
        now[0] = later
        consumer.flush()
    assert consumer.stats.deferred == 3 and flaky.sent == []
    flaky.fail = False
    now[0] = 46.0
    consumer.flush()
    assert [n["count"] for n in flaky.sent] == [3] and len(good.sent) == 1
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 0
    assert alert_redis.xrange(ALERTS_DEAD_STREAM) == [] and consumer.stats.failed == 0


def test_dead_consumers_events_are_claimed_and_delivered_once(alert_redis: Any) -> None:
    settings = AlertSettings(window_s=60, rate_limit=0)
    dead = AlertConsumer(alert_redis, [ListSink("webhook")], settings, consumer="dead")
    dead.ensure_group()
    for i in range(3):
        _add(alert_redis, f"k{i}", "payments")
    dead.fold(dead._read())  # read and grouped, then the process dies before its window ends
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 3
    sink = ListSink("webhook")
    alive = AlertConsumer(alert_redis, [sink], settings, consumer="alive", claim_idle_ms=1,
                          block_ms=10)
    stats = alive.run(stop_when_idle=True)
    assert stats.claimed == 3 and stats.duplicates == 0
    assert [n["count"] for n in sink.sent] == [3]
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 0


def test_alert_settings_from_env_and_their_errors() -> None:
    settings = Settings.from_env({"NEARWATCH_ALERT_KEY": "service, region",
                                  "NEARWATCH_ALERTS": "off",
                                  "NEARWATCH_ALERT_WEBHOOK_URL": "http://h/x"})
    assert settings.alerts.key == ("service", "region") and settings.alerts.enabled is False
    assert settings.alerts.webhook_url == "http://h/x" and settings.alerts.window_s == 60.0
    with pytest.raises(SettingsError, match="NEARWATCH_ALERT_WINDOW_S must be positive"):
        Settings.from_env({"NEARWATCH_ALERT_WINDOW_S": "0"})
    with pytest.raises(SettingsError, match="NEARWATCH_ALERTMANAGER_URL='am:9093'"):
        Settings.from_env({"NEARWATCH_ALERTMANAGER_URL": "am:9093"})
    with pytest.raises(SettingsError, match="NEARWATCH_ALERTS='maybe'"):
        Settings.from_env({"NEARWATCH_ALERTS": "maybe"})


def test_consumer_rides_out_a_dropped_connection_and_a_deleted_stream(alert_redis: Any) -> None:
    """The trial's crashes: `CLIENT KILL` of the consumer's connection, and `DEL` of the
    stream while the consumer blocks on it. Both are survived; every event is delivered."""
    import redis

    settings = AlertSettings(window_s=0.2, rate_limit=0)
    sink = ListSink("webhook")
    kwargs = {k: v for k, v in alert_redis.connection_pool.connection_kwargs.items()
              if k in ("host", "port", "db")}
    own = redis.Redis(**kwargs, client_name="steady-consumer")
    consumer = AlertConsumer(own, [sink], settings, consumer="steady", block_ms=200)
    runner = threading.Thread(target=consumer.run, daemon=True)
    runner.start()

    def delivered() -> int:
        return sum(n["count"] for n in sink.sent)

    def wait(count: int) -> None:
        deadline = time.monotonic() + 10
        while delivered() < count and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.is_alive() and delivered() == count

    try:
        _add(alert_redis, "a0", "payments")
        wait(1)
        killed = [alert_redis.client_kill_filter(_id=client["id"])
                  for client in alert_redis.client_list() if client["name"] == "steady-consumer"]
        assert killed
        _add(alert_redis, "a1", "payments")
        wait(2)
        alert_redis.delete(ALERTS_STREAM)  # the group goes with it
        time.sleep(0.5)
        _add(alert_redis, "a2", "payments")
        wait(3)
    finally:
        consumer.stop.set()
        runner.join(10)
    assert not runner.is_alive()



def test_the_jsonl_file_is_not_rate_limited(alert_redis: Any) -> None:
    """NEARWATCH_ALERT_RATE_LIMIT protects a pager; it dropped notifications from the local
    JSONL file too, where nothing is paged and every one should be kept."""
    import io

    now = [0.0]
    out = io.StringIO()
    webhook = ListSink("webhook")
    consumer = AlertConsumer(alert_redis, [webhook, JsonlSink(out)],
                             AlertSettings(window_s=10, key=("service",), rate_limit=1),
                             consumer="c3", clock=lambda: now[0])
    _fold_three_services(alert_redis, consumer, "j")
    now[0] = 11.0
    consumer.flush()
    assert len(webhook.sent) == 1 and len(out.getvalue().splitlines()) == 3


def _fold_three_services(client: Any, consumer: AlertConsumer, prefix: str) -> None:
    """One event each for services api, db and cache, read and folded by ``consumer``."""
    consumer.ensure_group()
    for service in ("api", "db", "cache"):
        _add(client, f"{prefix}-{service}", service)
    consumer.fold(consumer._read())


class CountingSink(ListSink):
    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(name, fail)
        self.calls = 0

    def send(self, notification: dict[str, Any]) -> None:
        self.calls += 1
        super().send(notification)


def test_a_down_sink_is_tried_once_per_backoff_and_no_owed_event_is_lost(
        alert_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A down sink cost one full retry cycle per owed notification (a consumer falling ever
    further behind); a Redis error half-way through a redelivery pass lost the items of that
    pass; a touch took back entries another consumer had claimed."""
    import redis

    now = [0.0]
    settings = AlertSettings(window_s=10, key=("service",), redeliver_s=3600)
    down = CountingSink("alertmanager", fail=True)
    consumer = AlertConsumer(alert_redis, [down], settings, consumer="c4",
                             clock=lambda: now[0], claim_idle_ms=60_000)
    _fold_three_services(alert_redis, consumer, "k")
    now[0] = 11.0
    consumer.flush()
    assert down.calls == 1 and consumer.stats.deferred == 3 and len(consumer.owed) == 3
    down.fail = False
    acknowledge = consumer._acknowledge
    failures = [redis.ConnectionError("Redis went away")]

    def flaky_acknowledge(entries: list[str], settling: Any = None) -> None:
        if failures:
            raise failures.pop()
        acknowledge(entries, settling)

    monkeypatch.setattr(consumer, "_acknowledge", flaky_acknowledge)
    now[0] = 16.1
    with pytest.raises(redis.ConnectionError):
        consumer.flush()
    assert len(consumer.owed) == 3  # nothing of the interrupted pass is lost
    now[0] = 40.0
    consumer.flush()
    assert len(consumer.owed) == 0 and len(down.sent) >= 3
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 0
    # another consumer took an owed notification's entries: this one lets them go
    down.fail = True
    _add(alert_redis, "k-auth", "auth")
    consumer.fold(consumer._read())
    now[0] = 60.0
    consumer.flush()
    [entry] = consumer.owed.entries()
    alert_redis.xclaim(ALERTS_STREAM, ALERTS_GROUP, "other", 0, [entry], justid=True)
    now[0] = 200.0
    consumer.flush()
    assert len(consumer.owed) == 0 and entry not in consumer._held
    [pending] = alert_redis.xpending_range(ALERTS_STREAM, ALERTS_GROUP, "-", "+", 10)
    assert pending["consumer"] == b"other"


def test_a_flood_is_held_in_a_digest_never_dropped(alert_redis: Any) -> None:
    """A scan from 40 sources spent the rate limit, and the exfiltration grouped after it
    never paged (its events acknowledged, unsent). Held notifications now follow in one
    digest, the highest scores first, their events pending until it is delivered: a
    consumer killed before that loses nothing, another one claims and sends them."""
    now = [0.0]
    settings = AlertSettings(window_s=10, key=("service",), rate_limit=2)
    sink = ListSink("webhook")
    consumer = AlertConsumer(alert_redis, [sink], settings, consumer="d1",
                             clock=lambda: now[0], claim_idle_ms=60_000)
    consumer.ensure_group()
    for i in range(40):
        _add(alert_redis, f"scan-{i}", f"10.0.0.{i}", score=2.0)
    _add(alert_redis, "exfil", "10.0.9.10", score=13.0)
    consumer.fold(consumer._read())
    now[0] = 11.0
    consumer.flush()
    assert len(sink.sent) == 2 and consumer.stats.rate_limited == 39
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 39
    # killed now: another consumer claims the held events and would send them
    other = AlertConsumer(alert_redis, [ListSink("webhook")], settings, consumer="d2",
                          claim_idle_ms=1)
    time.sleep(0.01)
    assert len(other._claim()) == 39
    alert_redis.xclaim(ALERTS_STREAM, ALERTS_GROUP, "d1", 0,
                       [p["message_id"] for p in alert_redis.xpending_range(
                           ALERTS_STREAM, ALERTS_GROUP, "-", "+", 100)], justid=True)
    now[0] = 41.0  # one token back (2 per minute): the digest goes first
    consumer.flush()
    digest = sink.sent[-1]
    assert digest["key"]["digest"] == "rate_limited" and digest["count"] == 39
    assert digest["events"][0]["id"] == "exfil" and digest["digest"]["notifications"] == 39
    assert len(digest["digest"]["keys"]) == 20 and digest["digest"]["more_keys"] == 19
    assert digest["digest"]["keys"][0] == {
        "key": {"service": "10.0.9.10", "model_version": "v0001"}, "count": 1}
    assert alert_redis.xpending(ALERTS_STREAM, ALERTS_GROUP)["pending"] == 0
    page = alertmanager_alert(digest, "warning", resolve_s=300)
    assert page["annotations"]["summary"].startswith(
        "39 notifications held by the rate limit: 39 anomalous record(s) for ")
    assert "for service=10.0.9.10, model_version=v0001 (1); " in page["annotations"]["summary"]
    assert "record 'exfil'" in page["annotations"]["description"]
    # the next digest is another alert: equal labels made Alertmanager merge them into one
    later = Digest()
    later.add({**sink.sent[0], "first_seen_epoch": 1.0}, ["99-0"])
    assert alertmanager_alert(later.notification(10), "warning", 300)["labels"] != page["labels"]


def test_an_owed_entry_behind_many_pending_ones_is_still_ours(alert_redis: Any) -> None:
    """The consumer's pending list also holds its open groups' entries: an owed (or held)
    entry read after 1 500 of them fell outside the one page read, was taken for another
    consumer's, and was later claimed back and sent twice."""
    alert_redis.xgroup_create(ALERTS_STREAM, ALERTS_GROUP, id="0", mkstream=True)
    pipe = alert_redis.pipeline()
    for _ in range(1_501):
        pipe.xadd(ALERTS_STREAM, {"event": "{}"})
    ids = [entry.decode() for entry in pipe.execute()]
    alert_redis.xreadgroup(ALERTS_GROUP, "mine", {ALERTS_STREAM: ">"}, count=2_000)
    owed = OwedNotifications(redeliver_s=60)
    owed.add({"count": 1}, ["webhook"], [ids[-1]], now=0.0)
    assert owed.keep(alert_redis, "mine", now=100.0, every_s=1.0, also={ids[-2]}) == set()
    assert owed.entries() == {ids[-1]}
