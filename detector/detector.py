"""``Detector``: records → features → embedding → kNN distance to normal references → flags.

Score: the **mean** Euclidean (or chord, for ``metric="cosine"``) distance from a record's
embedding to its ``k`` nearest normal references. The mean of k distances is steadier than the
k-th distance alone when references are duplicated (many zero distances) and still grows
with every neighbour's distance, so a record far from all normals scores high.

Calibration: the normal training records are split into references R and calibration records
C. The feature scaling and the embedder are fitted on R only. Distinct records are indexed once
with their multiplicity (``detector.references``). Calibration scores are the scores of C
computed by the very search that serves: the index over R (same object, same parameters), so
they are exchangeable with the scores that index gives new normal records, whatever its kind
(exact or HNSW). C is then added *without rebuilding R's index*: as extra copies of references
already in R, and as a second index part for values only C has. Search merges the parts, so
every record's served score is at most the score the calibrated search gives it, and the
certified threshold and p-values stay valid (conservative) while scoring uses every normal
record. (A kNN distance to a rebuilt HNSW graph over R ∪ C has no such bound: that was the
bug on duplicate-heavy real data.)

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> det = Detector(alpha=0.05, delta=0.1, encoder="identity").fit(rng.normal(size=(400, 3)))
>>> bool(det.predict(np.array([[9.0, 9.0, 9.0]]))[0]), bool(det.predict(np.zeros((1, 3)))[0])
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import ConformalCalibrator, required_calibration_size
from .embedding.supervision import FitSupervision, build_embedder_for_fit
from .errors import CalibrationError, NotFittedError
from .features.schema import FeatureEncoder
from .io import take_rows
from .references import ReferenceSet, group_duplicates
from .scoring import explain_rows, score_record_batch
from .store.persistence import load_detector, save_detector

ENCODERS = ("auto", "identity", "metric")


class Detector:
    """Anomaly detector; every knob is a constructor argument (sklearn style).

    Parameters
    ----------
    k: neighbours averaged in the score.
    metric: ``"euclidean"`` or ``"cosine"`` (chord distance on normalised embeddings).
    alpha: target false-positive rate of ``predict``; ``None`` skips the threshold
        (scores and p-values still work).
    delta: allowed probability that the realised FPR exceeds ``alpha`` (over the calibration draw).
    calibration_fraction: share of the normal training records held out for calibration
        (raised to the minimum that ``alpha``/``delta`` need, at most half).
    encoder: ``"identity"`` (scaled features), ``"metric"`` (metric-learned MLP) or
        ``"auto"`` (the benchmarked default).
    id_field, label_fields, max_onehot, hash_buckets, schema: record → feature options
        (see ``detector.schema.FeatureEncoder``).
    index: ``"auto"`` (exact while small, HNSW above ``flat_max``), ``"flat"`` or ``"hnsw"``.
    training: a ``detector.training.TrainingConfig`` for the metric-learned encoder.
    seed: controls the calibration split and training.
    """

    def __init__(
        self,
        k: int = 5,
        metric: str = "euclidean",
        alpha: float | None = 0.01,
        delta: float = 0.05,
        calibration_fraction: float = 0.3,
        encoder: str = "auto",
        id_field: str = "id",
        label_fields: Sequence[str] = (),
        max_onehot: int = 32,
        hash_buckets: int = 16,
        schema: dict[str, Any] | None = None,
        index: str = "auto",
        flat_max: int = 20_000,
        training: Any = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.k = k
        self.metric = metric
        self.alpha = alpha
        self.delta = delta
        self.calibration_fraction = calibration_fraction
        self.encoder = encoder
        self.id_field = id_field
        self.label_fields = tuple(label_fields)
        self.max_onehot = max_onehot
        self.hash_buckets = hash_buckets
        self.schema = schema
        self.index = index
        self.flat_max = flat_max
        self.training = training
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: np.ndarray | Iterable[dict[str, Any]],
        labels: Sequence[Any] | None = None,
        pairs: Sequence[Sequence[Any]] | None = None,
        triplets: Sequence[Sequence[int]] | None = None,
        anomalies: np.ndarray | Iterable[dict[str, Any]] | None = None,
    ) -> Detector:
        """Learn normal behaviour from normal records ``X``; returns ``self``.

        labels: class of each record (supervised metric learning); pairs: ``(i, j, similar)``
        index triples; triplets: ``(anchor, positive, negative)`` indices; anomalies: a few
        known anomalous records, used as hard negatives. Indices refer to positions in ``X``.
        """
        self._check_params()
        data = X if isinstance(X, np.ndarray) else list(X)
        n = len(data)
        reference_rows, calibration_rows = self._split(n)
        reference_data = take_rows(data, reference_rows)
        calibration_data = take_rows(data, calibration_rows)

        self.feature_encoder_ = FeatureEncoder(
            id_field=self.id_field,
            max_onehot=self.max_onehot,
            hash_buckets=self.hash_buckets,
            declared_schema=self.schema,
            label_fields=self.label_fields,
        ).fit(reference_data)
        reference_features = self.feature_encoder_.transform(reference_data)
        calibration_features = self.feature_encoder_.transform(calibration_data)
        anomaly_features = None
        if anomalies is not None:
            anomaly_data = anomalies if isinstance(anomalies, np.ndarray) else list(anomalies)
            if len(anomaly_data):
                anomaly_features = self.feature_encoder_.transform(anomaly_data)

        supervision = FitSupervision.restrict(labels, pairs, triplets, reference_rows, n)
        column_groups, hashed_fields = _field_groups(self.feature_encoder_)
        self.embedder_ = build_embedder_for_fit(
            self.encoder, reference_features, supervision, anomaly_features,
            numeric_columns=_numeric_columns(self.feature_encoder_),
            column_groups=column_groups, invariant_fields=hashed_fields,
            training=self.training, seed=self.seed, progress=self.progress,
        )
        self.training_mode_ = supervision.mode

        # Each distinct record is embedded and indexed once, with its multiplicity. Part 0 of
        # the reference set (R) is the very index that calibration searches and that serves;
        # calibration records C are added afterwards as extra copies or a new part, which can
        # only lower a score (see detector.references and the module docstring).
        groups = group_duplicates(reference_features, calibration_features)
        stacked_features = np.vstack([reference_features, calibration_features])
        distinct_features = stacked_features[groups.representatives]
        distinct_embeddings = self.embedder_.embed(distinct_features)
        n_part0 = len(groups.in_references)
        references = ReferenceSet(
            metric=self.metric, kind=self.index, flat_max=self.flat_max, seed=self.seed
        ).fit(distinct_embeddings[:n_part0], groups.reference_counts[:n_part0])
        calibration_groups = np.unique(groups.calibration_group)
        group_scores = np.zeros(len(distinct_features), dtype=np.float64)
        group_scores[calibration_groups] = references.mean_distance(
            distinct_embeddings[calibration_groups], self.k
        )
        self.calibrator_ = ConformalCalibrator(alpha=self.alpha, delta=self.delta).fit(
            group_scores[groups.calibration_group]
        )
        self.calibration_index_ = references.kinds_[0]

        # Score against every normal record (R ∪ C) without touching part 0's index.
        references.add_copies(groups.calibration_counts[:n_part0])
        if len(distinct_features) > n_part0:
            references.add_part(
                distinct_embeddings[n_part0:], groups.calibration_counts[n_part0:]
            )
        self.reference_index_ = references
        self.reference_features_ = distinct_features
        all_ids = _reference_ids(
            self.feature_encoder_, reference_data, calibration_data,
            np.concatenate([reference_rows, calibration_rows]),
        )
        self.reference_ids_ = [all_ids[row] for row in groups.representatives.tolist()]
        self.n_reference_ = references.n_records_
        self.n_unique_reference_ = references.n_unique_
        self.duplicate_factor_ = self.n_reference_ / self.n_unique_reference_
        self.n_calibration_ = len(calibration_features)
        self.n_features_ = self.feature_encoder_.n_features_
        self.schema_version_ = self.feature_encoder_.version_
        self.threshold_ = float(self.calibrator_.threshold_) if self.alpha is not None else None
        self.fpr_bound_ = float(self.calibrator_.fpr_bound_) if self.alpha is not None else None
        self.model_version_ = _model_version(
            distinct_features, references.counts_, self.get_params(), self.embedder_
        )
        return self

    def _check_params(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {self.metric!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError("calibration_fraction must be in (0, 1)")
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1) or None, got {self.alpha!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        wanted = math.ceil(self.calibration_fraction * n)
        needed = 1 if self.alpha is None else required_calibration_size(self.alpha, self.delta)
        n_calibration = min(max(wanted, needed), n // 2)
        if n_calibration < needed:
            raise CalibrationError(
                f"alpha={self.alpha} with delta={self.delta} needs at least {needed} "
                f"calibration records, i.e. at least {2 * needed} normal training records "
                f"(calibration uses at most half of them); got {n}. Provide more normal "
                "records, raise alpha or delta, or pass alpha=None for scores and p-values only."
            )
        if n - n_calibration < self.k:
            raise ValueError(f"need more than {self.k + n_calibration} records for k={self.k}")
        order = np.random.default_rng(self.seed).permutation(n)
        return np.sort(order[n_calibration:]), np.sort(order[:n_calibration])

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "reference_index_"):
            raise NotFittedError("this Detector is not fitted yet: call fit() or Detector.load()")

    def _embed(self, X: np.ndarray | Iterable[dict[str, Any]]) -> np.ndarray:
        self._check_fitted()
        data = X if isinstance(X, np.ndarray) else list(X)
        return self.embedder_.embed(self.feature_encoder_.transform(data))

    def score(self, X: np.ndarray | Iterable[dict[str, Any]]) -> np.ndarray:
        """Mean distance to the ``k`` nearest normal references; higher = more anomalous."""
        embeddings = self._embed(X)
        return self.reference_index_.mean_distance(embeddings, self.k)

    def p_value(self, X: np.ndarray | Iterable[dict[str, Any]]) -> np.ndarray:
        """Conformal p-values in (0, 1]: small means unlike the calibration normals."""
        scores = self.score(X)
        return self.calibrator_.p_value(scores)

    def predict(self, X: np.ndarray | Iterable[dict[str, Any]]) -> np.ndarray:
        """``True`` where the score exceeds the certified threshold."""
        self._check_fitted()
        if self.threshold_ is None:
            raise NotFittedError("this Detector was fitted with alpha=None: it has no threshold")
        return self.score(X) > self.threshold_

    def explain(
        self, X: np.ndarray | Iterable[dict[str, Any]], n_neighbours: int = 3, n_fields: int = 3
    ) -> list[dict[str, Any]]:
        """Per record: nearest normal references and the fields deviating most from them."""
        self._check_fitted()
        data = X if isinstance(X, np.ndarray) else list(X)
        features = self.feature_encoder_.transform(data)
        return explain_rows(self, features, n_neighbours, n_fields)

    def score_records(
        self, records: Sequence[Any], n_neighbours: int = 3, schema_version: str | None = None
    ) -> list[dict[str, Any]]:
        """Score each record on its own terms: a result, or an error naming the field.

        Bad records never stop the good ones in the same call from being scored.
        """
        self._check_fitted()
        return score_record_batch(self, records, n_neighbours, schema_version)

    # ------------------------------------------------------------------ persistence
    def get_params(self) -> dict[str, Any]:
        training = self.training
        if training is not None and hasattr(training, "__dataclass_fields__"):
            from dataclasses import asdict

            training = asdict(training)
        return {
            "k": self.k, "metric": self.metric, "alpha": self.alpha, "delta": self.delta,
            "calibration_fraction": self.calibration_fraction, "encoder": self.encoder,
            "id_field": self.id_field, "label_fields": list(self.label_fields),
            "max_onehot": self.max_onehot, "hash_buckets": self.hash_buckets,
            "schema": self.schema, "index": self.index, "flat_max": self.flat_max,
            "training": training, "seed": self.seed,
        }

    def save(self, path: str | Path) -> None:
        """Write a verified bundle directory (see ``detector.bundle``)."""
        self._check_fitted()
        save_detector(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Load a bundle, verifying every file's checksum first."""
        return load_detector(cls, Path(path))

    def __repr__(self) -> str:
        fitted = f", n_reference_={self.n_reference_}" if hasattr(self, "n_reference_") else ""
        return f"Detector(k={self.k}, metric={self.metric!r}, alpha={self.alpha}{fitted})"


def _numeric_columns(encoder: FeatureEncoder) -> np.ndarray:
    """Mask of the feature columns that carry numeric values (not 0/1 indicator columns)."""
    mask = np.zeros(encoder.n_features_, dtype=bool)
    for field in encoder.field_columns_:
        column = encoder.numeric_value_column(field)
        if column is not None:
            mask[column] = True
    return mask


def _field_groups(encoder: FeatureEncoder) -> tuple[np.ndarray, np.ndarray]:
    """Field index of each feature column, and which fields are hashed (high-cardinality ids).

    Self-supervision corrupts a field's columns together and always corrupts hashed fields:
    per-column corruption makes impossible one-hot mixes, and an id hashed into buckets is
    noise the embedding should not learn (synthetic records: +0.02 AUROC over per-column).
    """
    groups = np.zeros(encoder.n_features_, dtype=np.int64)
    hashed = np.zeros(len(encoder.fields_), dtype=bool)
    for index, spec in enumerate(encoder.fields_):
        groups[encoder.field_columns_[spec["name"]]] = index
        hashed[index] = spec.get("encoding") == "hash"
    return groups, hashed


def _reference_ids(
    encoder: FeatureEncoder, reference_data: Any, calibration_data: Any, rows: np.ndarray
) -> list[Any]:
    """Record ids where the records have them, else the training row number."""
    ids = list(encoder.record_ids(reference_data)) + list(encoder.record_ids(calibration_data))
    return [int(row) if rid is None else rid for rid, row in zip(ids, rows, strict=True)]


def _model_version(
    features: np.ndarray, counts: np.ndarray, params: dict[str, Any], embedder: Any
) -> str:
    """Content hash of what decides scores: references, configuration and encoder weights."""
    import hashlib
    import json

    from .store.bundle import fingerprint

    digest = hashlib.sha256(fingerprint(features).encode())
    digest.update(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    for name, tensor in sorted(embedder.tensors().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]
