"""Which fields make a record unusual: each field's deviation from the record's typical normal
neighbours, in the schema's scaled features (where a category change costs 1).

The typical neighbours are the scoring search's own nearest references (no second search),
except for a model trained with known anomalies: its embedding weighs the learned part ten
times and pushes anomalies away from every normal record, so an anomaly's nearest references
are the few at the edge of the normal region, the same ones for most anomalies, and comparing
fields against them names the wrong field. Such a model's typical neighbours are the nearest
references in the scaled features themselves, searched exactly (``feature_neighbour_rows``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .features.fields import OTHER_CATEGORY
from .features.matrix import FEATURE_LIMIT
from .index import ReferenceIndex

if TYPE_CHECKING:
    from .detector import Detector

# A known-anomaly model's typical neighbours come from at most this many references, evenly
# spread over them: an exact search per explained record costs O(references), and a field's
# typical value does not need the very nearest of a million records.
FEATURE_SEARCH_REFERENCES = 65_536

# per reference set: the searched references' rows and an exact index of their features
_feature_samples: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, ReferenceIndex]] = (
    weakref.WeakKeyDictionary())


def reference_features(detector: Detector, rows: np.ndarray) -> np.ndarray:
    """Feature rows of distinct references: stored, or read back from the index vectors."""
    if detector.reference_features_ is not None:
        return np.asarray(detector.reference_features_[rows], dtype=np.float32)
    vectors = detector.reference_index_.reconstruct(rows)
    features = detector.embedder_.features_from_embedding(vectors)
    if features is None:  # cannot happen for a fitted detector: fit stores them then
        raise ValueError("this detector's references cannot be turned back into features")
    # undoing the z-scoring in float32 leaves ~1e-8 where a feature was exact (a typical
    # count of 0 showed as -4.4e-08); features are in robust sd, so 1e-6 of one is nothing
    return np.round(features, 6)


def typical_neighbour_rows(detector: Detector, features: np.ndarray,
                           rows: np.ndarray) -> np.ndarray:
    """The distinct references to compare ``features`` with: the scoring search's ``rows``,
    or, for a model trained with known anomalies, the nearest ones in feature space."""
    if not detector.n_known_anomalies_ or not hasattr(detector.embedder_, "standardise"):
        return rows  # no known anomalies, or not learned from (the identity embedder)
    return feature_neighbour_rows(detector, features, detector.n_neighbors)


def feature_neighbour_rows(detector: Detector, features: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` distinct references nearest to each feature row (Euclidean, exact,
    over at most ``FEATURE_SEARCH_REFERENCES`` references), nearest first."""
    sample_rows, sample_index = _feature_sample(detector)
    _, found = sample_index.search(_standardised(detector, features), min(k, len(sample_rows)))
    return sample_rows[found]


def _feature_sample(detector: Detector) -> tuple[np.ndarray, ReferenceIndex]:
    """The searched references' rows and an exact index of their features (built once per
    reference set)."""
    references = detector.reference_index_
    cached = _feature_samples.get(references)
    if cached is None:
        n = references.n_unique_
        rows = (np.arange(n, dtype=np.int64) if n <= FEATURE_SEARCH_REFERENCES else
                np.linspace(0, n - 1, FEATURE_SEARCH_REFERENCES).astype(np.int64))
        index = ReferenceIndex(kind="flat").fit(
            _standardised(detector, reference_features(detector, rows)))
        cached = _feature_samples[references] = rows, index
    return cached


def _standardised(detector: Detector, features: np.ndarray) -> np.ndarray:
    """Features as the embedding's raw part weighs them (z-scored): a rare category's column
    weighs more than a common one's, so the nearest records keep a record's rare values."""
    standardise = getattr(detector.embedder_, "standardise", None)
    rows = np.asarray(features, dtype=np.float32)
    return rows if standardise is None else np.ascontiguousarray(standardise(rows))


def field_deviations(
    detector: Detector, features: np.ndarray, rows: np.ndarray, n_fields: int,
    records: Sequence[Any] | None = None,
) -> list[list[dict[str, Any]]]:
    """Per feature row, the ``n_fields`` fields deviating most from its k nearest records.

    ``rows``: the row's nearest distinct references as ``neighbour_search`` returns them (the
    scoring search's own rows serve; see ``typical_neighbour_rows``). A field's deviation is
    the Euclidean distance, over the field's scaled feature columns, between the record and
    the column-wise median of its k nearest references: the median is the typical normal
    neighbour, robust to one odd reference. ``records`` (the rows' records, where there are
    some): a field's ``value`` is the record's own, as given, rather than read back from the
    float32 features (6 digits).
    """
    if not len(features):
        return []
    encoder = detector.feature_encoder_
    rows = typical_neighbour_rows(detector, features, rows)
    # the k nearest *records* of each query: a distinct reference counts as often as taken
    taken = detector.reference_index_.records_taken(rows, detector.n_neighbors)
    nearest_records = np.repeat(rows.ravel(), taken.ravel()).reshape(len(rows), -1)
    neighbours = reference_features(detector, nearest_records)
    typical = np.median(neighbours, axis=1)
    # per-field Euclidean deviation for every record at once: squared differences summed
    # over each field's columns (a column -> field membership matrix)
    field_names = list(encoder.field_columns_)
    membership = np.zeros((features.shape[1], len(field_names)), dtype=np.float32)
    for position, columns in enumerate(encoder.field_columns_.values()):
        membership[columns, position] = 1.0
    deviations = np.sqrt(((features - typical) ** 2) @ membership)
    ranked = np.argsort(-deviations, axis=1, kind="stable")[:, :n_fields]
    specs = {spec["name"]: spec for spec in encoder.fields_}
    return [[_field_detail(encoder, specs[field_names[j]], float(deviations[i, j]),
                           features[i], typical[i], neighbours[i],
                           None if records is None else records[i])
             for j in ranked[i].tolist()]
            for i in range(len(features))]


def _field_detail(encoder: Any, spec: dict[str, Any], deviation: float, row: np.ndarray,
                  typical: np.ndarray, neighbours: np.ndarray, record: Any) -> dict[str, Any]:
    field = spec["name"]
    detail: dict[str, Any] = {"field": field, "deviation": deviation}
    given = record.get(field) if isinstance(record, dict) else None
    value_column = encoder.numeric_value_column(field)
    if value_column is not None:
        own = given is None or isinstance(given, int | float) and not isinstance(given, bool)
        if isinstance(record, dict) and own:  # None: it lacked the field (scored as typical)
            detail["value"] = given
        else:  # float32 features (after log or scale maps) keep ~6 significant digits
            detail["value"] = _float32_digits(
                encoder.inverse_numeric(field, float(row[value_column])))
        detail["typical"] = _float32_digits(
            encoder.inverse_numeric(field, float(typical[value_column])))
        if abs(row[value_column]) >= np.float32(FEATURE_LIMIT):
            detail["clipped"] = True  # the value is at least this far out (features are clipped)
    elif spec["kind"] == "boolean":
        column = encoder.field_columns_[field][0]
        detail["value"] = given if isinstance(record, dict) else bool(row[column] >= 0.5)
        detail["typical"] = bool(typical[column] >= 0.5)
    elif spec.get("encoding") == "onehot":
        # the category most of the k nearest records have (the columns hold one per record)
        columns = encoder.field_columns_[field]
        names = [*spec["categories"], OTHER_CATEGORY]
        detail["value"] = given if isinstance(record, dict) else names[
            int(np.argmax(row[columns]))]
        # the category most of them have: the median the deviation is measured from (none
        # when no category has a majority: the median is then no category at all)
        votes = (neighbours[:, columns] > 0).sum(axis=0)
        detail["typical"] = names[int(np.argmax(votes))] if votes.max() * 2 > len(
            neighbours) else None
    return detail


def _float32_digits(value: float) -> float:
    return float(f"{value:.6g}")
