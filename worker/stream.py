"""`nearwatch stream`: records from a file or stdin → workers → one result line per record.

Ids: a record without an ``id`` gets ``"#<n>"``, ``n`` its 1-based position in the input
(blank lines are skipped, not counted), so every output line can be traced back to its input
record. Lines that are not JSON objects (or not UTF-8, beyond the size limit, a CSV row
with the wrong number of cells) are answered in place with an error naming the position
and line (``record #3 (line 5): ...``; a CSV row's error names its line); nothing is dropped.
The format is ``--format`` or, for ``auto``, the file extension; stdin is CSV only when its
first line (BOM and whitespace ignored) does not start with ``{`` or ``[`` and has a comma,
and the choice is reported on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from nearwatch.detector.io import (
    UnreadableRecord,
    iter_csv,
    numbered_lines,
    text_lines,
    utf8_problem,
)

from .client import ScoringClient, chunks
from .flow import linger_chunks
from .records import INVALID_JSON, RecordRefused, dump_result

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


class LineNumbers:
    """The input line of each JSONL record ``read_input`` yields, so that `stream` names it in
    errors as `score` does (blank lines are not records: record #n may be a later line).

    Kept as runs of one offset (line - position), forgotten as the answers are written in
    order: a few entries however long the input. ``note`` runs in the reader's thread,
    ``line``/``forget`` in the writer's (deque appends and pops are atomic)."""

    def __init__(self) -> None:
        self._runs: deque[tuple[int, int]] = deque([(1, 0)])  # (first position, offset)
        self._count = 0
        self.active = False  # set for JSON lines (CSV errors name their line themselves)

    def note(self, line: int) -> None:
        self._count += 1
        if line - self._count != self._runs[-1][1]:
            self._runs.append((self._count, line - self._count))

    def forget(self, position: int) -> None:
        """Answers up to ``position`` are written: their runs are no longer needed."""
        while len(self._runs) > 1 and self._runs[1][0] <= position:
            self._runs.popleft()

    def line(self, position: int) -> int | None:
        if not self.active:
            return None
        self.forget(position)
        return position + self._runs[0][1]

    def name_line(self, result: str, position: int) -> str:
        """An error answer ``record #<position>: ...`` as ``record #<position> (line L): ...``."""
        line = self.line(position)
        prefix = f"record #{position}:"
        if line is None or f'"{prefix}' not in result:
            return result
        answer = json.loads(result)
        error = answer.get("error")
        if isinstance(error, str) and error.startswith(prefix):
            answer["error"] = f"record #{position} (line {line}):{error[len(prefix):]}"
        return dump_result(answer)


def read_input(source: str, fmt: str = "auto", notice: Any = None,
               line_numbers: LineNumbers | None = None) -> Iterator[str | RecordRefused]:
    """One JSON text per record, in input order (JSONL lines as they are; CSV rows encoded),
    or a ``RecordRefused`` for an input record that cannot be sent (answered in place).

    Lines are split as `score` splits them (``text_lines``: a lone CR ends a line too).
    JSONL lines are not parsed here: the workers parse them (in parallel) and answer a line
    that is not a JSON object with an error naming its position; ``line_numbers`` learns
    each record's line, for those errors.
    """
    binary: IO[bytes] = sys.stdin.buffer if source == "-" \
        else Path(source).open("rb")  # noqa: SIM115 - closed below
    stream = text_lines(binary)
    try:
        lines: Iterator[str] = iter(stream)
        if fmt == "auto" and source != "-":
            fmt = "csv" if Path(source).suffix.lower() == ".csv" else "jsonl"
        elif fmt == "auto":
            head = [line for line in _until_content(lines)]
            first = head[-1].lstrip("\ufeff").strip() if head else ""
            fmt = "jsonl" if first[:1] in ("{", "[", "") or "," not in first else "csv"
            if notice is not None:
                notice(f"stdin read as {fmt.upper()} (sniffed; --format sets it)")
            lines = _chain(head, lines)
        if fmt == "csv":
            for row in iter_csv(lines):
                if isinstance(row, UnreadableRecord):
                    yield RecordRefused(INVALID_JSON, row.reason)
                else:
                    yield json.dumps(row)
            return
        if line_numbers is not None:
            line_numbers.active = True
        for number, line in numbered_lines(lines):
            if line_numbers is not None:
                line_numbers.note(number)
            problem = "" if line.isascii() else utf8_problem(line)
            if problem:  # its start goes to the dead letter
                yield RecordRefused(INVALID_JSON, problem.removeprefix("is "),
                                    line.encode("utf-8", "surrogateescape"))
            else:
                yield line
    finally:
        if source == "-":
            stream.detach()  # stdin stays open
        else:
            stream.close()


def _until_content(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        yield line
        if line.strip().lstrip("\ufeff"):
            return


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def stream_records(client: ScoringClient, lines: Iterable[str | RecordRefused], out: TextIO,
                   progress: Any = None, live: bool = False,
                   line_numbers: LineNumbers | None = None) -> StreamSummary:
    """Send JSON texts in batches, write one JSON result line per record, in order.

    ``live`` (stdin, a pipe): a partial batch goes out after ``client.options.linger`` s,
    and every answered batch is flushed at once. ``line_numbers`` (``read_input``'s): an
    error naming a record by its position names its input line too."""
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
            if _ERROR in result:
                summary.errors += 1
                if line_numbers is not None:  # errors are few: parsed again only they are
                    result = line_numbers.name_line(result, summary.records)
            out.write(result + "\n")
        if line_numbers is not None:
            line_numbers.forget(summary.records)
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
