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
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np


@dataclass(frozen=True)
class UnreadableRecord:
    """A line of input that could not be parsed as a record."""

    line: int
    reason: str


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


def read_records(path: str | Path, label_field: str | None = None) -> RecordFile:
    """Read ``path`` by extension; ``label_field`` pulls a 0/1 ground-truth column out."""
    file_path = Path(path)
    suffix = file_path.suffix.lower()
    if suffix == ".npz":
        with np.load(file_path, allow_pickle=False) as archive:
            if "X" not in archive:
                raise ValueError(f"{file_path}: an .npz data file needs an 'X' array")
            features = np.asarray(archive["X"], dtype=np.float32)
            labels = np.asarray(archive["y"]).astype(bool) if "y" in archive else None
        return RecordFile(features, labels)
    with file_path.open(newline="") as stream:
        records = list(iter_csv(stream) if suffix == ".csv" else iter_jsonl(stream))
    labels = None
    if label_field is not None:
        labels = np.array([_truthy(r.get(label_field)) if isinstance(r, dict) else False
                           for r in records])
    return RecordFile(records, labels)


def iter_jsonl(stream: TextIO) -> Iterator[Any]:
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            yield UnreadableRecord(line_number, f"line {line_number} is not valid JSON: {exc}")


def iter_csv(stream: TextIO) -> Iterator[dict[str, Any]]:
    # CSV has no types: empty cells are missing, cells that parse as numbers are numbers
    # (so "nan"/"inf" cells become non-finite numbers and are refused with a clear error).
    for row in csv.DictReader(stream):
        yield {key: _csv_value(value) for key, value in row.items()}


def _csv_value(value: str | None) -> Any:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "anomaly")
    return bool(value)
