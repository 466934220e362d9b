"""Python client for producers: batches in, results out in input order, exactly once.

Usage (``app`` from ``worker.app.create_app(settings)``, ``settings = Settings.from_env()``)::

    client = ScoringClient(app, ClientOptions.from_settings(settings))
    for result in client.score(records):  # dicts in, result dicts out, same order
        ...

Guarantees:

- bounded work in flight: at most ``max_in_flight`` batches are submitted and unanswered;
- every record is answered exactly once, in input order. The broker delivers at least once
  (a dead worker's batch is redelivered; one unanswered after ``batch_timeout`` is submitted
  again under the same ``batch`` tag). Its first valid answer, checked record by record
  (same count, same ids), is used; the other attempts' results are discarded;
- a batch that is still unanswered after ``max_attempts`` submissions is answered with one
  error per record (``stats.unanswered`` counts them), never silently dropped;
- a record the broker cannot carry or the limits refuse (``screen_record``/``check_text``)
  is answered here with an error, the rest of its batch is sent, and a worker still writes
  its dead letter with this refusal's reason (``worker/refusals.py``);
- a partial batch is sent once its first record waited ``linger`` s, and answers are
  collected while the source waits for input (``worker/flow.py``);
- broker/Redis outages are retried with backoff for ``outage_deadline`` s; what could not
  be delivered by then is answered with an error, never a traceback.
Answers come back on the client's own Redis list (``worker/answers.py``; threads may share
a client), or through the result backend where there is no Redis (``ClientOptions.answer_list``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from celery.result import AsyncResult

from .answer_checks import accept_answer, text_id
from .answers import FAILURE, SUCCESS, Answers, answers_for
from .flow import NOTHING, BrokerUnavailable, Feeder, Outage, chunks, linger_chunks
from .matrix import MatrixAnswer, check_matrix, encode_matrix, payload_rows
from .names import SCORE_BATCH, SCORE_JSON_BATCH, SCORE_MATRIX_BATCH, SCORING_QUEUE
from .records import answer_id
from .refusals import screen_batch, send_refusals, task_extras
from .settings import ClientOptions

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["UNANSWERED", "BrokerUnavailable", "ClientOptions", "ClientStats", "ScoringClient",
           "Unanswered", "chunks"]

UNANSWERED = "unanswered after"  # start of the error of a record no worker answered
log = logging.getLogger("nearwatch.client")


class Unanswered(str):
    """The JSON answer text of a record no worker answered (told apart by type, not text)."""

    __slots__ = ()


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
    records: list[Any]  # a numeric batch: one None per row
    task: str = SCORE_BATCH
    first_position: int | None = None  # text batches: input position of records[0]
    labels: list[str] | None = None  # text batches: each record's name instead (ingest)
    matrix: dict[str, Any] | None = None  # a numeric batch's payload (worker/matrix.py)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)  # kept when resubmitted
    attempts: list[AsyncResult] = field(default_factory=list)
    first_submitted_at: float = 0.0
    submitted_at: float = 0.0
    n_submitted: int = 0
    last_problem: str = ""
    local: dict[int, Any] = field(default_factory=dict)  # answered here, not by a worker
    refused: dict[str, list[Any]] = field(default_factory=dict)  # sent for dead letters


def _text_batch(lines: list[Any], first: int | list[str] | None) -> _Batch:
    labels = list(first) if isinstance(first, list) and len(first) == len(lines) else None
    return _Batch(lines, SCORE_JSON_BATCH, first if isinstance(first, int) else None, labels)


class ScoringClient:
    """Submits batches to the ``scoring`` queue of ``app`` and collects their answers."""

    def __init__(self, app: Celery, options: ClientOptions | None = None) -> None:
        self.app = app
        self.options = options or ClientOptions()
        self.stats = ClientStats()
        self.outage = Outage(self.options.outage_deadline)
        self.answers: Answers = answers_for(app, self.options.answer_list)  # list or backend

    def score(self, records: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """One result per record, in input order."""
        size = self.options.batch_size
        batches = chunks(records, size) if isinstance(records, Sequence) \
            else linger_chunks(records, size, self.options.linger)
        for results in self.score_batches(batches):
            yield from results

    def score_batches(self, batches: Iterable[list[Any]]) -> Iterator[list[dict[str, Any]]]:
        """One result list per batch, in input order; batches are consumed lazily."""
        return self._run(self._screen(_Batch(list(records))) for records in batches)

    def score_json_batches(self, batches: Iterable[tuple[list[Any], int | list[str] | None]]
                           ) -> Iterator[list[str]]:
        """Records as JSON texts → results as JSON texts (``nearwatch.score_json_batch``).

        Each batch is ``(lines, first_position)``; ``first_position`` (1-based input
        position of the first line, or None) lets the workers name records and give id-less
        records the id ``"#<position>"``; a list of texts instead names each record in errors
        and dead letters (``ingest``: its stream entry). Answers are checked by count only.
        """
        return self._run(self._screen(_text_batch(list(lines), first))
                         for lines, first in batches)

    def score_matrix_batches(self, batches: Iterable[Any]) -> Iterator[MatrixAnswer]:
        """Numeric batches (``worker/matrix.py``) → one ``MatrixAnswer`` per batch, in order.

        Each batch is a payload of ``encode_matrix(matrix, fields, ids, first_position)``;
        its ``batch`` tag (new if it has none) is kept when the batch is resubmitted."""
        return self._run(_Batch([None] * payload_rows(payload), SCORE_MATRIX_BATCH,  # type: ignore
                                matrix={"batch": uuid.uuid4().hex, **payload})
                         for payload in batches)

    def score_matrix(self, matrix: Any, fields: Sequence[str],
                     ids: Sequence[Any] | None = None) -> Iterator[MatrixAnswer]:
        """A numeric matrix (rows × ``fields``) in batches of ``batch_size`` rows."""
        check_matrix(matrix, fields, ids)  # before any batch is sent
        size, starts = self.options.batch_size, range(0, len(matrix), self.options.batch_size)
        answers = self.score_matrix_batches(
            encode_matrix(matrix[start:start + size], fields,
                          None if ids is None else ids[start:start + size], start + 1)
            for start in starts)
        return (replace(answer, start=start)
                for start, answer in zip(starts, answers, strict=True))

    def _screen(self, batch: _Batch) -> _Batch:
        """Answer here what must not be sent; it travels as a ``None`` stand-in, and its
        refusal beside the batch (``worker/refusals.py``) for the worker's dead letter."""
        batch.local, batch.refused = screen_batch(
            batch.records, batch.task == SCORE_JSON_BATCH, batch.first_position,
            self.options.limits, self.options.id_field, batch.labels)
        return batch

    def _run(self, batches: Iterator[_Batch]) -> Iterator[list[Any]]:
        pending: deque[_Batch] = deque()
        feeder: Feeder[_Batch] = Feeder(batches)
        try:
            while True:
                while len(pending) < self.options.max_in_flight:
                    batch = feeder.take(block=not pending)
                    if batch is NOTHING:
                        break
                    self.stats.batches += 1
                    if len(batch.local) < len(batch.records):
                        self._submit(batch)
                    elif batch.refused:  # answered whole here: sent only for dead letters
                        send_refusals(self.app, batch.task, *self._arguments(batch))
                    pending.append(batch)
                if not pending:
                    if feeder.exhausted:
                        return
                    continue
                results = self._resolve(pending[0], pending, feeder.exhausted)
                pending.popleft()
                yield results
        finally:
            feeder.close()
            for batch in pending:
                self._forget(batch)
            self.answers.close()

    # ------------------------------------------------------------------ internals
    def _arguments(self, batch: _Batch) -> tuple[list[Any], dict[str, Any]]:
        """The task's positional arguments and its optional keywords (``refusals.py``)."""
        args: list[Any] = [batch.records if batch.matrix is None else batch.matrix]
        if batch.task == SCORE_JSON_BATCH:
            args.append(batch.first_position)
        return args, task_extras(batch.refused, batch.labels,
                                 None if batch.matrix is not None else batch.tag)

    def _submit(self, batch: _Batch) -> None:
        args, extras = self._arguments(batch)
        options = self.answers.send_options()
        if extras:
            options["kwargs"] = {**options.get("kwargs", {}), **extras}
        self.answers.expect_id(task_id := uuid.uuid4().hex)  # before sending: threads share
        try:
            result = self.outage.call("send_task", lambda: self.app.send_task(
                batch.task, args=args, queue=SCORING_QUEUE, task_id=task_id,
                argsrepr=f"[{len(batch.records)} records]", kwargsrepr="{}", **options))
        except BaseException as exc:  # not sent: its answer list can go when the client does
            self.answers.forget_id(task_id)
            if not isinstance(exc, BrokerUnavailable):
                raise
            batch.last_problem = str(exc)  # answered as unanswered (no attempt in flight)
            return
        batch.attempts.append(result)
        batch.submitted_at = time.monotonic()
        if not batch.n_submitted:
            batch.first_submitted_at = batch.submitted_at
        batch.n_submitted += 1
        self.stats.submissions += 1
        if batch.n_submitted > 1:
            self.stats.resubmissions += 1

    def _resolve(self, head: _Batch, pending: deque[_Batch], exhausted: bool) -> list[Any]:
        if not head.records:
            return [] if head.matrix is None else MatrixAnswer.failed(0, "")  # type: ignore
        if len(head.local) == len(head.records):
            return [head.local[i] for i in range(len(head.records))]
        while True:
            try:
                answer = self._answer(head)
            except BrokerUnavailable as exc:
                head.last_problem = str(exc)
                self._forget(head)
                answer = self._give_up(head)
            if answer is not None:
                return answer
            now = time.monotonic()
            for batch in pending:  # resubmit any overdue batch, not only the head
                if batch.attempts and now - batch.submitted_at > self.options.batch_timeout:
                    batch.last_problem = f"no answer within {self.options.batch_timeout:g} s"
                    self._retry_or_give_up(batch)
            if head.attempts:
                # New input is submitted within 50 ms while there is room for it.
                longest = self.options.poll_interval if exhausted or \
                    len(pending) >= self.options.max_in_flight else 0.05
                wait = max(0.001, min(longest,
                                      head.submitted_at + self.options.batch_timeout - now))
                try:
                    self.outage.call("waiting for results",
                                     partial(self.answers.wait, list(head.attempts), wait))
                except BrokerUnavailable as exc:
                    head.last_problem = str(exc)
                    self._forget(head)

    def _answer(self, batch: _Batch) -> list[Any] | None:
        """The batch's accepted results, error answers if it gave up, else None."""
        if not batch.attempts:  # gave up
            return self._give_up(batch)
        texts = batch.task == SCORE_JSON_BATCH
        for attempt in list(batch.attempts):
            state, results = self.outage.call("reading a result",
                                              partial(self.answers.outcome, attempt, texts))
            if state == SUCCESS:
                accepted, problem = accept_answer(batch, results, self.options.id_field)
                if problem is None:
                    self._forget(batch)
                    self.stats.latencies.append(time.monotonic() - batch.first_submitted_at)
                    if batch.matrix is not None:
                        return accepted
                    for i, answer in batch.local.items():
                        results[i] = answer
                    return list(results)
                batch.last_problem = problem
            elif state == FAILURE:
                batch.last_problem = str(results)[:300]
            else:
                continue
            self.stats.failed_attempts += 1
            batch.attempts.remove(attempt)
            self.answers.forget(attempt)
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
        self.stats.unanswered += len(batch.records) - len(batch.local)
        reason = (f"{UNANSWERED} {batch.n_submitted} attempt(s): "
                  f"{batch.last_problem or 'no answer'}")
        if batch.matrix is not None:
            return MatrixAnswer.failed(len(batch.records), reason)  # type: ignore[return-value]
        answers: list[Any] = []
        for i, record in enumerate(batch.records):
            if i in batch.local:
                answers.append(batch.local[i])
            elif batch.task == SCORE_JSON_BATCH:
                first = batch.first_position
                position = None if first is None else first + i
                answers.append(Unanswered(json.dumps({
                    "id": text_id(record, self.options.id_field, position),
                    "error": reason if position is None else f"record #{position}: {reason}"})))
            else:
                answers.append({"id": answer_id(record, self.options.id_field),
                                "error": reason})
        return answers

    def _forget(self, batch: _Batch) -> None:
        for attempt in batch.attempts:
            self.answers.forget(attempt)
        batch.attempts.clear()
