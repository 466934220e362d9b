"""How a batch's answer travels back: a per-producer Redis list, or Celery's result backend.

With Redis (``NEARWATCH_REDIS_URL``), a producer (``ScoringClient``) names its own list,
``nearwatch:answers:<uuid>``, in each task it sends (keyword ``answer_key``) and sends the
task with ``ignore_result``. The worker pushes one entry per batch onto that list before the
message is acknowledged (``acks_late``): ``<task id>\\n<status>\\n<body>``, status ``ok`` or
``failed``; the body of a text batch is its JSON answers joined by newlines (compact JSON
never holds a raw newline), of an object batch one JSON list, of a failure its message. The
producer pops entries with ``BLPOP``; an entry whose task id is not an attempt it still waits
for (a redelivered batch answered twice, an abandoned attempt) is dropped. So every answer is
stored once, read once, and decoded once: no result-backend meta, no JSON list of JSON texts,
no ``PUBLISH`` copy; the list expires ``result_expires`` s after its last entry (a producer
that died) and is deleted when the producer finishes.

Without Redis (the in-memory demo), answers go through the result backend (``AsyncResult``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

from .names import ANSWERS_PREFIX

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult
    from redis import Redis

__all__ = ["ANSWER_FAILED", "ANSWER_OK", "FAILURE", "PENDING", "SUCCESS", "Answers",
           "BackendAnswers", "RedisAnswers", "answers_for", "check_answer_key", "encode_answer",
           "failure_entry", "push_answer"]

log = logging.getLogger("nearwatch.client")
ANSWER_OK = "ok"
ANSWER_FAILED = "failed"
# What an attempt looks like to the client: (state, value); state as Celery's.
SUCCESS, FAILURE, PENDING = "SUCCESS", "FAILURE", "PENDING"


def encode_answer(task_id: str, answers: Any, texts: bool) -> bytes:
    """The list entry of a batch answered with ``answers`` (JSON texts, result dicts, or
    a numeric batch's answer object)."""
    if texts:
        body = "\n".join(answers)
    else:
        from .records import dump_result

        body = dump_result(answers)  # a list: strict JSON, big integers exact
    return f"{task_id}\n{ANSWER_OK}\n{body}".encode("utf-8", "surrogatepass")


_ANSWER_KEY = re.compile(re.escape(ANSWERS_PREFIX) + "[0-9a-f]{32}")
# what a blocking read may wait at most: below the connection's socket timeout
MAX_BLOCK_S = 20.0
SOCKET_TIMEOUT_S = 30.0


def check_answer_key(key: object) -> str:
    """``key`` if it names a producer's answer list (``nearwatch:answers:<uuid hex>``).

    A message names the list the worker writes to: anything else (the alerts stream, the
    model registry, the queue itself) is refused before a byte is written.
    """
    if not isinstance(key, str) or not _ANSWER_KEY.fullmatch(key):
        raise ValueError(f"answer_key must be {ANSWERS_PREFIX}<32 hex digits>, "
                         f"got {str(key)[:80]!r}")
    return key


def push_answer(client: Redis, key: str, entry: bytes, ttl: int) -> None:
    """Append one answer to a producer's list and renew the list's expiry (one round trip)."""
    check_answer_key(key)
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, entry)
    pipe.expire(key, ttl)
    pipe.execute()


def failure_entry(task_id: str, error: BaseException) -> bytes:
    """The list entry of a batch whose task failed (the producer resubmits or gives up)."""
    text = f"{type(error).__name__}: {error}"[:300]
    return f"{task_id}\n{ANSWER_FAILED}\n{text}".encode("utf-8", "replace")


class RedisAnswers:
    """The producer's side of its answer list (one per ``ScoringClient``)."""

    def __init__(self, client: Redis) -> None:
        self.redis = client
        self.key = f"{ANSWERS_PREFIX}{uuid.uuid4().hex}"
        self._waiting: set[str] = set()  # attempt ids whose answers are still wanted
        self._arrived: dict[str, tuple[str, bytes]] = {}

    def send_options(self) -> dict[str, Any]:
        return {"kwargs": {"answer_key": self.key}, "ignore_result": True}

    def expect(self, attempt: AsyncResult) -> None:
        self.expect_id(attempt.id)

    def expect_id(self, task_id: str) -> None:
        """Before the task is sent: a thread sharing this client may pop its answer off the
        list as soon as it is there, and dropped one it was not told to keep."""
        self._waiting.add(task_id)

    def forget_id(self, task_id: str) -> None:
        """A task that was not sent after all."""
        self._waiting.discard(task_id)
        self._arrived.pop(task_id, None)

    def outcome(self, attempt: AsyncResult, texts: bool) -> tuple[str, Any]:
        arrived = self._arrived.pop(attempt.id, None)
        if arrived is None:
            return PENDING, None
        status, body = arrived
        if status != ANSWER_OK:
            return FAILURE, body.decode("utf-8", "replace")
        if texts:
            return SUCCESS, body.decode("utf-8", "surrogatepass").split("\n") if body else []
        try:
            return SUCCESS, json.loads(body)  # json: integers beyond 64 bits stay exact
        except ValueError as exc:
            return FAILURE, f"undecodable answer: {exc}"

    def wait(self, attempts: list[AsyncResult], seconds: float) -> None:
        """Take what has arrived; block up to ``seconds`` unless one of ``attempts`` (a
        batch's submissions) is answered already."""
        if any(attempt.id in self._arrived for attempt in attempts):
            return
        # a client without decode_responses: entries are bytes
        popped: Any = self.redis.blpop([self.key], timeout=min(seconds, MAX_BLOCK_S))
        if popped is None:
            return
        self._take(popped[1])  # kept before the next call, which may fail
        more: Any = self.redis.lpop(self.key, 64)  # whatever else arrived meanwhile
        for entry in more or ():
            self._take(entry)

    def _take(self, entry: bytes) -> None:
        task_id, _, rest = entry.partition(b"\n")
        status, _, body = rest.partition(b"\n")
        attempt_id = task_id.decode("ascii", "replace")
        if attempt_id not in self._waiting:  # abandoned, or answered already
            return
        if self._arrived.get(attempt_id, ("",))[0] == ANSWER_OK:
            return  # a redelivered copy that failed never replaces a good answer
        self._arrived[attempt_id] = (status.decode("ascii", "replace"), body)

    def forget(self, attempt: AsyncResult) -> None:
        self._waiting.discard(attempt.id)
        self._arrived.pop(attempt.id, None)

    def close(self) -> None:
        """Delete the list once no attempt is awaited (another ``score_*`` iteration of the
        same client may still be running)."""
        if self._waiting:
            return
        self._arrived.clear()
        try:
            self.redis.delete(self.key)
        except Exception as exc:  # it expires anyway
            log.debug("could not delete answer list %s: %s", self.key, exc)


class BackendAnswers:
    """Answers through Celery's result backend (no Redis: the in-memory demo)."""

    def send_options(self) -> dict[str, Any]:
        return {}

    def expect(self, attempt: AsyncResult) -> None:
        pass

    def expect_id(self, task_id: str) -> None:
        pass

    def forget_id(self, task_id: str) -> None:
        pass

    def outcome(self, attempt: AsyncResult, texts: bool) -> tuple[str, Any]:
        state = attempt.state
        if state == SUCCESS:
            return SUCCESS, attempt.result
        if state in ("FAILURE", "REVOKED"):
            return FAILURE, f"{state.lower()}: {attempt.result!r}"
        return PENDING, None

    def wait(self, attempts: list[AsyncResult], seconds: float) -> None:
        attempt = attempts[-1]
        # disable_sync_subtasks=False: the embedded worker (demo) shares this process,
        # which makes Celery think we are inside a task.
        with contextlib.suppress(CeleryTimeoutError):
            attempt.get(timeout=seconds, interval=min(seconds, 0.005), propagate=False,
                        disable_sync_subtasks=False)

    def forget(self, attempt: AsyncResult) -> None:
        """Drop a result from the backend; best effort (it expires anyway), never raises."""
        try:
            attempt.forget()
        except Exception as exc:  # e.g. Redis unreachable: the result expires by itself
            log.debug("could not forget result %s: %s", attempt.id, exc)

    def close(self) -> None:
        pass


Answers = RedisAnswers | BackendAnswers


def answers_for(app: Celery, answer_list: bool = True) -> Answers:
    """Redis answer lists when the app has a Redis URL (and ``answer_list``), else the
    result backend."""
    from .pool import SETTINGS_KEY

    url = getattr(app.conf.get(SETTINGS_KEY), "redis_url", None)
    if not url or not answer_list:
        return BackendAnswers()
    import redis

    return RedisAnswers(redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S,
                                             socket_keepalive=True))
