"""Analyst verdicts (scheduler/feedback.py) against a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from nearwatch.scheduler.feedback import (
    FeedbackStore,
    Verdict,
    canonical_id,
    find_record,
    record_feedback,
)
from nearwatch.worker.alerts import ALERTS_STREAM, EVENT_FIELD
from nearwatch.worker.names import DEADLETTER_STREAM
from nearwatch.worker.reference_buffer import BufferWriter
from nearwatch.worker.settings_sections import BufferSettings

from tests.service_fixtures import flushed_redis

FEEDBACK_DB = "redis://127.0.0.1:6379/10"


@pytest.fixture()
def client() -> Iterator[Any]:
    yield from flushed_redis(FEEDBACK_DB)


def add_alert(client: Any, record: dict[str, Any], event_id: str = "e1") -> None:
    event = {"event_id": event_id, "time": 1.0, "id": record.get("id"), "score": 9.0,
             "p_value": 0.001, "model_version": "v1", "record": record}
    client.xadd(ALERTS_STREAM, {EVENT_FIELD: json.dumps(event)})


def add_dead_letter(client: Any, record: Any) -> None:
    text = record if isinstance(record, str) else json.dumps(record)
    record_id = record.get("id") if isinstance(record, dict) else None
    client.xadd(DEADLETTER_STREAM, {"id": json.dumps(record_id), "error": "bad field",
                                    "reason": "invalid_field", "model_version": "v1",
                                    "record": text})


def add_to_buffer(client: Any, record: dict[str, Any], now: float) -> None:
    result = {"id": record["id"], "p_value": 0.4, "is_anomaly": False, "score": 1.0}
    model = SimpleNamespace(feature_encoder_=SimpleNamespace(fields_=[]), fpr_bound_=None)
    assert BufferWriter(client, BufferSettings()).write(model, "v1", [record], [result],
                                                        now=now) == 1


def test_put_all_counts_and_clear(client: Any) -> None:
    store = FeedbackStore(client, max_entries=10)
    first = store.put("a", "normal", {"id": "a", "x": 1})
    store.put(7, "anomaly", {"id": 7, "x": 2}, source="alerts")
    assert isinstance(first, Verdict) and first.source == "inline"
    verdicts = store.all()
    assert [(v.record_id, v.label, v.record, v.source) for v in verdicts] == [
        ("a", "normal", {"id": "a", "x": 1}, "inline"), (7, "anomaly", {"id": 7, "x": 2}, "alerts")]
    assert verdicts[0] == first
    assert store.counts() == {"normal": 1, "anomaly": 1}
    store.clear()
    assert store.all() == [] and store.counts() == {"normal": 0, "anomaly": 0}
    assert client.keys("*") == []


def test_the_latest_verdict_for_an_id_wins(client: Any) -> None:
    store = FeedbackStore(client, max_entries=10)
    store.put(7, "normal", {"id": 7, "x": 1})
    store.put("7", "normal", {"id": "7"})  # a string id is another record
    store.put(7.0, "anomaly", {"id": 7, "x": 2})  # 7.0 is the JSON number 7
    assert sorted((canonical_id(v.record_id), v.label) for v in store.all()) == [
        ('"7"', "normal"), ("7", "anomaly")]
    assert store.counts() == {"normal": 1, "anomaly": 1}


def test_max_entries_drops_the_oldest(client: Any) -> None:
    store = FeedbackStore(client, max_entries=3)
    for i in range(5):
        store.put(i, "normal" if i % 2 else "anomaly", {"id": i})
    assert [v.record_id for v in store.all()] == [2, 3, 4]
    assert store.counts() == {"normal": 1, "anomaly": 2}
    store.put(2, "normal", {"id": 2})  # refreshed: now the newest
    store.put(5, "normal", {"id": 5})
    assert [v.record_id for v in store.all()] == [4, 2, 5]
    assert client.zcard("nearwatch:feedback:times") == client.hlen("nearwatch:feedback") == 3
    assert FeedbackStore(client, max_entries=1).put(6, "normal", {"id": 6}).record_id == 6
    assert [v.record_id for v in store.all()] == [6]  # a smaller cap trims the backlog


def test_bad_verdicts_are_refused(client: Any) -> None:
    store = FeedbackStore(client, max_entries=3)
    with pytest.raises(ValueError, match="label must be one of normal, anomaly"):
        store.put(1, "benign", {"id": 1})
    with pytest.raises(ValueError, match="must be a JSON object"):
        store.put(1, "normal", [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_entries"):
        FeedbackStore(client, max_entries=0)
    assert store.all() == []


def test_find_record_in_the_alerts_newest_first(client: Any) -> None:
    add_alert(client, {"id": "r1", "v": "old"}, "e1")
    add_alert(client, {"id": "r2", "v": 2}, "e2")
    add_alert(client, {"id": "r1", "v": "new"}, "e3")
    client.xadd(ALERTS_STREAM, {"something": "else"})  # not an event: skipped
    assert find_record(client, "r1") == ({"id": "r1", "v": "new"}, "alerts")
    assert find_record(client, "r2") == ({"id": "r2", "v": 2}, "alerts")


def test_find_record_scans_across_chunks_up_to_the_limit(client: Any) -> None:
    add_alert(client, {"id": "deep"})
    pipe = client.pipeline(transaction=False)
    for i in range(2_500):
        pipe.xadd(ALERTS_STREAM, {EVENT_FIELD: json.dumps(
            {"event_id": str(i), "id": i, "record": {"id": i}})})
    pipe.execute()
    assert find_record(client, "deep") == ({"id": "deep"}, "alerts")
    assert find_record(client, "deep", scan_limit=2_500) is None


def test_find_record_in_the_dead_letters(client: Any) -> None:
    add_dead_letter(client, {"id": 42, "latency_ms": "slow"})
    add_dead_letter(client, "{not json")  # a raw line: no record to give
    assert find_record(client, 42) == ({"id": 42, "latency_ms": "slow"}, "deadletter")
    assert find_record(client, "42") is None


def test_find_record_in_the_buffer_newest_first(client: Any) -> None:
    add_to_buffer(client, {"id": 2**70, "v": "old"}, now=1_700_000_000.0)
    add_to_buffer(client, {"id": 2**70, "v": "new"}, now=1_700_010_000.0)  # another bucket
    assert find_record(client, 2**70) == ({"id": 2**70, "v": "new"}, "buffer")
    add_alert(client, {"id": 2**70, "v": "alert"})  # the alerts are searched first
    assert find_record(client, 2**70) == ({"id": 2**70, "v": "alert"}, "alerts")


def test_find_record_not_found(client: Any) -> None:
    add_alert(client, {"id": "a"})
    add_to_buffer(client, {"id": "b"}, now=1_700_000_000.0)
    assert find_record(client, "c") is None
    assert find_record(client, None) is None


def test_record_feedback(client: Any) -> None:
    store = FeedbackStore(client, max_entries=10)
    add_alert(client, {"id": "seen", "x": 1})
    verdict = record_feedback(client, store, "seen", "anomaly", None)
    assert (verdict.record, verdict.source) == ({"id": "seen", "x": 1}, "alerts")
    inline = record_feedback(client, store, "seen", "normal", {"id": "seen", "x": 5})
    assert (inline.record, inline.source) == ({"id": "seen", "x": 5}, "inline")
    assert [(v.label, v.source) for v in store.all()] == [("normal", "inline")]
    with pytest.raises(LookupError) as caught:
        record_feedback(client, store, "ghost", "normal", None)
    assert str(caught.value) == (
        'record id "ghost" not found in nearwatch:alerts, the buffer or nearwatch:deadletter: '
        "give the record inline")
    with pytest.raises(ValueError, match="label"):
        record_feedback(client, store, "seen", "fine", None)


def test_a_verdict_stays_in_its_half_as_verdicts_accumulate() -> None:
    """The champion trained on one half of the anomaly verdicts; the next retraining, with
    more verdicts, must not judge it on those (a rank-based split moved about a third)."""
    from nearwatch.detector.held_out import held_out_for_judging
    from nearwatch.scheduler.feedback import Verdict, split_labelled

    def halves(n: int) -> dict[str, bool]:
        trained, judged = split_labelled([Verdict(f"r{i}", "anomaly", {}, 0.0, "alerts")
                                          for i in range(n)])
        assert trained and judged
        return {**{v.record_id: False for v in trained}, **{v.record_id: True for v in judged}}

    early, later = halves(10), halves(40)
    assert all(later[record_id] == judged for record_id, judged in early.items())
    # the golden file's labelled anomaly with the same id lands in the same half
    assert all(held_out_for_judging({"id": record_id, "x": 1}) == judged
               for record_id, judged in later.items())
