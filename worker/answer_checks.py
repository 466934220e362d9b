"""How a producer checks a worker's answer before accepting it (``worker/client.py``)."""

from __future__ import annotations

import json
from typing import Any

from .names import SCORE_JSON_BATCH, SCORE_MATRIX_BATCH
from .records import answer_id, check_reserved_id


def text_id(text: Any, id_field: str, position: int | None) -> Any:
    """The id a worker would answer an unanswered record text with: its own, else "#<n>"."""
    try:
        record = json.loads(text)
        if isinstance(record, dict):
            check_reserved_id(record, id_field)  # a reserved id: the worker refuses the record
    except (TypeError, ValueError, RecursionError):  # RecordRefused is a ValueError
        return None
    own = answer_id(record, id_field) if isinstance(record, dict) else None
    return own if own is not None or position is None else f"#{position}"


def accept_answer(batch: Any, results: Any, id_field: str) -> tuple[Any, str | None]:
    """(the answer to hand out, None), or (None, why it cannot be accepted for ``batch``)."""
    if batch.task == SCORE_MATRIX_BATCH:
        from .matrix import MatrixAnswer

        try:
            return MatrixAnswer.from_wire(results, len(batch.records)), None
        except (ValueError, KeyError, TypeError) as exc:  # binascii.Error is a ValueError
            return None, f"undecodable answer: {exc}"[:300]
    problem = check_answer(batch, results, id_field)
    return (None, problem) if problem is not None else (results, None)


def check_answer(batch: Any, results: Any, id_field: str) -> str | None:
    """Why an answer cannot be accepted for ``batch``, or None when it matches."""
    records = batch.records
    if not isinstance(results, list) or len(results) != len(records):
        count = len(results) if isinstance(results, list) else "?"
        return f"answer has {count} results for {len(records)} records"
    if batch.task == SCORE_JSON_BATCH:
        return None if all(isinstance(r, str) for r in results) else "answer is not JSON texts"
    for i, (record, result) in enumerate(zip(records, results, strict=True)):
        if i in batch.local:
            continue
        expected = answer_id(record, id_field)
        # answer_id: None for an id JSON cannot carry (NaN), as the worker answers it
        if not isinstance(result, dict) or result.get("id") != expected:
            got = result.get("id") if isinstance(result, dict) else None
            hint = (f" (the answer names {got!r}: does the model use another id field than "
                    f"this client's {id_field!r}? ClientOptions(id_field=...))"
                    if expected is None and got is not None else "")
            return f"answer does not match record id {expected!r}{hint}"
    return None
