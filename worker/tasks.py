"""Celery tasks: stable explicit names, JSON arguments, thin bodies calling the runtime.

``nearwatch.score_batch`` runs with ``acks_late`` + ``reject_on_worker_lost``: the broker
message is acknowledged only after the result is stored, and a batch whose process died is
requeued. Re-running is safe: scoring is a pure function of (records, model), dead letters
are deduplicated per record, so a redelivered batch gives the same answers.

The names live in ``worker/names.py`` and the process's scorer in ``worker/pool.py``, so this
module does not import the app (the app imports it, through Celery's ``imports``).
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from .names import SCORE_BATCH, SCORE_JSON_BATCH
from .pool import scorer_for


@shared_task(
    name=SCORE_BATCH, bind=True, acks_late=True,
    reject_on_worker_lost=True, ignore_result=False,
)
def score_batch(self: Task, records: list[Any]) -> list[dict[str, Any]]:
    """Score a list of records; one result per record, same order (see ARCHITECTURE.md)."""
    if not isinstance(records, list):
        raise TypeError(f"score_batch takes a list of records, got {type(records).__name__}")
    return scorer_for(self.app).score_batch(records)


@shared_task(
    name=SCORE_JSON_BATCH, bind=True, acks_late=True,
    reject_on_worker_lost=True, ignore_result=False,
)
def score_json_batch(self: Task, lines: list[str], first_position: int | None = None
                     ) -> list[str]:
    """Like ``score_batch`` for records as JSON texts; answers are JSON texts.

    Producers that hold JSON already (`nearwatch stream`, `nearwatch ingest`) skip a parse
    and a serialisation on their side; the pool does both, in parallel.
    """
    if not isinstance(lines, list):
        raise TypeError(f"score_json_batch takes a list of JSON texts, got {type(lines).__name__}")
    return scorer_for(self.app).score_json(lines, first_position)
