"""`nearwatch score`'s reading and scoring of a record file, chunk by chunk: every input
record (a line that is not one included) answered in place, its error naming its position."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from nearwatch.detector.io import UnreadableRecord, iter_jsonl, read_records, text_lines

from .settings import RecordLimits


def screen_chunk(chunk: list[Any], start: int, id_field: str, limits: RecordLimits) -> list[Any]:
    """Records beyond the limits, or with an id JSON cannot carry, become unreadable (with
    their id, where it is valid: a record over a limit is still named by it)."""
    from .records import RecordRefused, answer_id, check_record

    screened = []
    for i, record in enumerate(chunk):
        if isinstance(record, dict):
            try:
                check_record(record, limits, id_field)
            except RecordRefused as exc:
                record = UnreadableRecord(start + i + 1, f"record {start + i + 1}: {exc}",
                                          answer_id(record, id_field))
        screened.append(record)
    return screened


def read_scored(data_path: Path, max_line_bytes: int) -> Any:
    """Records from a file, or JSON lines from stdin (``-``)."""
    if str(data_path) != "-":
        return read_records(data_path, max_line_bytes=max_line_bytes).records
    return list(iter_jsonl(text_lines(sys.stdin.buffer), max_line_bytes))


def score_chunk(detector: Any, chunk: list[Any], start: int, n_fields: int = 0
                 ) -> list[dict[str, Any]]:
    """Score a chunk; unreadable lines are answered with their parse error, in place. An
    error names its record by its 1-based position in the input, as ``screen_chunk`` does.
    With ``n_fields``, flagged records also get their most deviating fields."""
    readable = [r for r in chunk if not isinstance(r, UnreadableRecord)]
    scored_results = detector.score_records(readable, n_neighbours=3)
    if n_fields:
        flagged = [i for i, r in enumerate(scored_results) if r.get("is_anomaly")]
        encoder = detector.feature_encoder_  # explaining reads the records again: not counted
        counted = (dict(encoder.missing_fields_seen_), dict(encoder.unseen_categories_seen_),
                   encoder.unknown_fields_seen_)
        explained = detector.explain([readable[i] for i in flagged], n_neighbours=1,
                                     n_fields=n_fields) if flagged else []
        (encoder.missing_fields_seen_, encoder.unseen_categories_seen_,
         encoder.unknown_fields_seen_) = counted
        for i, explanation in zip(flagged, explained, strict=True):
            scored_results[i]["fields"] = explanation["fields"]
    scored = iter(scored_results)
    results = []
    for position, record in enumerate(chunk, start=start + 1):
        if isinstance(record, UnreadableRecord):
            results.append({"id": record.record_id, "error": record.reason})
            continue
        result = next(scored)
        prefix = f"record {result.pop('index', None)}"
        error = result.get("error")
        if isinstance(error, str) and (error.startswith(prefix + " ") or
                                       error.startswith(prefix + ":")):
            result["error"] = f"record {position}{error[len(prefix):]}"
        results.append(result)
    return results

