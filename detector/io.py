"""Reading record files: JSON lines, CSV and ``.npz`` (``X``, optional ``y``).

A line that is not valid JSON is kept in place as an ``UnreadableRecord`` so the caller can
answer it with an error instead of silently dropping it.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "r.jsonl"
>>> _ = path.write_text('{"id": 1, "x": 2}\\nnot json\\n')
>>> data = read_records(path)
>>> data.records[0], type(data.records[1]).__name__
({'id': 1, 'x': 2}, 'UnreadableRecord')
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np


@dataclass(frozen=True)
class UnreadableRecord:
    """A line of input that could not be parsed as a record."""

    line: int
    reason: str
    record_id: Any = None  # the record's id, where it had a valid one (a refused record)


@dataclass(frozen=True)
class RecordFile:
    """Records (dicts, or ``UnreadableRecord``) or a numeric matrix, with optional labels."""

    records: list[Any] | np.ndarray
    labels: np.ndarray | None = None


def take_rows(data: list[Any] | np.ndarray, rows: np.ndarray) -> list[Any] | np.ndarray:
    """The rows ``rows`` of a record list or a feature matrix, keeping its type."""
    if isinstance(data, np.ndarray):
        return data[rows]
    return [data[i] for i in rows]


def read_records(path: str | Path, label_field: str | None = None,
                 max_line_bytes: int | None = None) -> RecordFile:
    """Read ``path`` by extension; ``label_field`` pulls a 0/1 ground-truth column out.

    A line that is not UTF-8, not JSON, nested too deep for the parser, longer than
    ``max_line_bytes`` or (CSV) has more or fewer cells than the header is kept in place as
    an ``UnreadableRecord``."""
    file_path = Path(path)
    suffix = file_path.suffix.lower()
    if suffix == ".npz":
        with np.load(file_path, allow_pickle=False) as archive:
            if "X" not in archive:
                raise ValueError(f"{file_path}: an .npz data file needs an 'X' array")
            matrix = archive["X"]
            if matrix.dtype.kind not in "fiub":
                raise ValueError(f"{file_path}: 'X' must be numeric, got dtype {matrix.dtype}")
            # float32 stays float32; anything else as float64 (a float32 cast turned 1e9 + 6
            # into 1e9 and 1e300 into inf)
            features = matrix if matrix.dtype == np.float32 else matrix.astype(np.float64)
            labels = np.asarray(archive["y"]).astype(bool) if "y" in archive else None
        return RecordFile(features, labels)
    with text_lines(file_path.open("rb")) as stream:
        records = list(iter_csv(stream) if suffix == ".csv"
                       else iter_jsonl(stream, max_line_bytes))
    labels = None
    if label_field is not None:
        labels = np.array([_label(r.get(label_field), label_field, i, file_path)
                           if isinstance(r, dict) else False for i, r in enumerate(records)])
    return RecordFile(records, labels)


def text_lines(binary: IO[bytes]) -> io.TextIOWrapper:
    """``binary`` as text lines, split as every reader here splits them (`score`, `train`,
    `stream`): at ``\\n``, ``\\r\\n`` or a lone ``\\r``; bytes that are not UTF-8 survive
    decoding (surrogateescape) so that their line alone is refused (``utf8_problem``)."""
    return io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")


def numbered_lines(stream: Iterable[str]) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines of ``text_lines`` (or a file opened with
    ``newline=""``): a leading byte-order mark and the line ending removed."""
    for line_number, line in enumerate(stream, start=1):
        if line.startswith("\ufeff"):
            line = line[1:]
        if line.strip():
            yield line_number, line.rstrip("\r\n")


def iter_jsonl(stream: Iterable[str], max_line_bytes: int | None = None) -> Iterator[Any]:
    """Records of JSON lines; blank lines are skipped and not counted, so "record n" (as
    `stream` and the scoring errors number records) is the n-th non-blank line, and an
    unreadable line's error gives its line number too."""
    for record_number, (line_number, line) in enumerate(numbered_lines(stream), start=1):
        where = f"record {record_number} (line {line_number})"
        problem = _line_problem(line, max_line_bytes)
        if problem:
            yield UnreadableRecord(line_number, f"{where} {problem}")
            continue
        try:
            yield json.loads(line)
        except (ValueError, RecursionError) as exc:
            reason = "is nested too deep" if isinstance(exc, RecursionError) else \
                f"is not valid JSON: {json_problem(exc)[:200]}"
            yield UnreadableRecord(line_number, f"{where} {reason}")


def json_problem(exc: ValueError) -> str:
    """A JSON parser's error for one line, without its "line 1" (the caller names the input
    line, which is another number): the column, and a line only when the text has several."""
    if not isinstance(exc, json.JSONDecodeError):  # orjson's error is a JSONDecodeError too
        return str(exc)
    where = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
    return f"{exc.msg}: {where}"


def iter_csv(stream: Iterable[str]) -> Iterator[dict[str, Any] | UnreadableRecord]:
    """Rows as records. CSV has no types: empty cells are missing, cells that parse as
    numbers are numbers (so "nan"/"inf" cells become non-finite numbers and are refused
    with a clear error). A row with a different number of cells than the header, or that is
    not UTF-8 or not CSV, is an ``UnreadableRecord`` naming its line."""
    lines = iter(stream)
    first = next(lines, None)
    if first is None:
        return
    reader = csv.reader(_chain(first.lstrip("\ufeff"), lines))
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield UnreadableRecord(reader.line_num, f"line {reader.line_num} is not valid "
                                   f"CSV: {exc}")
            continue
        problem = utf8_problem("\x00".join(row))
        if header is None:
            if problem:
                raise ValueError(f"CSV header {problem}")
            header = row
        elif problem:
            yield UnreadableRecord(reader.line_num, f"line {reader.line_num} {problem}")
        elif not row or row == [""]:
            continue
        elif len(row) != len(header):
            yield UnreadableRecord(reader.line_num, f"line {reader.line_num} has {len(row)} "
                                   f"cells for {len(header)} columns")
        else:
            yield {key: _csv_value(value) for key, value in zip(header, row, strict=True)}


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _line_problem(line: str, max_bytes: int | None) -> str:
    if max_bytes is not None and len(line) > max_bytes // 4 \
            and len(line.encode("utf-8", "surrogateescape")) > max_bytes:
        return f"exceeds the limit of {max_bytes} bytes"
    return utf8_problem(line)


def utf8_problem(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a surrogate escape: the input was not UTF-8
        return f"is not valid UTF-8 (character {exc.start})"
    return ""


def _csv_value(value: str | None) -> Any:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


_ANOMALY = ("1", "1.0", "true", "yes", "anomaly")
_NORMAL = ("0", "0.0", "false", "no", "normal", "")


def _label(value: Any, field: str, index: int, path: Path) -> bool:
    """A ground-truth flag; a value that is none (``"maybe"``, 2) is an error naming the
    record, never read as normal. A missing label is normal (unlabelled)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _ANOMALY + _NORMAL:
        return value.strip().lower() in _ANOMALY
    raise ValueError(f"{path}: record {index + 1}: {field}={value!r} is not a label "
                     "(1/0, true/false, yes/no, anomaly/normal)")
