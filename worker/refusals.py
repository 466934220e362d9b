"""Records a producer refuses: answered by the producer, dead-lettered and counted by a worker.

A producer (``ScoringClient``, so ``stream``, ``ingest`` and Python callers) answers a record
itself when the broker cannot carry it or the limits refuse it, and sends a ``None`` stand-in
in its place, so that batch positions stay aligned. Beside the batch it sends ``refused``:
``{position in the batch (a string): [reason, error, excerpt, id]}`` (``id``: the record's,
where it has a valid one, else null). The worker then writes the
dead letter with the producer's reason and the excerpt of the record, and counts it in
``nearwatch_record_errors_total{reason}``, as it does for a record it refused itself. The
excerpt is short (``EXCERPT_CHARS``): a refused record may be a 10 MB line.

>>> wire = {"0": refusal("too_large", "record #1: too big", "x" * 5000, 7)}
>>> reason, error, text, record_id = read_refusals(wire, [None], max_error_chars=40)[0]
>>> reason, error, len(text), record_id
('too_large', 'record #1: too big', 1025, 7)
>>> read_refusals({"0": ["made_up", "e", "r", [1]], "9": ["too_large", "e", "r", None],
...                "²": ["too_large", "e", "r", None], "0" * 5000: ["too_large", "e", "r", 1]},
...               [None], 40)
{0: ('invalid_json', 'e', 'r', None)}
>>> len(excerpt({"id": 1, "x": "a" * 10_000_000})) <= EXCERPT_CHARS + 1
True
>>> read_labels(["stream entry 1-0"], 1), read_labels(["a"], 2), read_labels([3], 1)
(['stream entry 1-0'], None, None)
"""

from __future__ import annotations

import json
import logging
import reprlib
from typing import Any

from .names import SCORING_QUEUE
from .records import INVALID_JSON, RecordRefused, answer_id, check_text, screen_record, truncate
from .settings import RecordLimits

log = logging.getLogger("nearwatch.client")
EXCERPT_CHARS = 1024  # of a refused record, in its dead letter
# Reasons a producer may give (the worker's metric labels; anything else is invalid_json).
PRODUCER_REASONS = ("invalid_json", "too_large", "invalid_id", "not_an_object")


def refusal(reason: str, error: str, record: Any, record_id: Any = None) -> list[Any]:
    """The wire form of one refused record: ``[reason, error, excerpt, id]``."""
    return [reason, error, excerpt(record), record_id]


def excerpt(record: Any, chars: int = EXCERPT_CHARS) -> str:
    """The first ``chars`` characters of a refused record: the line itself, or a bounded repr
    of an object (a 200 MB string or a 5-million-item list is not copied)."""
    if isinstance(record, bytes):
        text = record[: chars * 4].decode("utf-8", "replace")
    elif isinstance(record, str):
        text = record[: chars + 1]
    else:
        try:
            text = _SHORT_REPR.repr(record)
        except Exception:  # a repr that fails must not fail the batch
            text = f"<{type(record).__name__}>"
    return text if len(text) <= chars else text[:chars] + "…"


def record_excerpt(record: Any, limit: int = 65_536) -> str:
    """A dead letter's copy of the record: its JSON (or text) cut to ``limit`` characters."""
    if isinstance(record, bytes):
        record = record[: limit * 4].decode("utf-8", "replace")
    if isinstance(record, str):
        return record[:limit]
    try:
        return json.dumps(record, default=str)[:limit]
    except (ValueError, RecursionError):
        return f"<{type(record).__name__} that JSON cannot hold>"


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = EXCERPT_CHARS
    short.maxlevel, short.maxdict, short.maxlist, short.maxtuple = 4, 64, 64, 64
    short.maxset = short.maxfrozenset = short.maxdeque = short.maxarray = 64
    return short


_SHORT_REPR = _short_repr()


def read_refusals(value: Any, records: list[Any], max_error_chars: int
                  ) -> dict[int, tuple[str, str, str, Any]]:
    """``{index: (reason, error, excerpt, id)}`` from a task's ``refused`` argument.

    It comes off the wire, so only well-formed entries that name a ``None`` stand-in count;
    texts are cut to the limits, an unknown reason becomes ``invalid_json`` and an id that
    is not a string or a finite number becomes None."""
    if not isinstance(value, dict):
        return {}
    refusals: dict[int, tuple[str, str, str, Any]] = {}
    for key, entry in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 9
                and isinstance(entry, list) and len(entry) == 4
                and all(isinstance(part, str) for part in entry[:3])):
            continue
        index = int(key)
        if index >= len(records) or records[index] is not None:
            continue
        reason, error, text, record_id = entry
        refusals[index] = (reason if reason in PRODUCER_REASONS else INVALID_JSON,
                           truncate(error, max_error_chars), excerpt(text),
                           answer_id({"id": record_id}, "id"))
    return refusals


def screen_batch(records: list[Any], texts: bool, first_position: int | None,
                 limits: RecordLimits, id_field: str, labels: list[str] | None = None
                 ) -> tuple[dict[int, Any], dict[str, list[Any]]]:
    """The producer's side: ``(answers given here, refusals to send)`` for a batch, whose
    refused records are replaced in place by ``None`` stand-ins. ``texts``: JSON texts
    (answers are JSON texts) rather than objects; a reader may have put a ``RecordRefused``
    in a record's place (a line it could not read)."""
    local: dict[int, Any] = {}
    refused: dict[str, list[Any]] = {}
    for i, record in enumerate(records):
        try:
            if isinstance(record, RecordRefused):
                raise record
            if texts:
                if not isinstance(record, str):
                    raise RecordRefused(INVALID_JSON, "not a JSON text")
                check_text(record, limits)
            else:
                screen_record(record, limits, id_field)
        except RecordRefused as exc:
            record_id = None if texts else answer_id(record, id_field)
            if texts:
                error = f"{record_label(i, first_position, labels)}: {exc}"
                local[i] = json.dumps({"id": None, "error": error}, separators=(",", ":"))
            else:
                error = str(exc)
                local[i] = {"id": record_id, "error": error}
            source = exc.text if exc.text is not None else \
                "" if isinstance(record, RecordRefused) else record
            refused[str(i)] = refusal(exc.reason, error, source, record_id)
            records[i] = None
    return local, refused


def record_label(i: int, first_position: int | None, labels: list[str] | None) -> str:
    """How errors name record ``i`` of a text batch: the producer's label (``ingest``: its
    stream entry), its input position (``stream``), else its place in the batch."""
    if labels is not None:
        return labels[i]
    return f"record {i} of the batch" if first_position is None else \
        f"record #{first_position + i}"


def task_extras(refused: dict[str, list[Any]], labels: list[str] | None,
                tag: str | None = None) -> dict[str, Any]:
    """The optional task keywords a batch needs (``refused`` and ``labels`` sent only when
    used: older workers refuse them); ``tag``: the batch's name, the same when the producer
    resubmits it, so that a worker takes its side effects once (``worker.tasks``)."""
    extras: dict[str, Any] = {"refused": refused} if refused else {}
    if labels is not None:
        extras["labels"] = labels
    if tag is not None:
        extras["batch"] = tag
    return extras


def read_labels(value: Any, n_records: int) -> list[str] | None:
    """A task's ``labels`` argument (each record's name in errors), if well-formed."""
    if isinstance(value, list) and len(value) == n_records and all(
            isinstance(label, str) and 0 < len(label) <= 200 for label in value):
        return value
    return None


def send_refusals(app: Any, task: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """A batch the producer answered whole is still sent once, for the workers' dead letters:
    best effort (no answer awaited, nothing stored, a broker outage only logged), so its
    answers are never held back by it."""
    try:
        app.send_task(task, args=args, kwargs=kwargs, queue=SCORING_QUEUE, ignore_result=True,
                      argsrepr=f"[{len(args[0])} refused records]", kwargsrepr="{}")
    except Exception as exc:  # the records are answered; only their dead letters are lost
        log.warning("could not send %d refused records for their dead letters: %s",
                    len(args[0]), exc)
