"""Records (JSON objects) -> float32 feature matrix: the fitted, versioned schema of a detector.

Schema. Inferred from the training records unless ``declared_schema`` is given. Inference, per
field (the ``id_field`` and ``label_fields`` are never features): boolean if every non-null value
is a bool; numeric if every one is a number or a bool, or if numbers are mixed with strings and
90 % of the values are numbers or numeric strings ("12.5"; the rest are record errors); else
categorical, as is a field of strings only ("200"; declare it ``numeric`` to read "12.5").
Fields null/absent in every training record are dropped (``dropped_fields_``; ignored at score
time), as are fields holding only nested objects or arrays (with a warning). Inferred fields
are in natural name order (f2 before f10). A declared schema keeps its order, no inference::

    {"fields": [{"name": "bytes", "kind": "numeric", "log": true, "nullable": true},
                {"name": "service", "kind": "categorical"},
                {"name": "tls", "kind": "boolean"}]}

``kind`` is numeric | categorical | boolean; ``log`` (true/false) overrides the heavy-tail rule;
``nullable`` adds the missing indicator; ``description`` is ignored. Other record keys are
ignored and counted in ``unknown_fields_seen_``.

Encoding. Numeric: ``(t - median(t)) / (IQR(t) / 1.349)`` (robust sd) where ``t = x``, or
``t = sign(x)·log1p(|x|)`` for heavy-tailed fields (min >= 0 and (q99 - median > 5 IQR or
max - median > 50 IQR) in training: byte counts, durations, mostly-zero counters), so they
cannot dominate distances. A zero IQR falls back to the std, then (constant) to 1.0.
Boolean: 0/1 (accepts bools, 0/1 and "true"/"false"/"1"/"0" in any case). Categorical: values
stringified (3, 3.0 and "3" are one category; true -> "true"); one-hot with an ``<other>``
column for unseen values when training has at most ``max_onehot`` distinct values, else
blake2b-hashed into ``hash_buckets`` columns; a category column holds 1/sqrt(2), less for
hashed fields, so a field weighs like one field (``fields.category_weight``).

Missing (null or absent). Numeric -> the median (scaled 0.0), boolean -> the training mean, each
plus a ``<field>__missing`` 0/1 column when the field was missing in training (or is declared
nullable). A field never missing in training is imputed the same way without an indicator: the
record is still scored on its other fields (``missing_fields_seen_`` counts them).
Categorical -> the category ``<missing>`` (the ``<other>`` column if training never had it).
Unusable values (non-numeric strings, NaN/inf, nested objects/arrays, non-object records) ->
``RecordError`` naming the field and record.

>>> encoder = FeatureEncoder().fit([
...     {"id": 1, "bytes": 100, "service": "http", "tls": True},
...     {"id": 2, "bytes": 250, "service": "dns", "tls": False},
...     {"id": 3, "bytes": 180, "service": "http", "tls": True},
... ])
>>> [(field["name"], field["kind"]) for field in encoder.fields_]
[('bytes', 'numeric'), ('service', 'categorical'), ('tls', 'boolean')]
>>> encoder.feature_names_
['bytes', 'service=dns', 'service=http', 'service=<other>', 'tls']
>>> row = encoder.transform([{"id": 7, "bytes": 255, "service": "ssh", "tls": "false"}])
>>> row.astype(float).round(3).tolist()  # an unseen service: 3 from a known one, not 1
[[1.349, 0.0, 0.0, 2.915, 0.0]]
>>> round(encoder.inverse_numeric("bytes", 1.349), 6)
255.0
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import NotFittedError, RecordError, SchemaMismatchError
from .encoding import (
    add_counts,
    column_names,
    encode_fields,
    make_encoder,
    unseen_in,
)
from .fields import (
    BadRows,
    Plan,
    array_specs,
    fit_field,
    infer_plan,
    never_missing,
    parse_declared,
    signed_expm1,
    signed_log1p,
)
from .matrix import array_range_errors, as_matrix, nonfinite_rows, screen_rows

STATE_FORMAT = "nearwatch.schema/1"


class FeatureEncoder:
    """Fits a record schema and encodes records (or a numeric array) as float32 features."""

    def __init__(
        self,
        id_field: str = "id",
        max_onehot: int = 32,
        hash_buckets: int = 16,
        declared_schema: dict | None = None,
        label_fields: tuple[str, ...] = (),
    ) -> None:
        self.id_field = id_field
        self.max_onehot = max_onehot
        self.hash_buckets = hash_buckets
        self.declared_schema = declared_schema
        self.label_fields = label_fields

    def fit(self, records: Iterable[dict] | np.ndarray) -> FeatureEncoder:
        if not isinstance(self.max_onehot, int) or self.max_onehot < 0:
            raise ValueError(f"max_onehot must be an int >= 0, got {self.max_onehot!r}")
        if not isinstance(self.hash_buckets, int) or self.hash_buckets < 1:
            raise ValueError(f"hash_buckets must be an int >= 1, got {self.hash_buckets!r}")
        dropped: list[str] = []
        if isinstance(records, np.ndarray):
            specs = self._fit_array(as_matrix(records))
        else:
            specs, dropped = self._fit_records(self._as_rows(records))
        self._set_schema(specs, dropped)
        return self

    def _excluded(self) -> set[str]:
        labels = self.label_fields
        return {self.id_field, *([labels] if isinstance(labels, str) else labels)}

    def _fit_array(self, matrix: np.ndarray) -> list[dict]:
        if matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise ValueError(f"cannot fit on an empty array of shape {matrix.shape}")
        self._raise_first(nonfinite_rows(matrix, [f"f{j}" for j in range(matrix.shape[1])]))
        return array_specs(np.ascontiguousarray(matrix.T))  # contiguous: the dict path's stats

    def _fit_records(self, rows: list[dict]) -> tuple[list[dict], list[str]]:
        if not rows:
            raise ValueError("cannot fit on zero records")
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RecordError(None, f"record is not a JSON object (got {type(row).__name__})",
                                  record_index=index)
        keys = {key for row in rows for key in row}
        if any(not isinstance(key, str) for key in keys):
            index = next(i for i, row in enumerate(rows)
                         if any(not isinstance(key, str) for key in row))
            raise RecordError(None, "field names must be strings", index, self._id_of(rows[index]))
        dropped: list[str] = []
        plan: Plan
        if self.declared_schema is not None:
            plan = parse_declared(self.declared_schema, self._excluded())
        else:
            plan, dropped = infer_plan(rows, keys - self._excluded())
        if not plan:
            raise ValueError("the training records have no feature fields with values")
        bad: BadRows = {}
        specs = [fit_field(name, kind, [row.get(name) for row in rows], bad, nullable=nullable,
                           log=log, max_onehot=self.max_onehot, hash_buckets=self.hash_buckets)
                 for name, kind, nullable, log in plan]
        self.fit_errors_ = self._record_errors(rows, bad)  # all of them: ``screening.py``
        self._raise_first(self.fit_errors_)
        return specs, dropped

    def _set_schema(self, specs: list[dict], dropped: list[str]) -> None:
        names: list[str] = []
        self.field_columns_: dict[str, list[int]] = {}
        self._encoders = []
        for spec in specs:
            start = len(names)
            names += column_names(spec)
            self.field_columns_[spec["name"]] = list(range(start, len(names)))
            self._encoders.append((spec["name"], start, len(names), make_encoder(spec)))
        self.fields_: list[dict] = specs
        self._spec_by_name = {spec["name"]: spec for spec in specs}
        self.feature_names_: list[str] = names
        self.n_features_ = len(names)
        self.dropped_fields_: list[str] = dropped
        self.unknown_fields_seen_ = 0
        self.missing_fields_seen_: dict[str, int] = {}
        self.unseen_categories_seen_: dict[str, int] = {}  # per one-hot field: unseen values
        self.never_missing_fields_ = frozenset(s["name"] for s in specs if never_missing(s))
        self._known = frozenset([*self.field_columns_, *dropped, *self._excluded()])
        self._column_fields = [spec["name"] for spec in specs for _ in column_names(spec)]
        canonical = json.dumps(self._schema_document(), sort_keys=True, separators=(",", ":"),
                               allow_nan=False)
        self.version_ = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        # Vectorised ndarray path: only for all-numeric schemas (value column of each field).
        self._array_ready = all(spec["kind"] == "numeric" for spec in specs)
        if self._array_ready:
            self._array_columns = [self.field_columns_[s["name"]][0] for s in specs]
            self._array_log = np.array([s["log"] for s in specs], dtype=bool)
            self._array_center = np.array([s["center"] for s in specs], dtype=np.float64)
            self._array_scale = np.array([s["scale"] for s in specs], dtype=np.float64)

    def _schema_document(self) -> dict:
        labels = sorted(self._excluded() - {self.id_field})
        return {"id_field": self.id_field, "label_fields": labels, "fields": self.fields_,
                "dropped_fields": self.dropped_fields_}

    def transform(self, records: Iterable[dict] | np.ndarray) -> np.ndarray:
        """float32 (n, n_features_); raises the RecordError of the first bad record."""
        matrix, errors = self._encode(records)
        self._raise_first(errors)
        return matrix

    def transform_records(
        self, records: Iterable[dict] | np.ndarray
    ) -> tuple[np.ndarray, list[RecordError | None]]:
        """Features plus errors[i] (RecordError or None); bad rows are all zeros."""
        matrix, errors = self._encode(records)
        return matrix, [errors.get(index) for index in range(matrix.shape[0])]

    def record_ids(self, records: Iterable[dict] | np.ndarray) -> list[str | int | None]:
        if isinstance(records, np.ndarray):
            return [None] * len(records)
        return [self._id_of(row) for row in self._as_rows(records)]

    def numeric_value_column(self, field: str) -> int | None:
        """The scaled-value column of a numeric field; None for other kinds or unknown fields."""
        self._check_fitted()
        spec = self._spec_by_name.get(field)
        return self.field_columns_[field][0] if spec and spec["kind"] == "numeric" else None

    def inverse_numeric(self, field: str, column_value: float) -> float:
        """Undo scaling (and log1p) of a numeric field's value column, for explanations."""
        if self.numeric_value_column(field) is None:
            raise ValueError(f"{field!r} is not a numeric field of this schema")
        spec = self._spec_by_name[field]
        value = np.float64(column_value) * spec["scale"] + spec["center"]
        return float(signed_expm1(value) if spec["log"] else value)

    def _encode(self, records: Iterable[dict] | np.ndarray) -> tuple[np.ndarray, dict]:
        self._check_fitted()
        if isinstance(records, np.ndarray):
            return self._encode_array(as_matrix(records))
        rows = self._as_rows(records)
        matrix = np.zeros((len(rows), self.n_features_), dtype=np.float32)
        bad: BadRows = {}
        if set(map(type, rows)) - {dict}:  # non-objects become errors; encode them as {}
            rows = list(rows)
            for index, row in enumerate(rows):
                if not isinstance(row, dict):
                    bad[index] = (None, f"record is not a JSON object (got {type(row).__name__})")
                    rows[index] = {}
        absent, novel = encode_fields(self._encoders, rows, matrix, bad,
                                      self.never_missing_fields_)
        known = self._known
        unknown = sum(len(row.keys() - known) for row in rows if not row.keys() <= known)
        self.unknown_fields_seen_ += unknown
        screen_rows(rows, matrix, bad, self.fields_, self._column_fields)
        errors = self._record_errors(rows, bad)
        matrix[list(errors)] = 0.0
        add_counts(self.missing_fields_seen_, absent, rows, errors, lambda _, v: v is None)
        add_counts(self.unseen_categories_seen_, novel, rows, errors, unseen_in(self._spec_by_name))
        return matrix, errors

    def _encode_array(self, matrix: np.ndarray) -> tuple[np.ndarray, dict]:
        if not self._array_ready:
            raise ValueError("this encoder has non-numeric fields: pass records (dicts), not an "
                             "array")
        if matrix.shape[1] != len(self.fields_):
            raise ValueError(f"array has {matrix.shape[1]} columns, the encoder expects "
                             f"{len(self.fields_)} (fields {self.fields_[0]['name']}..."
                             f"{self.fields_[-1]['name']} in order)")
        errors = nonfinite_rows(matrix, [spec["name"] for spec in self.fields_])
        values = matrix
        if self._array_log.any():
            values = matrix.copy()
            values[:, self._array_log] = signed_log1p(values[:, self._array_log])
        with np.errstate(over="ignore"):  # beyond float32 once scaled: an error, below
            scaled = ((values - self._array_center) / self._array_scale).astype(np.float32)
        array_range_errors(matrix, scaled, [spec["name"] for spec in self.fields_], errors)
        scaled[list(errors)] = 0.0
        if self.n_features_ == matrix.shape[1]:
            return scaled, errors
        features = np.zeros((matrix.shape[0], self.n_features_), dtype=np.float32)
        features[:, self._array_columns] = scaled
        return features, errors

    def _as_rows(self, records: Iterable[dict]) -> list:
        if isinstance(records, dict):
            raise TypeError("expected a list of records, got a single record (dict)")
        return records if isinstance(records, list) else list(records)

    def _id_of(self, row: object) -> Any:  # the id as the record holds it (a JSON value)
        return row.get(self.id_field) if isinstance(row, dict) else None

    def _record_errors(self, rows: list, bad: BadRows) -> dict[int, RecordError]:
        return {index: RecordError(field, reason, record_index=index,
                                   record_id=self._id_of(rows[index]))
                for index, (field, reason) in sorted(bad.items())}

    @staticmethod
    def _raise_first(errors: dict[int, RecordError]) -> None:
        if errors:
            raise errors[min(errors)]

    def _check_fitted(self) -> None:
        if not hasattr(self, "version_"):
            raise NotFittedError("FeatureEncoder is not fitted: call fit() first")

    def to_state(self) -> dict:
        """JSON-only state; ``from_state`` rebuilds an encoder with identical transforms."""
        self._check_fitted()
        return copy.deepcopy({
            "format": STATE_FORMAT, "id_field": self.id_field,
            "label_fields": sorted(self._excluded() - {self.id_field}),
            "max_onehot": self.max_onehot, "hash_buckets": self.hash_buckets,
            "declared_schema": self.declared_schema, "fields": self.fields_,
            "dropped_fields": self.dropped_fields_, "version": self.version_})

    @classmethod
    def from_state(cls, state: dict) -> FeatureEncoder:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SchemaMismatchError(f"not a {STATE_FORMAT} encoder state")
        state = copy.deepcopy(state)
        try:
            encoder = cls(id_field=state["id_field"], max_onehot=state["max_onehot"],
                          hash_buckets=state["hash_buckets"],
                          declared_schema=state["declared_schema"],
                          label_fields=tuple(state["label_fields"]))
            encoder._set_schema(state["fields"], state["dropped_fields"])
        except (KeyError, TypeError, ValueError) as error:
            raise SchemaMismatchError(f"invalid encoder state: {error!r}") from None
        if encoder.version_ != state["version"]:
            raise SchemaMismatchError(f"encoder state version {state['version']!r} does not "
                                      f"match its content ({encoder.version_}): edited?")
        return encoder
