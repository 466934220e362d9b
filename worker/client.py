"""Python client for producers: batches in, results out in input order, exactly once.

Usage (``app`` from ``worker.app.create_app(settings)``, ``settings = Settings.from_env()``)::

    client = ScoringClient(app, ClientOptions.from_settings(settings))
    for result in client.score(records):  # dicts in, result dicts out, same order
        ...

Guarantees:

- bounded work in flight: at most ``max_in_flight`` batches are submitted and unanswered;
- every record is answered exactly once, in input order. The broker delivers at least once
  (a batch whose worker died is redelivered; a batch unanswered after ``batch_timeout`` is
  submitted again, e.g. when a whole worker node died and its messages wait for the broker's
  visibility timeout). Each batch has a sequence number; its first valid answer is used, the
  results of other attempts are discarded, and every answer is checked record by record
  (same count, same ids) before it is accepted;
- a batch that is still unanswered after ``max_attempts`` submissions is answered with one
  error per record (``stats.unanswered`` counts them), never silently dropped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from .names import SCORE_BATCH, SCORE_JSON_BATCH, SCORING_QUEUE
from .settings import ClientOptions

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["UNANSWERED", "ClientOptions", "ClientStats", "ScoringClient", "chunks"]

UNANSWERED = "unanswered after"  # start of the error of a record no worker answered


@dataclass
class ClientStats:
    batches: int = 0
    submissions: int = 0
    resubmissions: int = 0
    failed_attempts: int = 0
    unanswered: int = 0
    # seconds from a batch's first submission to its accepted answer (the latest 10 000)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


@dataclass
class _Batch:
    records: list[Any]
    task: str = SCORE_BATCH
    first_position: int | None = None  # text batches: input position of records[0]
    attempts: list[AsyncResult] = field(default_factory=list)
    first_submitted_at: float = 0.0
    submitted_at: float = 0.0
    n_submitted: int = 0
    last_problem: str = ""


class ScoringClient:
    """Submits batches to the ``scoring`` queue of ``app`` and collects their answers."""

    def __init__(self, app: Celery, options: ClientOptions | None = None) -> None:
        self.app = app
        self.options = options or ClientOptions()
        self.stats = ClientStats()

    def score(self, records: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """One result per record, in input order."""
        for results in self.score_batches(chunks(records, self.options.batch_size)):
            yield from results

    def score_batches(self, batches: Iterable[list[Any]]) -> Iterator[list[dict[str, Any]]]:
        """One result list per batch, in input order; batches are consumed lazily."""
        return self._run(_Batch(list(records)) for records in batches)

    def score_json_batches(self, batches: Iterable[tuple[list[str], int | None]]
                           ) -> Iterator[list[str]]:
        """Records as JSON texts → results as JSON texts (``nearwatch.score_json_batch``).

        Each batch is ``(lines, first_position)``; ``first_position`` (1-based input
        position of the first line, or None) lets the workers name records and give id-less
        records the id ``"#<position>"``. Answers are checked by count only.
        """
        return self._run(_Batch(list(lines), SCORE_JSON_BATCH, first) for lines, first in batches)

    def _run(self, batches: Iterator[_Batch]) -> Iterator[list[Any]]:
        pending: deque[_Batch] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.options.max_in_flight:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                self.stats.batches += 1
                if batch.records:
                    self._submit(batch)
                pending.append(batch)
            if not pending:
                return
            results = self._resolve(pending[0], pending)
            pending.popleft()
            yield results

    # ------------------------------------------------------------------ internals
    def _submit(self, batch: _Batch) -> None:
        args: list[Any] = [batch.records]
        if batch.task == SCORE_JSON_BATCH:
            args.append(batch.first_position)
        # argsrepr: a short label instead of Celery's repr of every record (client CPU)
        result = self.app.send_task(batch.task, args=args, queue=SCORING_QUEUE,
                                    argsrepr=f"[{len(batch.records)} records]", kwargsrepr="{}")
        batch.attempts.append(result)
        batch.submitted_at = time.monotonic()
        if not batch.n_submitted:
            batch.first_submitted_at = batch.submitted_at
        batch.n_submitted += 1
        self.stats.submissions += 1
        if batch.n_submitted > 1:
            self.stats.resubmissions += 1

    def _resolve(self, head: _Batch, pending: deque[_Batch]) -> list[Any]:
        if not head.records:
            return []
        while True:
            answer = self._answer(head)
            if answer is not None:
                return answer
            now = time.monotonic()
            for batch in pending:  # resubmit any overdue batch, not only the head
                if batch.attempts and now - batch.submitted_at > self.options.batch_timeout:
                    batch.last_problem = f"no answer within {self.options.batch_timeout:g} s"
                    self._retry_or_give_up(batch)
            if head.attempts:
                wait = max(0.001, min(self.options.poll_interval,
                                      head.submitted_at + self.options.batch_timeout - now))
                with contextlib.suppress(CeleryTimeoutError):
                    # disable_sync_subtasks=False: the embedded worker (demo) shares this
                    # process, which makes Celery think we are inside a task.
                    head.attempts[-1].get(timeout=wait, interval=min(wait, 0.005),
                                          propagate=False, disable_sync_subtasks=False)

    def _answer(self, batch: _Batch) -> list[Any] | None:
        """The batch's accepted results, error answers if it gave up, else None."""
        if not batch.attempts:  # gave up
            return self._give_up(batch)
        for attempt in list(batch.attempts):
            state = attempt.state
            if state == "SUCCESS":
                problem = _check(batch, attempt.result, self.options.id_field)
                if problem is None:
                    results = attempt.result
                    self._forget(batch)
                    self.stats.latencies.append(time.monotonic() - batch.first_submitted_at)
                    return results
                batch.last_problem = problem
            elif state in ("FAILURE", "REVOKED"):
                batch.last_problem = f"{state.lower()}: {attempt.result!r}"[:300]
            else:
                continue
            self.stats.failed_attempts += 1
            batch.attempts.remove(attempt)
            attempt.forget()
            if not batch.attempts:
                self._retry_or_give_up(batch)
                if not batch.attempts:
                    return self._give_up(batch)
        return None

    def _retry_or_give_up(self, batch: _Batch) -> None:
        if batch.n_submitted < self.options.max_attempts:
            self._submit(batch)
        else:
            self._forget(batch)  # late answers of abandoned attempts are ignored

    def _give_up(self, batch: _Batch) -> list[Any]:
        self.stats.unanswered += len(batch.records)
        reason = (f"{UNANSWERED} {batch.n_submitted} attempt(s): "
                  f"{batch.last_problem or 'no answer'}")
        if batch.task == SCORE_JSON_BATCH:
            first = batch.first_position
            return [json.dumps({"id": None, "error": reason if first is None
                                else f"record #{first + i}: {reason}"})
                    for i in range(len(batch.records))]
        id_field = self.options.id_field
        return [{"id": _record_id(r, id_field), "error": reason} for r in batch.records]

    def _forget(self, batch: _Batch) -> None:
        for attempt in batch.attempts:
            attempt.forget()
        batch.attempts.clear()


def _check(batch: _Batch, results: Any, id_field: str) -> str | None:
    """Why an answer cannot be accepted for ``batch``, or None when it matches."""
    records = batch.records
    if not isinstance(results, list) or len(results) != len(records):
        count = len(results) if isinstance(results, list) else "?"
        return f"answer has {count} results for {len(records)} records"
    if batch.task == SCORE_JSON_BATCH:
        return None if all(isinstance(r, str) for r in results) else "answer is not JSON texts"
    for record, result in zip(records, results, strict=True):
        expected = _record_id(record, id_field)
        if not isinstance(result, dict) or result.get("id") != expected:
            return f"answer does not match record id {expected!r}"
    return None


def _record_id(record: Any, id_field: str) -> Any:
    return record.get(id_field) if isinstance(record, dict) else None


def chunks(records: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
