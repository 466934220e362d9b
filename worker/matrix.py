"""Numeric batches on the wire: a matrix as one base64 text, answers as columns.

A producer whose records are already numbers (one value per model field) sends a batch as
one JSON object (task ``nearwatch.score_matrix_batch``)::

    {"fields": [names of the columns], "dtype": "float32" | "float64", "rows": n,
     "data": base64 of the little-endian row-major values, "ids": [n ids] | null,
     "first_position": 1-based input position of row 0 | null,
     "batch": the producer's tag of this batch, kept when it resubmits it | null}

and gets one answer object per batch::

    {"rows": n, "model_version", "threshold", "certified", "fpr_bound",
     "score", "p_value": base64 float64 (NaN for an error), "is_anomaly": base64 uint8,
     "errors": [[row, message], ...], "neighbours": [[row, [neighbour, ...]], ...]}

The wire stays JSON (``accept_content``), but nothing is parsed or built per record: the
worker decodes the block with ``numpy.frombuffer`` and scores it as a matrix
(``detector.matrix_scoring``), and the producer reads the answer the same way. Neighbours
come for flagged rows only. Columns may come in any order; a column the model does not read
is ignored, a model field without a column fails the batch. A non-finite value is an error
of its row naming the field (there is no missing value in a matrix: such records go as JSON).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
MAX_ROWS = 100_000  # rows of one batch (about 43 MB of base64 at 40 float64 columns)
MAX_ID_CHARS = 1_000  # an id is carried by alert events, dead letters and the buffer


_RESERVED = re.compile(r"#[0-9]+")  # position names of rows without an id


class MatrixPayloadError(ValueError):
    """A numeric batch that cannot be read at all (every row is answered with this)."""


def encode_matrix(matrix: Any, fields: Sequence[str], ids: Sequence[Any] | None = None,
                  first_position: int | None = None) -> dict[str, Any]:
    """The task argument for ``matrix`` (rows × ``fields``); float32 stays float32."""
    array = np.asarray(matrix)
    if array.ndim != 2 or array.shape[1] != len(fields):
        raise ValueError(f"a matrix of {len(fields)} fields needs shape (n, {len(fields)}), "
                         f"got {array.shape}")
    if array.dtype.kind not in "fiub":
        raise ValueError(f"a matrix to score must be numeric, got dtype {array.dtype}")
    if len(array) > MAX_ROWS:
        raise ValueError(f"a numeric batch holds at most {MAX_ROWS} rows, got {len(array)}")
    id_list = None if ids is None else np.asarray(ids, dtype=object).tolist()
    if id_list is not None:  # numpy scalars become Python values, which JSON can carry
        id_list = [value.item() if isinstance(value, np.generic) else value
                   for value in id_list]
        problem = _ids_problem(id_list, len(array))
        if problem is not None:
            raise ValueError(problem)
    dtype = "float32" if array.dtype == np.float32 else "float64"
    data = np.ascontiguousarray(array, dtype=DTYPES[dtype])
    return {"fields": [str(name) for name in fields], "dtype": dtype, "rows": len(array),
            "data": base64.b64encode(data.tobytes()).decode("ascii"),
            "ids": id_list, "first_position": first_position}


def check_matrix(matrix: Any, fields: Sequence[str], ids: Sequence[Any] | None) -> None:
    """A whole matrix's shape against its fields and ids, before any batch is sent."""
    shape = np.shape(matrix)
    if len(shape) != 2 or shape[1] != len(fields):
        raise ValueError(f"a matrix of {len(fields)} fields needs shape (n, {len(fields)}), "
                         f"got {shape}: pass only the model's columns (e.g. df[fields])")
    if ids is not None and len(ids) != shape[0]:
        raise ValueError(f"{len(ids)} ids for a matrix of {shape[0]} rows")


def _ids_problem(ids: Any, rows: int) -> str | None:
    if not isinstance(ids, list) or len(ids) != rows:
        return f"'ids' must be a list of {rows} ids or null"
    for value in ids:
        if not (value is None or isinstance(value, str)
                or (isinstance(value, int) and not isinstance(value, bool))):
            return f"'ids' must be strings, whole numbers or null, got {value!r}"[:200]
        if isinstance(value, str) and (len(value) > MAX_ID_CHARS or _RESERVED.fullmatch(value)):
            return (f"id {value[:40]!r} is reserved (\"#<n>\" names records by position)"
                    if len(value) <= MAX_ID_CHARS else
                    f"an id holds at most {MAX_ID_CHARS} characters")
    return None


@dataclass(frozen=True)
class MatrixBatch:
    """A decoded numeric batch: ``matrix`` in the model's field order."""

    matrix: np.ndarray
    ids: list[Any] | None
    first_position: int | None
    ignored_fields: list[str] = field(default_factory=list)

    def label(self, row: int) -> str:
        """How an error names a row: its id, its input position, or its place in the batch."""
        if self.ids is not None and self.ids[row] is not None:
            return f"record {self.ids[row]!r}"
        if self.first_position is not None:
            return f"record #{self.first_position + row}"
        return f"record {row} of the batch"

    def answer_id(self, row: int) -> Any:
        if self.ids is not None and self.ids[row] is not None:
            return self.ids[row]
        return None if self.first_position is None else f"#{self.first_position + row}"


def batch_rows(payload: Any) -> int:
    """The row count a payload claims (0 when it claims none): what every answer must have."""
    rows = payload.get("rows") if isinstance(payload, dict) else None
    return rows if isinstance(rows, int) and not isinstance(rows, bool) \
        and 0 < rows <= MAX_ROWS else 0


def payload_rows(payload: Any) -> int:
    """A producer's check of a payload before sending it: its row count."""
    rows = batch_rows(payload)
    if not rows and not (isinstance(payload, dict) and payload.get("rows") == 0):
        raise ValueError("a numeric batch is a payload of encode_matrix(matrix, fields), "
                         f"of 0 to {MAX_ROWS} rows")
    return rows


def decode_matrix(payload: Any, model_fields: list[str]) -> MatrixBatch:
    """Read a payload against the model's fields; ``MatrixPayloadError`` says what is wrong."""
    if not isinstance(payload, dict):
        raise MatrixPayloadError(f"a numeric batch is a JSON object, got {type(payload).__name__}")
    fields, dtype, rows = payload.get("fields"), payload.get("dtype"), payload.get("rows")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise MatrixPayloadError("'fields' must be a list of field names")
    if len(set(fields)) != len(fields):
        raise MatrixPayloadError("'fields' names a field twice")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise MatrixPayloadError(f"'dtype' must be float32 or float64, got {dtype!r}")
    if not isinstance(rows, int) or isinstance(rows, bool) or not 0 < rows <= MAX_ROWS:
        raise MatrixPayloadError(f"'rows' must be a whole number from 1 to {MAX_ROWS}, "
                                 f"got {rows!r}")
    try:
        data = base64.b64decode(payload.get("data") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise MatrixPayloadError("'data' is not base64") from None
    expected = rows * len(fields) * DTYPES[dtype].itemsize
    if len(data) != expected:
        raise MatrixPayloadError(f"'data' holds {len(data)} bytes; {rows} rows of "
                                 f"{len(fields)} {dtype} fields are {expected}")
    missing = [name for name in model_fields if name not in fields]
    if missing:
        raise MatrixPayloadError(f"the batch has no column for the model's field(s) "
                                 f"{', '.join(map(repr, missing[:5]))}"
                                 f"{' ...' if len(missing) > 5 else ''}")
    block = np.frombuffer(data, dtype=DTYPES[dtype]).reshape(rows, len(fields))
    if fields != model_fields:
        block = block[:, [fields.index(name) for name in model_fields]]
    ids, first = payload.get("ids"), payload.get("first_position")
    problem = None if ids is None else _ids_problem(ids, rows)
    if problem is not None:
        raise MatrixPayloadError(problem)
    if first is not None and (not isinstance(first, int) or isinstance(first, bool)
                              or first < 1):
        raise MatrixPayloadError(f"'first_position' must be a whole number from 1 or null, "
                                 f"got {first!r}"[:200])
    ignored = [name for name in fields if name not in model_fields]
    return MatrixBatch(block, ids, first, ignored)


class RowRecords(Sequence[dict[str, Any]]):
    """The rows of a batch as records, built only for the rows that are read (alerts,
    dead letters and the reference buffer read a few; scoring reads none)."""

    def __init__(self, batch: MatrixBatch, model_fields: list[str], id_field: str) -> None:
        self.batch, self.fields, self.id_field = batch, model_fields, id_field

    def __len__(self) -> int:
        return len(self.batch.matrix)

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        values = self.batch.matrix[row].tolist()
        if self.batch.matrix.dtype == np.float32:  # 0.1, not 0.10000000149011612
            values = [float(str(value)) for value in self.batch.matrix[row]]
        # a bad row's NaN or infinity as text: its dead letter stays valid JSON
        values = [v if math.isfinite(v) else str(v) for v in values]
        record: dict[str, Any] = dict(zip(self.fields, values, strict=True))
        answer_id = self.batch.answer_id(row)
        if answer_id is not None:
            record = {self.id_field: answer_id, **record}
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[row] for row in range(len(self)))


def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _column(answer: dict[str, Any], name: str, dtype: str, rows: int) -> np.ndarray:
    values = np.frombuffer(base64.b64decode(answer[name]), dtype=dtype)
    if len(values) != rows:
        raise ValueError(f"answer column {name!r} has {len(values)} values for {rows} rows")
    return values


@dataclass(frozen=True, repr=False)
class MatrixAnswer:
    """A numeric batch's answer: arrays over its rows, ``errors`` and ``neighbours`` keyed by
    the row in this batch (``start + row`` in the matrix ``ScoringClient.score_matrix`` was
    given), and the model's facts. ``batch_error``: why no row of the batch could be read."""

    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    errors: dict[int, str]
    neighbours: dict[int, list[dict[str, Any]]]
    model_version: str | None = None
    threshold: float | None = None
    certified: bool | None = None
    fpr_bound: float | None = None
    batch_error: str | None = None  # the batch could not be read: every row's error
    start: int = 0  # the matrix row of this batch's row 0 (set by ScoringClient.score_matrix)

    def __len__(self) -> int:
        return len(self.score)

    def __repr__(self) -> str:
        what = f"batch_error={self.batch_error!r}" if self.batch_error is not None else (
            f"flagged={int(self.is_anomaly.sum())}, errors={len(self.errors)}")
        return (f"MatrixAnswer(rows={len(self)}, start={self.start}, {what}, "
                f"model_version={self.model_version!r}, threshold={self.threshold!r})")

    def to_wire(self) -> dict[str, Any]:
        model = {"rows": len(self), "model_version": self.model_version,
                 "threshold": self.threshold, "certified": self.certified,
                 "fpr_bound": self.fpr_bound}
        if self.batch_error is not None:  # once, not once per row
            return {**model, "error": self.batch_error}
        return {**model, "score": _b64(self.score, "<f8"),
                "p_value": _b64(self.p_value, "<f8"),
                "is_anomaly": _b64(self.is_anomaly, "u1"),
                "errors": [[row, message] for row, message in sorted(self.errors.items())],
                "neighbours": [[row, found] for row, found in sorted(self.neighbours.items())]}

    @classmethod
    def from_wire(cls, answer: Any, rows: int) -> MatrixAnswer:
        """The answer of a batch of ``rows`` rows; ``ValueError`` if it does not match."""
        if not isinstance(answer, dict) or answer.get("rows") != rows:
            got = answer.get("rows") if isinstance(answer, dict) else type(answer).__name__
            raise ValueError(f"answer has {got} rows for {rows}")
        if isinstance(answer.get("error"), str):
            failed = cls.failed(rows, answer["error"])
            return cls(failed.score, failed.p_value, failed.is_anomaly, failed.errors, {},
                       answer.get("model_version"), answer.get("threshold"),
                       answer.get("certified"), answer.get("fpr_bound"), answer["error"])
        return cls(_column(answer, "score", "<f8", rows), _column(answer, "p_value", "<f8", rows),
                   _column(answer, "is_anomaly", "u1", rows).astype(bool),
                   {int(row): str(message) for row, message in answer["errors"]},
                   {int(row): found for row, found in answer["neighbours"]},
                   answer.get("model_version"), answer.get("threshold"),
                   answer.get("certified"), answer.get("fpr_bound"))

    @classmethod
    def failed(cls, rows: int, message: str) -> MatrixAnswer:
        """Every row answered with ``message``."""
        nan = np.full(rows, np.nan)
        return cls(nan, nan.copy(), np.zeros(rows, dtype=bool),
                   dict.fromkeys(range(rows), message), {}, batch_error=message)
