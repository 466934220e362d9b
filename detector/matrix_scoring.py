"""Scoring a numeric matrix as columns: one array per result figure, errors by row.

``score_records`` answers each record with a dict (id, score, p-value, flag, neighbours):
right for JSON records, but at tens of µs per record the dicts cost as much as the scoring
itself. A producer whose records are already numbers (one column per model field) gets the
same figures here as arrays, and neighbours only for the rows that are flagged (the ones an
alert shows). Rows with a non-finite or out-of-range value are errors naming the field, as
for ``Detector.score``'s array input; they never stop the other rows.

>>> import numpy as np
>>> from nearwatch.detector import Detector
>>> normal = np.random.default_rng(0).normal(size=(800, 3))
>>> detector = Detector(alpha=0.05, random_state=0).fit(normal)
>>> scored = score_matrix(detector, np.array([[0.0, 0.1, -0.2], [9.0, 9.0, 9.0],
...                                          [np.nan, 0.0, 0.0]]))
>>> scored.is_anomaly.tolist()
[False, True, False]
>>> sorted(scored.neighbours), scored.errors[2].field
([1], 'f0')
>>> bool(np.isnan(scored.score[2]))
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RecordError
from .scoring import flagged_fields, neighbour_reference_ids, neighbour_search

if TYPE_CHECKING:
    from .detector import Detector


@dataclass(frozen=True)
class MatrixScores:
    """Per row of the matrix: ``score`` and ``p_value`` (NaN for rows in ``errors``),
    ``is_anomaly`` (False for errors and when the model has no threshold), and for flagged
    rows only, their nearest references as ``score_records`` gives them; ``fields``: the
    ``explain`` fields of the first ``explain`` flagged rows, from the same search."""

    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    errors: dict[int, RecordError]
    neighbours: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    fields: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def field_names(detector: Detector) -> list[str]:
    """The model's fields in the column order a matrix must have (the schema's order)."""
    return [spec["name"] for spec in detector.feature_encoder_.fields_]


def matrix_refusal(detector: Detector) -> str | None:
    """Why this model cannot score a matrix (fields that are not numeric), or None."""
    other = [spec["name"] for spec in detector.feature_encoder_.fields_
             if spec["kind"] != "numeric"]
    if not other:
        return None
    shown = ", ".join(map(repr, other[:5])) + (" ..." if len(other) > 5 else "")
    return f"the model's field(s) {shown} are not numeric: send these records as JSON objects"


def score_matrix(detector: Detector, matrix: np.ndarray, n_neighbours: int = 3,
                 explain: int = 0, n_fields: int = 3) -> MatrixScores:
    """Score the rows of ``matrix`` (n × the model's fields, in ``field_names`` order);
    explain the first ``explain`` flagged rows (their ``n_fields`` most deviating fields)."""
    width = len(detector.feature_encoder_.fields_)
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise ValueError(f"a matrix to score needs shape (n, {width}), got {matrix.shape}")
    features, error_list = detector.feature_encoder_.transform_records(matrix)
    errors = {row: error for row, error in enumerate(error_list) if error is not None}
    n_rows = len(matrix)
    score = np.full(n_rows, np.nan)
    p_value = np.full(n_rows, np.nan)
    is_anomaly = np.zeros(n_rows, dtype=bool)
    good = np.ones(n_rows, dtype=bool)
    good[list(errors)] = False
    if not good.any():
        return MatrixScores(score, p_value, is_anomaly, errors)
    good_features = features[good]
    # the same search as Detector.score: the score of a row does not depend on the path
    good_scores = detector.reference_index_.score(
        detector.embedder_.embed(good_features), detector.n_neighbors)
    score[good] = good_scores
    p_value[good] = detector.calibrator_.p_value(good_scores)
    if detector.threshold_ is not None:
        is_anomaly[good] = good_scores > detector.threshold_
    flagged = np.flatnonzero(is_anomaly)
    neighbours: dict[int, list[dict[str, Any]]] = {}
    explained: dict[int, list[dict[str, Any]]] = {}
    if not len(flagged) or (n_neighbours <= 0 and explain <= 0):
        return MatrixScores(score, p_value, is_anomaly, errors)
    # the flagged rows' neighbours and explanations, from one search
    flagged_features = features[flagged]
    _, distances, search_rows = neighbour_search(detector, flagged_features, n_neighbours)
    for position, fields in flagged_fields(detector, flagged_features, search_rows,
                                           np.arange(min(explain, len(flagged))),
                                           n_fields).items():
        explained[int(flagged[position])] = fields
    if n_neighbours > 0:
        rows = search_rows[:, :n_neighbours]
        ids = neighbour_reference_ids(detector.reference_ids_, rows)
        copies = detector.reference_index_.counts_[rows].tolist()
        for row, row_ids, row_distances, row_copies in zip(
                flagged.tolist(), ids, distances[:, :n_neighbours].tolist(), copies,
                strict=True):
            neighbours[row] = [{"id": rid, "distance": d, "copies": c} for rid, d, c
                               in zip(row_ids, row_distances, row_copies, strict=True)]
    return MatrixScores(score, p_value, is_anomaly, errors, neighbours, explained)
