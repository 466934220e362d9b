"""Record-level scoring and explanations on top of a fitted ``Detector``.

Kept apart from ``Detector`` so the class reads as the estimator API; these functions are the
per-record entry points the service calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SchemaMismatchError
from .estimator import as_records
from .explanations import field_deviations

if TYPE_CHECKING:
    from .detector import Detector

log = logging.getLogger("nearwatch.detector")


def neighbour_search(
    detector: Detector, features: np.ndarray, n_neighbours: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores plus the distances and rows of the nearest distinct references.

    Searching more distinct neighbours than ``n_neighbors`` (for explanations) returns a
    superset of the candidates, so a score can only be lower than or equal to the calibrated
    search's.
    """
    references = detector.reference_index_
    k = detector.n_neighbors
    distances, rows, part0_rows = references.search_parts(
        detector.embedder_.embed(features), max(k, n_neighbours))
    scores = references.score_from_search(distances, rows, part0_rows, k)
    return scores, distances, rows


def neighbour_reference_ids(reference_ids: Any, rows: np.ndarray) -> list[list[Any]]:
    """Ids of the references at ``rows`` as plain Python values (ids may be an int64 array)."""
    if isinstance(reference_ids, np.ndarray):
        return reference_ids[rows].tolist()
    return [[reference_ids[row] for row in block] for block in rows.tolist()]


def score_record_batch(
    detector: Detector,
    records: Sequence[Any],
    n_neighbours: int,
    schema_version: str | None,
    explain: int = 0,
    n_fields: int = 3,
) -> list[dict[str, Any]]:
    """One result per record: score, p-value, flag, the threshold's guarantee, neighbours.

    ``certified`` and ``fpr_bound`` repeat the model's facts on every scored record, so a
    consumer of ``nearwatch score``/``stream`` output sees whether ``is_anomaly`` comes from a
    certified threshold (``fpr_bound`` <= alpha) or from too few calibration records.
    The first ``explain`` flagged records also get ``fields`` (``explain``'s), from the same
    search.
    """
    if schema_version is not None and schema_version != detector.schema_version_:
        raise SchemaMismatchError(
            f"records were prepared for schema version {schema_version}, but this model "
            f"uses schema version {detector.schema_version_}: re-train or send matching records"
        )
    records = as_records(records, "records")
    records = _array_rows(detector, records) if isinstance(records, np.ndarray) else records
    features, errors = detector.feature_encoder_.transform_records(records)
    id_field = detector.id_field
    results: list[dict[str, Any]] = [
        {"index": i, "id": record.get(id_field) if isinstance(record, dict) else None}
        for i, record in enumerate(records)
    ]
    good: list[int] = []
    for i, error in enumerate(errors):
        if error is None:
            good.append(i)
        else:
            results[i].update(error=str(error), field=error.field)
    if not good:
        return results
    good_rows = np.array(good, dtype=np.int64)
    good_features = features[good_rows]
    scores, distances, rows = neighbour_search(detector, good_features, n_neighbours)
    p_values = detector.calibrator_.p_value(scores)
    threshold = detector.threshold_
    certified, fpr_bound = bool(detector.certified_), detector.fpr_bound_
    reference_ids = detector.reference_ids_
    # Bulk numpy -> Python conversion (tolist) instead of a float() per value: same values
    # (float64 -> float and float32 -> float are exact), ~1 µs less per record.
    flags = [None] * len(good) if threshold is None else (scores > threshold).tolist()
    neighbour_rows = rows[:, :n_neighbours]
    neighbour_ids = neighbour_reference_ids(reference_ids, neighbour_rows)
    neighbour_copies = detector.reference_index_.counts_[neighbour_rows].tolist()
    for i, score, p_value, flag, ids, dists, copies in zip(
        good, scores.tolist(), p_values.tolist(), flags, neighbour_ids,
        distances[:, :n_neighbours].tolist(), neighbour_copies, strict=True,
    ):
        result = results[i]
        result["score"] = score
        result["p_value"] = p_value
        result["is_anomaly"] = flag
        result["threshold"] = threshold
        result["certified"] = certified  # False: threshold_ is not certified at alpha
        result["fpr_bound"] = fpr_bound  # the (1 - delta) upper bound on the threshold's FPR
        result["neighbours"] = [{"id": rid, "distance": d, "copies": c}
                                for rid, d, c in zip(ids, dists, copies, strict=True)]
    if explain > 0 and threshold is not None:
        flagged = np.flatnonzero(scores > threshold)[:explain]
        for position, fields in flagged_fields(detector, good_features, rows, flagged,
                                               n_fields, [records[i] for i in good]).items():
            results[good[position]]["fields"] = fields
    return results


def flagged_fields(detector: Detector, features: np.ndarray, rows: np.ndarray,
                   flagged: np.ndarray, n_fields: int, records: Sequence[Any] | None = None
                   ) -> dict[int, list[dict[str, Any]]]:
    """``field_deviations`` of the rows at positions ``flagged`` (``rows``: their search's
    rows), by position; none when it fails: an explanation never fails the scoring."""
    if not len(flagged):
        return {}
    try:
        fields = field_deviations(detector, features[flagged], rows[flagged], n_fields,
                                  None if records is None else [records[i] for i in flagged])
    except Exception:
        log.exception("could not explain %d flagged records", len(flagged))
        return {}
    return dict(zip(flagged.tolist(), fields, strict=True))


def explain_rows(
    detector: Detector, features: np.ndarray, n_neighbours: int, n_fields: int,
    records: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Nearest references and the fields that differ most from the k nearest ones
    (``field_deviations``); with the ``records``, each explanation starts with its record's
    id, and its fields' values are the record's own."""
    for name, value in (("n_neighbours", n_neighbours), ("n_fields", n_fields)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    scores, distances, rows = neighbour_search(detector, features, n_neighbours)
    p_values = detector.calibrator_.p_value(scores)
    fields = field_deviations(detector, features, rows, n_fields, records)
    ids = neighbour_reference_ids(detector.reference_ids_, rows[:, :n_neighbours])
    counts = detector.reference_index_.counts_[rows[:, :n_neighbours]].tolist()
    explanations = []
    for i in range(len(features)):
        explanations.append({
            **({} if records is None else {"id": records[i].get(detector.id_field)}),
            "score": float(scores[i]),
            "p_value": float(p_values[i]),
            "is_anomaly": None
            if detector.threshold_ is None
            else bool(scores[i] > detector.threshold_),
            "neighbours": [
                {"id": rid, "distance": float(distance), "copies": int(copies)}
                for distance, rid, copies in zip(
                    distances[i, :n_neighbours], ids[i], counts[i], strict=True)
            ],
            "fields": fields[i],
        })
    return explanations


def _array_rows(detector: Detector, matrix: np.ndarray) -> list[Any]:
    """Rows of a numeric array as records over the model's fields, in schema order (as
    ``score`` reads an array): ``score_records`` refused every row as "not a JSON object"."""
    names = [spec["name"] for spec in detector.feature_encoder_.fields_]
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError(f"an array to score needs shape (n, {len(names)}), got {matrix.shape}")
    return [dict(zip(names, row, strict=True)) for row in matrix.tolist()]
