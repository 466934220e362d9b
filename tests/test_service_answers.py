"""Answers on the producer's own Redis list (worker/answers.py), on real Redis and a real node.

The client names its list in every task and sends it with ``ignore_result``; the worker pushes
``<task id>\\n<status>\\n<body>`` before the message is acknowledged. Exactly once, in order:
an entry for an attempt the client no longer waits for (a redelivered batch answered twice,
an abandoned attempt, a stranger) is dropped.
"""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from nearwatch.worker.answers import (
    FAILURE,
    PENDING,
    SUCCESS,
    RedisAnswers,
    check_answer_key,
    encode_answer,
    failure_entry,
    push_answer,
)

from tests.service_fixtures import WorkerNode, scoring_client, stream_records_for_test


def test_answer_list_takes_each_attempt_once_and_drops_strays(redis_client: Any) -> None:
    answers = RedisAnswers(redis_client)
    first, second = SimpleNamespace(id="task-a"), SimpleNamespace(id="task-b")
    answers.expect(first)
    answers.expect(second)
    texts = ['{"id":"r1","score":1.5}', '{"id":"r2","error":"field \'x\': bad"}']
    push_answer(redis_client, answers.key, encode_answer("stranger", texts, True), 60)
    push_answer(redis_client, answers.key, encode_answer("task-b", texts, True), 60)
    push_answer(redis_client, answers.key, failure_entry("task-a", RuntimeError("boom")), 60)
    assert 0 < redis_client.ttl(answers.key) <= 60
    answers.wait([first], 5.0)  # pops every entry there is
    assert answers.outcome(first, texts=True) == (FAILURE, "RuntimeError: boom")
    answers.forget(first)
    assert answers.outcome(second, texts=True) == (SUCCESS, texts)
    answers.forget(second)  # answered: a redelivered copy of the batch is dropped
    push_answer(redis_client, answers.key, encode_answer("task-b", texts, True), 60)
    answers.wait([second], 0.2)
    assert answers.outcome(second, texts=True) == (PENDING, None)
    assert redis_client.llen(answers.key) == 0
    # object batches: one JSON list; integers beyond 64 bits stay exact, NaN becomes null
    third = SimpleNamespace(id="task-c")
    answers.expect(third)
    results = [{"id": 2**70, "score": float("nan")}, {"id": "x", "error": "bad"}]
    push_answer(redis_client, answers.key, encode_answer("task-c", results, False), 60)
    answers.wait([third], 5.0)
    assert answers.outcome(third, texts=False) == (
        SUCCESS, [{"id": 2**70, "score": None}, {"id": "x", "error": "bad"}])
    answers.close()  # an attempt is still awaited: the list stays
    push_answer(redis_client, answers.key, encode_answer("task-c", results, False), 60)
    assert redis_client.exists(answers.key)
    answers.forget(third)
    answers.close()
    assert not redis_client.exists(answers.key)


@pytest.mark.slow
def test_client_answers_come_back_on_its_own_list(node: WorkerNode, redis_client: Any) -> None:
    metas_before = set(redis_client.scan_iter("celery-task-meta-*"))
    client = scoring_client(node, batch_size=30, max_in_flight=3)
    assert isinstance(client.answers, RedisAnswers)
    records = stream_records_for_test(200, seed=31, prefix="ans")
    lines = [json.dumps(r) for r in records]
    batches = [(lines[i:i + 30], i + 1) for i in range(0, len(lines), 30)]
    answered = [json.loads(a) for batch in client.score_json_batches(batches) for a in batch]
    assert [a["id"] for a in answered] == [r["id"] for r in records]
    assert not [a for a in answered if "error" in a]
    objects = [r for batch in client.score_batches([records[:30], records[30:60]])
               for r in batch]
    assert [r["id"] for r in objects] == [r["id"] for r in records[:60]]
    assert client.stats.submissions == client.stats.batches  # nothing was resubmitted
    # the answers were not stored in the result backend, and the list is gone
    assert set(redis_client.scan_iter("celery-task-meta-*")) == metas_before
    assert not redis_client.exists(client.answers.key)


@pytest.mark.slow
def test_a_failing_batch_is_answered_as_a_failure(node: WorkerNode, redis_client: Any) -> None:
    """A task that fails pushes a failure entry: the producer resubmits or gives up at once,
    not after its batch timeout."""
    from nearwatch.worker.app import create_app
    from nearwatch.worker.names import SCORE_JSON_BATCH

    key = "nearwatch:answers:" + uuid.uuid4().hex
    redis_client.delete(key)
    result = create_app(node.settings).send_task(
        SCORE_JSON_BATCH, args=["not a list"], kwargs={"answer_key": key}, ignore_result=True)
    popped = redis_client.blpop([key], timeout=30)
    assert popped is not None, "no answer within 30 s"
    task_id, status, body = popped[1].split(b"\n", 2)
    assert task_id.decode() == result.id and status == b"failed"
    assert body.startswith(b"TypeError: score_json_batch takes a list of JSON texts")
    redis_client.delete(key)


def test_a_failed_redelivery_never_replaces_a_good_answer(redis_client: Any) -> None:
    """A worker answers, dies before the ack, the redelivered copy fails: the client keeps
    the answer it has."""
    answers = RedisAnswers(redis_client)
    attempt = SimpleNamespace(id="task-z")
    answers.expect(attempt)
    texts = ['{"id":"r1","score":1.0}']
    push_answer(redis_client, answers.key, encode_answer("task-z", texts, True), 60)
    push_answer(redis_client, answers.key, failure_entry("task-z", MemoryError("oom")), 60)
    answers.wait([attempt], 5.0)
    assert answers.outcome(attempt, texts=True) == (SUCCESS, texts)
    answers.forget(attempt)
    answers.close()


@pytest.mark.parametrize("key", ["nearwatch:alerts", "nearwatch:answers:../x",
                                 "nearwatch:answers:" + "g" * 32, "scoring", None, 7])
def test_only_answer_lists_can_be_named(key: object, redis_client: Any) -> None:
    with pytest.raises(ValueError, match="answer_key must be nearwatch:answers:"):
        check_answer_key(key)
    with pytest.raises(ValueError, match="answer_key must be"):
        push_answer(redis_client, str(key), b"x", 60)


def test_a_message_cannot_make_the_worker_write_elsewhere(node: WorkerNode,
                                                          redis_client: Any) -> None:
    """A crafted message naming another key (here a hash standing for the model registry)
    leaves it untouched: no push, no expiry."""
    from nearwatch.worker.app import create_app
    from nearwatch.worker.names import SCORE_JSON_BATCH

    victim = "nearwatch:test:victim"
    redis_client.delete(victim)
    redis_client.hset(victim, "current", "v0001")
    app = create_app(node.settings)
    app.send_task(SCORE_JSON_BATCH, args=[['{"id": 1}']], kwargs={"answer_key": victim},
                  ignore_result=True)
    key = "nearwatch:answers:" + uuid.uuid4().hex
    app.send_task(SCORE_JSON_BATCH, args=[['{"id": 2}']], kwargs={"answer_key": key},
                  ignore_result=True)
    assert redis_client.blpop([key], timeout=30) is not None, "the good task was not answered"
    time.sleep(1.0)  # the crafted one ran on the other pool process meanwhile
    assert redis_client.type(victim) == b"hash" and redis_client.ttl(victim) == -1
    assert redis_client.hgetall(victim) == {b"current": b"v0001"}
    redis_client.delete(victim, key)


def test_answer_lists_need_an_expiry() -> None:
    from nearwatch.worker.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="NEARWATCH_RESULT_EXPIRES must be positive"):
        Settings.from_env({"NEARWATCH_RESULT_EXPIRES": "0"})


def test_a_client_shared_by_threads_keeps_an_answer_another_thread_took(
        node: WorkerNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads sharing a client pop each other's answers off its list. One popped between
    send_task and the client's expect() was dropped as unwanted: its owner waited out
    batch_timeout and sent the batch again (a trial: 16 of 640 requests took 10 s)."""
    client = scoring_client(node, batch_size=10, batch_timeout=20.0)
    send_task = client.app.send_task

    def send_then_another_thread_reads(*args: Any, **kwargs: Any) -> Any:
        sent = send_task(*args, **kwargs)
        client.answers.wait([], 10.0)  # as another thread would: take what arrives
        return sent

    monkeypatch.setattr(client.app, "send_task", send_then_another_thread_reads)
    started = time.monotonic()
    (results,) = list(client.score_batches([stream_records_for_test(5, prefix="shared")]))
    assert all("score" in r for r in results)
    assert client.stats.resubmissions == 0 and time.monotonic() - started < 15


def test_a_batch_that_could_not_be_sent_leaves_nothing_expected(
        node: WorkerNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its id was expected before sending: a send that raised left it expected for ever, so
    the client's answer list was never deleted on close."""
    from kombu.exceptions import EncodeError

    client = scoring_client(node, batch_size=10)

    def cannot_encode(*args: Any, **kwargs: Any) -> Any:
        raise EncodeError("cannot serialise")

    monkeypatch.setattr(client.app, "send_task", cannot_encode)
    with pytest.raises(EncodeError):
        list(client.score_batches([stream_records_for_test(3, prefix="unsent")]))
    assert not client.answers._waiting
