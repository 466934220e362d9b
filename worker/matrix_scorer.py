"""The worker's side of a numeric batch (``worker/matrix.py``): decode, score, answer.

The same side effects as a batch of JSON records (``BatchScorer._score``): dead letters for
bad rows (one per row and delivery: a redelivery writes none twice), alert events for flagged
ones (their ``event_id`` is the same on a redelivery, so the consumer counts them once), the
reference buffer and the metrics. They read records through ``RowRecords``, which builds a
row's record only when it is read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from nearwatch.detector.matrix_scoring import field_names, matrix_refusal, score_matrix

from .matrix import MatrixAnswer, MatrixPayloadError, RowRecords, batch_rows, decode_matrix
from .records import truncate

if TYPE_CHECKING:
    from .runtime import BatchScorer

INVALID_BATCH = "invalid_batch"  # dead-letter and metric reason of an unreadable batch
SCORING_FAILED = "scoring_failed"
log = logging.getLogger("nearwatch.worker")


def score_matrix_payload(scorer: BatchScorer, payload: Any, delivery: str | None = None
                         ) -> dict[str, Any]:
    """The wire answer of one numeric batch; every row is answered, a bad row or an
    unreadable batch never fails the task (a payload that names no row count does)."""
    started = time.perf_counter()
    delivery = uuid.uuid4().hex if delivery is None else delivery
    version, detector = scorer.holder.current()
    limit = scorer.limits.max_error_chars
    model_fields = field_names(detector)
    try:
        refusal = matrix_refusal(detector)
        if refusal is not None:
            raise MatrixPayloadError(refusal)
        batch = decode_matrix(payload, model_fields)
    except MatrixPayloadError as exc:
        rows = batch_rows(payload)
        if not rows:  # no row count to answer (the task fails, saying why)
            raise
        return _batch_failed(scorer, payload, rows, f"numeric batch of {rows} rows: {exc}",
                             INVALID_BATCH, version, detector, delivery, started)
    try:
        explain = 0 if scorer.alerts is None else scorer.alerts.explain_max
        scored = score_matrix(detector, batch.matrix, explain=explain)
    except Exception:  # every row answered; the same batch fails the same way next time
        log.exception("scoring failed for a numeric batch of %d rows", len(batch.matrix))
        return _batch_failed(scorer, payload, len(batch.matrix), "internal error while "
                             "scoring this numeric batch (see worker log)", SCORING_FAILED,
                             version, detector, delivery, started)
    errors = {row: truncate(_error_text(batch.label(row), error), limit)
              for row, error in scored.errors.items()}
    records = RowRecords(batch, model_fields, detector.id_field)
    results = _result_dicts(batch, scored, errors, detector.threshold_ is not None)
    for row in errors:
        scorer._dead_letter(records[row], dict(results[row]), "invalid_field", version,
                            f"{delivery}#{row}")
    if scorer.alerts is not None:  # flagged rows only: their records are built here
        scorer.alerts.emit(detector, version, records, results, delivery,  # type: ignore[arg-type]
                           scored.fields)
    if scorer.buffer is not None:
        scorer.buffer.write(detector, version, records, results,  # type: ignore[arg-type]
                            delivery=delivery)
    if scorer.metrics is not None:
        scorer.metrics.batch_scored(results, ["invalid_field"] * len(errors),
                                    time.perf_counter() - started)
    answer = MatrixAnswer(scored.score, scored.p_value, scored.is_anomaly, errors,
                          scored.neighbours)
    return _with_model(answer, version, detector).to_wire()


def _batch_failed(scorer: BatchScorer, payload: dict[str, Any], rows: int, message: str,
                  reason: str, version: str, detector: Any, delivery: str, started: float
                  ) -> dict[str, Any]:
    """Every row answered with ``message``; one dead letter for the batch."""
    message = truncate(message, scorer.limits.max_error_chars)
    excerpt = {k: _bounded(v) for k, v in payload.items() if k != "data"}
    scorer._dead_letter(excerpt, {"id": None, "error": message}, reason, version,
                        f"{delivery}#batch")
    if scorer.metrics is not None:
        scorer.metrics.batch_scored([], [reason] * rows, time.perf_counter() - started)
    return _with_model(MatrixAnswer.failed(rows, message), version, detector).to_wire()


def _bounded(value: Any) -> Any:
    """A payload value as JSON, cut for a dead letter: lists to 50 items, texts to 200."""
    if isinstance(value, list):
        return [_bounded(item) for item in value[:50]] + (["..."] if len(value) > 50 else [])
    if isinstance(value, str):
        return value[:200]
    return value if value is None or isinstance(value, int | float | bool) else str(value)[:200]


def _error_text(label: str, error: Any) -> str:
    if error.field is None:
        return f"{label}: {error.reason}"
    return f"{label}: field {error.field!r}: {error.reason}"


def _with_model(answer: MatrixAnswer, version: str, detector: Any) -> MatrixAnswer:
    bound, threshold = detector.fpr_bound_, detector.threshold_
    return dataclasses.replace(
        answer, model_version=version, threshold=None if threshold is None else float(threshold),
        certified=bool(detector.certified_), fpr_bound=None if bound is None else float(bound))


def _result_dicts(batch: Any, scored: Any, errors: dict[int, str], has_threshold: bool
                  ) -> list[dict[str, Any]]:
    """The per-row results the alert writer, the buffer and the metrics read (no records)."""
    results: list[dict[str, Any]] = []
    flags = scored.is_anomaly.tolist() if has_threshold else [None] * len(batch.matrix)
    for row, (score, p_value, flag) in enumerate(zip(
            scored.score.tolist(), scored.p_value.tolist(), flags, strict=True)):
        answer_id = batch.answer_id(row)
        if row in errors:
            results.append({"id": answer_id, "error": errors[row]})
        elif flag:
            results.append({"id": answer_id, "score": score, "p_value": p_value,
                            "is_anomaly": flag, "neighbours": scored.neighbours.get(row, [])})
        else:
            results.append({"id": answer_id, "score": score, "p_value": p_value,
                            "is_anomaly": flag})
    return results
