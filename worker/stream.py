"""`nearwatch stream`: records from a file or stdin → workers → one result line per record.

Ids: a record without an ``id`` gets ``"#<n>"``, ``n`` its 1-based position in the input
(blank lines are skipped, not counted), so every output line can be traced back to its input
record. Lines that are not JSON objects are answered in place with an error naming the
position; nothing is dropped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from nearwatch.detector.io import iter_csv

from .client import ScoringClient, chunks


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


def read_input(source: str) -> Iterator[str]:
    """One JSON text per record, in input order (JSONL lines as they are; CSV rows encoded).

    JSONL lines are not parsed here: the workers parse them (in parallel) and answer a line
    that is not a JSON object with an error naming its position.
    """
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
        if kind == "csv":
            for row in iter_csv(_LineStream(lines)):  # type: ignore[arg-type]
                yield json.dumps(row)
        else:
            for line in lines:
                if line.strip():
                    yield line.rstrip("\r\n")
    finally:
        if stream is not sys.stdin:
            stream.close()


def stream_records(client: ScoringClient, lines: Iterable[str], out: TextIO,
                   progress: Any = None) -> StreamSummary:
    """Send JSON texts in batches, write one JSON result line per record, in order."""
    summary = StreamSummary()
    started = time.perf_counter()

    def batches() -> Iterator[tuple[list[str], int]]:
        position = 1
        for chunk in chunks(lines, client.options.batch_size):
            yield chunk, position
            position += len(chunk)

    for results in client.score_json_batches(batches()):
        for result in results:
            # Results are compact JSON written by the workers: in a JSON text `"error": ` can
            # only be a key (a quote inside a string value is escaped), so no parse is needed.
            summary.records += 1
            summary.anomalies += _ANOMALY in result or _ANOMALY_SPACED in result
            summary.errors += _ERROR in result
            out.write(result + "\n")
        if progress is not None:
            progress.update(len(results))
    summary.unanswered = client.stats.unanswered
    summary.seconds = time.perf_counter() - started
    return summary


# Workers write compact JSON (orjson); json.dumps' spaced form is still recognised.
_ANOMALY = '"is_anomaly":true'
_ANOMALY_SPACED = '"is_anomaly": true'
_ERROR = '"error":'


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
