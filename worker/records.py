"""Record hygiene shared by the producers and the workers: limits, parsing, strict output.

Every record is answered; these helpers turn what would otherwise crash a batch (a line too
large, nested too deep, not UTF-8, an id that cannot round-trip through JSON) into a
``RecordRefused`` with a reason and a short message, which the caller answers in place.

>>> limits = RecordLimits(max_bytes=64, max_fields=3, max_depth=2, max_error_chars=40)
>>> parse_record('{"id": 123456789012345678901234567890}', limits)
{'id': 123456789012345678901234567890}
>>> try:
...     parse_record('{"id": 1, "x": ' + '[' * 3 + ']' * 3 + '}', limits)
... except RecordRefused as exc:
...     print(exc.reason, exc)
too_large record nested deeper than 2 levels
>>> dump_result({"id": float("nan"), "score": 1.5})
'{"id":null,"score":1.5}'
>>> truncate("x" * 50, 20)
'xxxxxxxxxx… (50 chars)'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson
from nearwatch.detector.io import json_problem

from .settings import RecordLimits

__all__ = ["RecordLimits", "RecordRefused", "check_record", "check_text", "decode_line",
           "dump_result", "parse_record", "screen_record", "truncate"]

# Reasons (also the `reason` label of nearwatch_record_errors_total).
TOO_LARGE = "too_large"
INVALID_ID = "invalid_id"
INVALID_JSON = "invalid_json"
_RESERVED_ID = re.compile(r"^#\d+$")  # ids `stream` gives records without one


class RecordRefused(ValueError):
    """A record (or line) that is answered with an error before it reaches the model."""

    def __init__(self, reason: str, message: str, text: str | bytes | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.text = text  # the refused input, where a reader had it (for the dead letter)
        self.record_id: Any = None  # a record refused once parsed: its id, if a valid one


def truncate(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: max(0, limit // 2)]}… ({len(text)} chars)"


def decode_line(raw: bytes) -> str:
    """UTF-8 text of one input line (BOM removed); ``RecordRefused`` if it is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordRefused(INVALID_JSON, f"not valid UTF-8 (byte {exc.start}: "
                            f"{raw[exc.start:exc.start + 4]!r})") from None
    return text[1:] if text.startswith("\ufeff") else text


def check_text(text: str | bytes, limits: RecordLimits) -> None:
    """Refuse a record text longer than ``limits.max_bytes`` (before it is parsed)."""
    size = len(text)
    if isinstance(text, str) and 4 * size > limits.max_bytes:
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise RecordRefused(TOO_LARGE, f"record of {size} bytes exceeds the limit of "
                            f"{limits.max_bytes} bytes")


def parse_record(text: str | bytes, limits: RecordLimits, id_field: str = "id") -> Any:
    """Parse one record text exactly (big integers stay integers) within ``limits``.

    orjson reads an integer beyond 64 bits as a float (of magnitude >= 2**63): only a record
    holding such a float (or a NaN/Infinity literal, which orjson refuses) is parsed again
    with ``json``, which keeps the integer exact (a literal like ``1e19`` stays a float).
    """
    check_text(text, limits)
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    value: Any = None
    try:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc):
                raise RecordRefused(TOO_LARGE, "record nested deeper than "
                                    f"{limits.max_depth} levels") from None
            value = json.loads(data)  # NaN/Infinity literals: json's meaning
            if isinstance(value, dict):
                check_record(value, limits, id_field)
        else:
            if type(value) is dict:
                if _check_parsed(value, limits, id_field):
                    value = json.loads(data)  # exact integers beyond 64 bits
                    check_record(value, limits, id_field)
            elif _inexact(value, limits.max_depth + 1):
                value = json.loads(data)
    except RecordRefused as exc:
        if isinstance(value, dict):  # beyond a limit: its answer and dead letter keep its id
            exc.record_id = _exact_id(value, data, id_field)
        raise
    except RecursionError:
        raise RecordRefused(TOO_LARGE, f"record nested deeper than {limits.max_depth} "
                            "levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordRefused(INVALID_JSON, f"not valid JSON: {truncate(json_problem(exc), 200)}"
                            ) from None
    return value


def _exact_id(record: dict[str, Any], data: bytes, id_field: str) -> Any:
    """``answer_id`` of a record refused once parsed, exact where orjson read a big integer."""
    if type(record.get(id_field)) is float and not -_BIG < record[id_field] < _BIG:
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):  # deeper than json can go: no id
            return None
    return answer_id(record, id_field)


_BIG = float(2**63)  # orjson's float for an integer literal beyond 64 bits is at least this


def _check_parsed(record: dict[str, Any], limits: RecordLimits, id_field: str) -> bool:
    """``check_record`` for a record orjson parsed, fused with the search for integers it
    read as floats (one pass over the values): True when it must be parsed again exactly."""
    if len(record) > limits.max_fields:
        raise RecordRefused(TOO_LARGE, f"record has {len(record)} fields, more than the limit "
                            f"of {limits.max_fields}")
    inexact = False
    for value in record.values():
        kind = type(value)
        if kind is float:
            if not -_BIG < value < _BIG:
                inexact = True
        elif kind is dict or kind is list:
            if _depth(value, limits.max_depth) > limits.max_depth:
                raise RecordRefused(TOO_LARGE, f"record nested deeper than "
                                    f"{limits.max_depth} levels")
            inexact = inexact or _inexact(value, limits.max_depth + 1)
    if not inexact:
        check_id(record.get(id_field), id_field)
    return inexact


def _inexact(value: Any, depth: int) -> bool:
    """Whether a float of magnitude >= 2**63 is anywhere in ``value`` (to ``depth`` levels)."""
    kind = type(value)
    if kind is float:
        return not -_BIG < value < _BIG
    if depth < 0 or (kind is not dict and kind is not list):
        return False
    items = value.values() if kind is dict else value
    return any(_inexact(item, depth - 1) for item in items)


def check_record(record: dict[str, Any], limits: RecordLimits, id_field: str = "id") -> None:
    """Refuse too many fields, too deep nesting, or an id that cannot round-trip."""
    if len(record) > limits.max_fields:
        raise RecordRefused(TOO_LARGE, f"record has {len(record)} fields, more than the limit "
                            f"of {limits.max_fields}")
    for value in record.values():
        if isinstance(value, (dict, list)) and \
                _depth(value, limits.max_depth) > limits.max_depth:
            raise RecordRefused(TOO_LARGE, f"record nested deeper than {limits.max_depth} "
                                "levels")
    check_id(record.get(id_field), id_field)


def check_id(value: Any, id_field: str = "id") -> None:
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordRefused(INVALID_ID, f"{id_field} {value!r} is not a finite number (JSON "
                            "has no NaN/Infinity)")
    if not isinstance(value, int | float):
        raise RecordRefused(INVALID_ID, f"{id_field} must be a string or a number, got "
                            f"{type(value).__name__}")


def check_reserved_id(record: dict[str, Any], id_field: str) -> None:
    """`stream` names id-less records "#<n>": a record may not claim such an id itself."""
    value = record.get(id_field)
    if isinstance(value, str) and _RESERVED_ID.match(value):
        raise RecordRefused(INVALID_ID, f"{id_field} {value!r} is reserved (\"#<n>\" names "
                            "records without an id)")


def screen_record(record: Any, limits: RecordLimits, id_field: str = "id") -> None:
    """The Python client's check before sending a parsed record: JSON types only, within
    ``limits`` (a record the broker's JSON cannot carry must not fail its batch)."""
    budget = [limits.max_bytes, limits.max_bytes]  # what is left, the limit
    _walk(record, limits.max_depth + 1, budget)
    if isinstance(record, dict):
        check_record(record, limits, id_field)


def _walk(value: Any, depth: int, budget: list[int], path: str = "") -> None:
    where = f"field {path!r}: " if path else ""  # the top-level field a bad value is under
    if depth < 0:
        raise RecordRefused(TOO_LARGE, f"{where}record nested too deep")
    if isinstance(value, str):
        budget[0] -= len(value) + 2
    elif value is None or isinstance(value, bool | int | float):
        budget[0] -= 8
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RecordRefused(INVALID_JSON, f"{where}key {truncate(repr(key), 80)} is "
                                    "not a string")
            budget[0] -= len(key) + 3
            _walk(item, depth - 1, budget, path or truncate(key, 80))
    elif isinstance(value, list | tuple):
        for item in value:
            _walk(item, depth - 1, budget, path)
    else:
        hint = " (numpy: .item() or .tolist(); or send a matrix)" \
            if type(value).__module__ == "numpy" else ""
        raise RecordRefused(INVALID_JSON, f"{where}a {type(value).__name__} is not a JSON "
                            f"value{hint}")
    if budget[0] < 0:
        raise RecordRefused(TOO_LARGE, f"record exceeds the size limit of {budget[1]} bytes")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value``, counted up to just past ``limit``."""
    if limit < 0:
        return 1
    children = value.values() if isinstance(value, dict) else value
    deepest = 0
    for item in children:
        if isinstance(item, dict | list):
            deepest = max(deepest, _depth(item, limit - 1))
            if deepest > limit:
                break
    return 1 + deepest


def dump_result(result: Any) -> str:
    """Compact, strict JSON (non-finite numbers become null; big integers stay exact)."""
    try:
        return orjson.dumps(result).decode()
    except TypeError:  # an integer beyond 64 bits (an id): json writes it exactly
        return json.dumps(_finite(result), separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


PRODUCER_REFUSED = "refused by the producer"  # answer to a None stand-in (client replaces it)


def prepare_lines(lines: list[Any], first_position: int | None, id_field: str,
                  limits: RecordLimits, label: Callable[[int], str]
                  ) -> tuple[list[Any], dict[int, tuple[str, str, Any]]]:
    """The worker's text path: JSON texts → records, and ``{index: (reason, error, id)}`` for
    those refused before scoring. ``None`` is a producer's stand-in for a line it answered
    itself; with ``first_position`` (`stream`), id-less records get ``"#<position>"``."""
    records: list[Any] = []
    refused: dict[int, tuple[str, str, Any]] = {}
    for i, line in enumerate(lines):
        record: Any = line
        try:
            if line is None:
                raise RecordRefused(INVALID_JSON, PRODUCER_REFUSED)
            if not isinstance(line, str | bytes):
                raise RecordRefused(INVALID_JSON, f"not a JSON text ({type(line).__name__})")
            record = parse_record(line, limits, id_field)
            if isinstance(record, dict) and first_position is not None:
                if record.get(id_field) is None:
                    record[id_field] = f"#{first_position + i}"
                else:
                    check_reserved_id(record, id_field)
        except RecordRefused as exc:  # the id of a record refused once parsed, else as before
            known = answer_id(record, id_field) if exc.record_id is None else exc.record_id
            refused[i] = (exc.reason, f"{label(i)}: {exc}", known)
        records.append(record)
    return records, refused


def prepare_objects(records: list[Any], id_field: str, limits: RecordLimits,
                    label: Callable[[int], str]) -> dict[int, tuple[str, str]]:
    """The worker's object path: ``{index: (reason, error)}`` of records refused."""
    refused: dict[int, tuple[str, str]] = {}
    for i, record in enumerate(records):
        if isinstance(record, dict):
            try:
                check_record(record, limits, id_field)
            except RecordRefused as exc:
                refused[i] = (exc.reason, f"{label(i)}: {exc}")
    return refused


def answer_id(record: Any, id_field: str) -> Any:
    """The id an answer carries for ``record``: None unless it is a valid JSON id."""
    if not isinstance(record, dict):
        return None
    try:
        check_id(record.get(id_field), id_field)
    except RecordRefused:
        return None
    return record.get(id_field)
