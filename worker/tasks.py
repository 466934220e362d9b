"""Celery tasks: stable explicit names, JSON arguments, thin bodies calling the runtime.

``nearwatch.score_batch`` runs with ``acks_late`` + ``reject_on_worker_lost``: the broker
message is acknowledged only after the answer is stored, and a batch whose process died is
requeued. Re-running is safe: scoring is a pure function of (records, model), and alert
events, dead letters and the reference buffer's writes (with the drift counts) are keyed by
the batch's delivery (``delivery_key``: the producer's batch tag, kept when it resubmits),
so a redelivered or resubmitted batch gives the same answers and writes no second event,
dead letter or buffer entry, while the same records sent again by a producer are new ones.

With ``answer_key`` (what ``ScoringClient`` sends when it has Redis), the answer is pushed
onto that Redis list (``worker/answers.py``) before the message is acknowledged and the task
returns nothing (sent with ``ignore_result``); without it, the answer is the task's result.

The names live in ``worker/names.py`` and the process's scorer in ``worker/pool.py``, so this
module does not import the app (the app imports it, through Celery's ``imports``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task, shared_task

from .answers import check_answer_key, encode_answer, failure_entry
from .names import SCORE_BATCH, SCORE_JSON_BATCH, SCORE_MATRIX_BATCH
from .pool import push_answer_for, scorer_for


@shared_task(
    name=SCORE_BATCH, bind=True, acks_late=True,
    reject_on_worker_lost=True, ignore_result=False,
)
def score_batch(self: Task, records: list[Any], answer_key: str | None = None,
                refused: dict[str, Any] | None = None, batch: str | None = None
                ) -> list[dict[str, Any]] | None:
    """Score a list of records; one result per record, same order (see ARCHITECTURE.md).
    ``refused``: the producer's refusals of its ``None`` stand-ins (``worker/refusals.py``);
    ``batch``: the producer's tag of the batch, kept when it resubmits it."""
    def score() -> list[dict[str, Any]]:
        if not isinstance(records, list):
            raise TypeError(f"score_batch takes a list of records, got {type(records).__name__}")
        return scorer_for(self.app).score_batch(
            records, delivery_key(self, answer_key, tag=batch), refused)

    return _answer(self, answer_key, score, texts=False)


@shared_task(
    name=SCORE_JSON_BATCH, bind=True, acks_late=True,
    reject_on_worker_lost=True, ignore_result=False,
)
def score_json_batch(self: Task, lines: list[str], first_position: int | None = None,
                     answer_key: str | None = None, refused: dict[str, Any] | None = None,
                     labels: list[str] | None = None, batch: str | None = None
                     ) -> list[str] | None:
    """Like ``score_batch`` for records as JSON texts; answers are JSON texts.

    Producers that hold JSON already (`nearwatch stream`, `nearwatch ingest`) skip a parse
    and a serialisation on their side; the pool does both, in parallel. ``labels``: each
    record's name in errors and dead letters (``ingest``'s stream entries).
    """
    def score() -> list[str]:
        if not isinstance(lines, list):
            raise TypeError("score_json_batch takes a list of JSON texts, got "
                            f"{type(lines).__name__}")
        return scorer_for(self.app).score_json(
            lines, first_position, delivery_key(self, answer_key, first_position, batch),
            refused, labels)

    return _answer(self, answer_key, score, texts=True)


@shared_task(
    name=SCORE_MATRIX_BATCH, bind=True, acks_late=True,
    reject_on_worker_lost=True, ignore_result=False,
)
def score_matrix_batch(self: Task, batch: dict[str, Any], answer_key: str | None = None
                       ) -> dict[str, Any] | None:
    """A numeric batch (``worker/matrix.py``): a matrix in, score columns out. The
    producer's batch tag (kept when it resubmits the batch) names the delivery."""
    tag = batch.get("batch") if isinstance(batch, dict) else None
    delivery = f"{answer_key or ''}@m:{tag}" if _is_tag(tag) else delivery_key(self, answer_key)
    return _answer(self, answer_key,
                   lambda: scorer_for(self.app).score_matrix(batch, delivery), texts=False)


def delivery_key(task: Task, answer_key: str | None, first_position: int | None = None,
                 tag: Any = None) -> str:
    """What a redelivery shares with the first delivery: the producer's batch tag (kept when
    it resubmits an overdue batch as a new task) with its answer list; else, for a positioned
    batch, its answer list and first position; else the task id (a broker redelivery keeps
    it, a resubmission does not)."""
    if _is_tag(tag):
        return f"{answer_key or ''}@b:{tag}"
    if answer_key is not None and isinstance(first_position, int):
        return f"{answer_key}@{first_position}"
    return f"task:{task.request.id}"


def _is_tag(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64


def _answer(task: Task, answer_key: str | None, score: Callable[[], Any], texts: bool
            ) -> Any:
    """The answer as the task's result, or pushed to ``answer_key`` (a failure, too: the
    producer then resubmits or gives up at once instead of after its batch timeout)."""
    if answer_key is None:
        return score()
    check_answer_key(answer_key)  # a message may only name a producer's answer list
    task_id = str(task.request.id)
    try:
        answers = score()
    except Exception as exc:
        push_answer_for(task.app, answer_key, failure_entry(task_id, exc), best_effort=True)
        raise
    push_answer_for(task.app, answer_key, encode_answer(task_id, answers, texts))
    return None
