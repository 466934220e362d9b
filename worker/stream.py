"""`nearwatch stream`: records from a file or stdin → workers → one result line per record.

Ids: a record without an ``id`` gets ``"#<n>"``, ``n`` its 1-based position in the input
(blank lines are skipped, not counted), so every output line can be traced back to its input
record. Lines that are not JSON objects (or not UTF-8, beyond the size limit, a CSV row
with the wrong number of cells) are answered in place with an error naming the position;
nothing is dropped. The format is ``--format`` or, for ``auto``, the file extension; stdin
is CSV only when its first line (BOM and whitespace ignored) does not start with ``{`` or
``[`` and has a comma, and the choice is reported on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from nearwatch.detector.io import UnreadableRecord, iter_csv

from .client import ScoringClient, chunks
from .flow import linger_chunks
from .records import INVALID_JSON, RecordRefused, decode_line

FORMATS = ("auto", "jsonl", "csv")


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


def read_input(source: str, fmt: str = "auto", notice: Any = None
               ) -> Iterator[str | RecordRefused]:
    """One JSON text per record, in input order (JSONL lines as they are; CSV rows encoded),
    or a ``RecordRefused`` for an input record that cannot be sent (answered in place).

    JSONL lines are not parsed here: the workers parse them (in parallel) and answer a line
    that is not a JSON object with an error naming its position.
    """
    stream: IO[bytes] = sys.stdin.buffer if source == "-" \
        else Path(source).open("rb")  # noqa: SIM115 - closed below
    try:
        lines: Iterator[bytes] = iter(stream)
        if fmt == "auto" and source != "-":
            fmt = "csv" if Path(source).suffix.lower() == ".csv" else "jsonl"
        elif fmt == "auto":
            head = [line for line in _until_content(lines)]
            first = head[-1].lstrip(b"\xef\xbb\xbf").strip() if head else b""
            fmt = "jsonl" if first[:1] in (b"{", b"[", b"") or b"," not in first else "csv"
            if notice is not None:
                notice(f"stdin read as {fmt.upper()} (sniffed; --format sets it)")
            lines = _chain(head, lines)
        if fmt == "csv":
            text = (line.decode("utf-8", "surrogateescape") for line in lines)
            for row in iter_csv(text):
                if isinstance(row, UnreadableRecord):
                    yield RecordRefused(INVALID_JSON, row.reason)
                else:
                    yield json.dumps(row)
        else:
            for raw in lines:
                try:
                    line = decode_line(raw)
                except RecordRefused as exc:
                    exc.text = raw  # its start goes to the dead letter
                    yield exc
                    continue
                if line.strip():
                    yield line.rstrip("\r\n")
    finally:
        if source != "-":
            stream.close()


def _until_content(lines: Iterator[bytes]) -> Iterator[bytes]:
    for line in lines:
        yield line
        if line.strip().lstrip(b"\xef\xbb\xbf"):
            return


def _chain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from rest


def stream_records(client: ScoringClient, lines: Iterable[str | RecordRefused], out: TextIO,
                   progress: Any = None, live: bool = False) -> StreamSummary:
    """Send JSON texts in batches, write one JSON result line per record, in order.

    ``live`` (stdin, a pipe): a partial batch goes out after ``client.options.linger`` s,
    and every answered batch is flushed at once."""
    summary = StreamSummary()
    started = time.perf_counter()

    size = client.options.batch_size
    source = linger_chunks(lines, size, client.options.linger) if live else chunks(lines, size)

    def batches() -> Iterator[tuple[list[Any], int]]:
        position = 1
        for chunk in source:
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
        if live:
            out.flush()
        if progress is not None:
            progress.update(len(results))
    summary.unanswered = client.stats.unanswered
    summary.seconds = time.perf_counter() - started
    return summary


# Workers write compact JSON (orjson); json.dumps' spaced form is still recognised.
_ANOMALY = '"is_anomaly":true'
_ANOMALY_SPACED = '"is_anomaly": true'
_ERROR = '"error":'
