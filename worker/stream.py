"""`nearwatch stream`: records from a file or stdin → workers → one result line per record.

Ids: a record without an ``id`` gets ``"#<n>"``, ``n`` its 1-based position in the input, so
every output line can be traced back to its input record. Lines that are not JSON objects are
answered in place with an error naming the line; they are never sent, never dropped.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from detector.io import UnreadableRecord, iter_csv, iter_jsonl
from worker.client import ScoringClient


@dataclass
class StreamSummary:
    records: int = 0
    anomalies: int = 0
    errors: int = 0
    unanswered: int = 0
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.records} records: {self.anomalies} anomalies, {self.errors} errors, "
                f"{self.unanswered} unanswered; {self.seconds:.2f} s, "
                f"{self.throughput:,.0f} records/s")


def read_input(source: str, id_field: str = "id") -> Iterator[dict[str, Any] | str]:
    """Records (with ids) in input order; an unusable line comes as its error message."""
    stream: TextIO
    if source == "-":
        stream = sys.stdin
        first = stream.read(1)
        kind = "jsonl" if first in ("{", "[", "\n", " ", "") else "csv"
        lines: Iterable[str] = _prepend(first, stream)
    else:
        path = Path(source)
        kind = "csv" if path.suffix.lower() == ".csv" else "jsonl"
        stream = path.open(newline="")
        lines = stream
    try:
        rows = iter_csv(_LineStream(lines)) if kind == "csv" else iter_jsonl(_LineStream(lines))
        for position, row in enumerate(rows, start=1):
            if isinstance(row, UnreadableRecord):
                yield f"record #{position}: {row.reason}"
            elif not isinstance(row, dict):
                yield f"record #{position}: not a JSON object (got {type(row).__name__})"
            else:
                if row.get(id_field) is None:
                    row[id_field] = f"#{position}"
                yield row
    finally:
        if stream is not sys.stdin:
            stream.close()


def stream_records(client: ScoringClient, items: Iterable[dict[str, Any] | str], out: TextIO,
                   progress: Any = None) -> StreamSummary:
    """Send ``items`` in batches, write one JSON result per item, in order."""
    summary = StreamSummary()
    started = time.perf_counter()
    chunks: deque[list[dict[str, Any] | str]] = deque()

    def batches() -> Iterator[list[dict[str, Any]]]:
        for chunk in _chunks(items, client.options.batch_size):
            chunks.append(chunk)
            yield [item for item in chunk if isinstance(item, dict)]

    for results in client.score_batches(batches()):
        answers = iter(results)
        chunk = chunks.popleft()
        for item in chunk:
            result = {"id": None, "error": item} if isinstance(item, str) else next(answers)
            summary.records += 1
            summary.anomalies += bool(result.get("is_anomaly"))
            summary.errors += "error" in result
            out.write(json.dumps(result) + "\n")
        if progress is not None:
            progress.update(len(chunk))
    summary.unanswered = client.stats.unanswered
    summary.seconds = time.perf_counter() - started
    return summary


class _LineStream:
    """Adapts an iterable of lines to what csv/JSONL readers iterate over."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)

    def __iter__(self) -> Iterator[str]:
        return self._lines


def _prepend(first: str, stream: TextIO) -> Iterator[str]:
    head = first + stream.readline() if first else ""
    if head:
        yield head
    yield from stream


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
