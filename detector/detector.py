"""``Detector``: records → features → embedding → kNN distance to normal references → flags.

Score: the **mean** Euclidean (or chord, for ``metric="cosine"``) distance from a record's
embedding to its k = ``n_neighbors`` nearest normal references. The mean of k distances is
steadier than the k-th distance alone with duplicated references (many zero distances); it is
divided by a damped local density (``detector.density``).

Calibration: the normal training records are split into references R and calibration records
C. The feature scaling and the embedder are fitted on R only. Distinct records are indexed once
with their multiplicity (``detector.references``). Calibration scores are the scores of C
computed by the very search that serves: the index over R (same object, same parameters), so
they are exchangeable with the scores that index gives new normal records, whatever its kind
(exact or HNSW). C is then added *without rebuilding R's index*: as extra copies of references
already in R, and as a second index part for values only C has. Search merges the parts, so
every record's served score is at most the score the calibrated search gives it, and the
certified threshold and p-values stay valid (conservative) while scoring uses every normal
record (a rebuilt HNSW graph over R ∪ C has no such bound: the duplicate-heavy data bug).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> det = Detector(alpha=0.05, delta=0.1, encoder="identity").fit(rng.normal(size=(400, 3)))
>>> bool(det.predict(np.array([[9.0, 9.0, 9.0]]))[0]), bool(det.predict(np.zeros((1, 3)))[0])
(True, False)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibrated import calibrate_references, stored_reference_features
from .calibration import ConformalCalibrator
from .embedding.supervision import FitSupervision, build_embedder_for_fit
from .errors import CalibrationWarning, NotFittedError, named_by_input
from .estimator import EstimatorAPI, as_records, warn_renamed
from .features.encoding import warn_about_input
from .features.schema import FeatureEncoder
from .fitted import FittedAttributes
from .fitting import (
    check_params,
    field_groups,
    numeric_columns,
    reference_ids,
    route_anomaly_flags,
    split_for_fit,
    uncertified_message,
)
from .references import compact_integers
from .scoring import explain_rows, score_record_batch
from .store.persistence import (
    detector_state,
    load_detector,
    model_version_of,
    restore_detector,
    save_detector,
)

Records = np.ndarray | Iterable[dict[str, Any]]


class Detector(EstimatorAPI, FittedAttributes):
    """Anomaly detector; every knob is a constructor argument (sklearn conventions).

    Parameters
    ----------
    n_neighbors: neighbours averaged in the score (formerly ``k``).
    metric: ``"euclidean"`` or ``"cosine"`` (chord distance on normalised embeddings).
    alpha: target false-positive rate of ``predict``; ``None`` skips the threshold
        (scores and p-values still work).
    delta: allowed probability that the realised FPR exceeds ``alpha`` (over the calibration draw).
    calibration_fraction: share of the normal training records held out for calibration
        (raised to the minimum that ``alpha``/``delta`` need, at most half, and at most what
        certifies ``alpha`` within a quarter of it: ~4 300 records at the defaults).
    encoder: ``"identity"`` (scaled features), ``"metric"`` (metric-learned MLP) or
        ``"auto"`` (the benchmarked default).
    id_field, label_fields, max_onehot, hash_buckets, schema: record → feature options
        (see ``detector.features.schema.FeatureEncoder``).
    index: ``"auto"`` (exact up to ``flat_max`` distinct references, HNSW up to
        ``compress_min``, compressed IVF-SQ8 above), ``"flat"``, ``"hnsw"`` or ``"ivf"``.
    training: a ``detector.embedding.training.TrainingConfig`` for the metric-learned encoder.
    random_state: controls the calibration split and training (formerly ``seed``).
    progress: show a training progress bar.
    density_power: power of the neighbours' own k-distance that divides the score (damped
        LOF, ``detector.density``; 0 = plain kNN distance; not applied to an IVF index).
    strict: with too few normal records to certify ``alpha``/``delta``, raise
        ``CalibrationError`` instead of fitting an uncertified threshold (``certified_ = False``
        and a ``CalibrationWarning``).
    k, seed: deprecated spellings of ``n_neighbors`` / ``random_state`` (``DeprecationWarning``).

    Fitted attributes end in ``_``. ``n_features_in_`` counts the input fields the schema uses:
    the columns of an array ``X``, or the feature fields of records (id, label and all-null
    fields excluded). ``n_features_`` counts the encoded feature columns.

    >>> Detector(n_neighbors=3).get_params()["n_neighbors"]
    3
    """

    def __init__(
        self,
        n_neighbors: int = 5,
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
        random_state: int = 0,
        progress: bool = False,
        strict: bool = False,
        compress_min: int = 200_000,
        density_power: float = 0.25,
        *,
        k: int | None = None,
        seed: int | None = None,
    ) -> None:
        if k is not None:
            warn_renamed("k")
            n_neighbors = k
        if seed is not None:
            warn_renamed("seed")
            random_state = seed
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.alpha = alpha
        self.delta = delta
        self.calibration_fraction = calibration_fraction
        self.encoder = encoder
        self.id_field = id_field
        self.label_fields = label_fields
        self.max_onehot = max_onehot
        self.hash_buckets = hash_buckets
        self.schema = schema
        self.index = index
        self.flat_max = flat_max
        self.training = training
        self.random_state = random_state
        self.progress = progress
        self.strict = strict
        self.compress_min = compress_min
        self.density_power = density_power

    # ------------------------------------------------------------------ fitting
    def fit(
        self, X: Records, y: Any = None, *,
        labels: Sequence[Any] | None = None,
        pairs: Sequence[Sequence[Any]] | None = None,
        triplets: Sequence[Sequence[int]] | None = None,
        anomalies: Records | None = None,
        calibration: Records | None = None,
    ) -> Detector:
        """Learn normal behaviour from the normal records of ``X``; returns ``self``.

        y: optional 0/1 anomaly flags, one per record of ``X`` (bools, or numbers exactly 0 or
        1): flagged rows are not normal references but known anomalies, added to
        ``anomalies``. labels: class of each record (supervised metric learning; entries of
        flagged rows are ignored); pairs: ``(i, j, similar)`` index triples; triplets:
        ``(anchor, positive, negative)`` indices: all index positions in ``X``, and a pair or
        triplet naming a flagged row is a ``ValueError``. anomalies: a few known anomalous
        records, used as hard negatives by a learned encoder. calibration: normal records to
        calibrate on instead of a random share of ``X`` (all of ``X`` then becomes references).
        """
        check_params(self.get_params())
        data = as_records(X, fitting=True)
        anomaly_data = None if anomalies is None else as_records(anomalies, "anomalies")
        inputs = route_anomaly_flags(data, y, labels, pairs, triplets, anomaly_data)
        n = len(inputs.normals)
        split = split_for_fit(
            inputs, None if calibration is None else as_records(calibration, "calibration"),
            self.n_neighbors, self.alpha, self.delta,
            self.calibration_fraction, self.random_state, self.strict)
        reference_data, calibration_data = split.reference_data, split.calibration_data
        reference_rows, needed = split.reference_rows, split.needed
        labels = self.label_fields
        with named_by_input(split.id_rows[:len(reference_rows)]):
            feature_encoder = FeatureEncoder(
                id_field=self.id_field, max_onehot=self.max_onehot, hash_buckets=self.hash_buckets,
                declared_schema=self.schema,
                label_fields=(labels,) if isinstance(labels, str) else tuple(labels),
            ).fit(reference_data)
            reference_features = feature_encoder.transform(reference_data)
        with named_by_input(split.id_rows[len(reference_rows):]):
            calibration_features = feature_encoder.transform(calibration_data)
        anomaly_features = None
        if inputs.anomalies is not None and len(inputs.anomalies):
            with named_by_input(inputs.anomaly_rows):
                anomaly_features = feature_encoder.transform(inputs.anomalies)

        supervision = FitSupervision.restrict(
            inputs.labels, inputs.pairs, inputs.triplets, reference_rows, n)
        column_groups, hashed_fields = field_groups(feature_encoder)
        embedder = build_embedder_for_fit(
            self.encoder, reference_features, supervision, anomaly_features,
            numeric_columns=numeric_columns(feature_encoder),
            column_groups=column_groups, invariant_fields=hashed_fields,
            training=self.training, seed=self.random_state, progress=self.progress,
        )
        fitted = calibrate_references(
            embedder, reference_features, calibration_features, metric=self.metric,
            index=self.index, flat_max=self.flat_max, compress_min=self.compress_min,
            random_state=self.random_state, n_neighbors=self.n_neighbors,
            calibrator=ConformalCalibrator(self.alpha, self.delta, strict=self.strict),
            density_power=self.density_power,
        )
        references, calibrator = fitted.references, fitted.calibrator
        ids = reference_ids(feature_encoder, reference_data, calibration_data, split.id_rows)
        self.feature_encoder_: FeatureEncoder = feature_encoder
        self.embedder_ = embedder
        self.training_mode_ = supervision.mode
        self.n_known_anomalies_ = 0 if anomaly_features is None else len(anomaly_features)
        self.calibrator_: ConformalCalibrator = calibrator
        self.calibration_index_ = references.kinds_[0]
        self.reference_index_ = references
        self.reference_features_ = stored_reference_features(
            self.metric, embedder, references, fitted.features)
        representative_ids = [ids[row] for row in fitted.representatives.tolist()]
        # integer ids (or row numbers) as one int64 array: a million of them as Python ints
        # would cost every worker process ~36 MB; an array is mapped from the bundle, shared
        self.reference_ids_: list[Any] | np.ndarray = (
            compact_integers(np.asarray(representative_ids, dtype=np.int64))
            if all(type(rid) is int for rid in representative_ids) else representative_ids)
        self.n_reference_ = references.n_records_
        self.n_unique_reference_ = references.n_unique_
        self.duplicate_factor_ = self.n_reference_ / self.n_unique_reference_
        self.n_calibration_ = len(calibration_features)
        self.n_features_ = feature_encoder.n_features_
        self.n_features_in_ = len(feature_encoder.fields_)
        self.schema_version_ = feature_encoder.version_
        self.threshold_ = calibrator.threshold_
        self.fpr_bound_ = calibrator.fpr_bound_
        self.certified_ = bool(calibrator.certified_)
        self.model_version_ = model_version_of(self)
        self._params_at_fit = self._config()  # scoring refuses to run with other ones
        if self.alpha is not None and not self.certified_ and self.fpr_bound_ is not None:
            warnings.warn(uncertified_message(n, needed, self.alpha, self.delta,
                          self.n_calibration_, self.fpr_bound_), CalibrationWarning, stacklevel=2)
        return self

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "reference_index_"):
            raise NotFittedError("this Detector is not fitted yet: call fit() or Detector.load()")
        self._check_params_unchanged()

    def _embed(self, X: Records) -> np.ndarray:
        self._check_fitted()
        data, before = as_records(X), dict(self.feature_encoder_.missing_fields_seen_)
        features = self.feature_encoder_.transform(data)
        warn_about_input(self.feature_encoder_, before, data)  # a dropped field, column order
        return self.embedder_.embed(features)

    def score(self, X: Records) -> np.ndarray:
        """Mean distance to the ``n_neighbors`` nearest normal references; higher = anomalous."""
        embeddings = self._embed(X)
        return self.reference_index_.score(embeddings, self.n_neighbors)

    def p_value(self, X: Records) -> np.ndarray:
        """Conformal p-values in (0, 1]: small means unlike the calibration normals."""
        scores = self.score(X)
        return self.calibrator_.p_value(scores)

    def predict(self, X: Records) -> np.ndarray:
        """``True`` where the score exceeds the threshold (see ``certified_``, ``fpr_bound_``)."""
        self._check_fitted()
        if self.threshold_ is None:
            raise NotFittedError("this Detector was fitted with alpha=None: it has no threshold")
        return self.score(X) > self.threshold_

    def explain(self, X: Records, n_neighbours: int = 3, n_fields: int = 3
                ) -> list[dict[str, Any]]:
        """Per record: its id (records only), nearest references, the most deviating fields."""
        self._check_fitted()
        data = as_records(X)
        features = self.feature_encoder_.transform(data)
        return explain_rows(self, features, n_neighbours, n_fields,
                            None if isinstance(data, np.ndarray) else data)

    def score_records(
        self, records: Sequence[Any], n_neighbours: int = 3, schema_version: str | None = None,
        explain: int = 0,
    ) -> list[dict[str, Any]]:
        """Score each record on its own terms: a result, or an error naming the field (bad
        records never stop the good ones); the first ``explain`` flagged ones get ``fields``."""
        self._check_fitted()
        return score_record_batch(self, records, n_neighbours, schema_version, explain)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """All fitted state: a JSON-able manifest part and named files (see ``store.bundle``).

        Every public fitted attribute is included; one not declared in ``detector.fitted``
        or not JSON-able makes this raise ``TypeError`` rather than be lost.
        """
        self._check_fitted()
        return detector_state(self)

    @classmethod
    def from_state(cls, manifest: dict[str, Any], files: Mapping[str, bytes]) -> Detector:
        """Rebuild a fitted Detector from ``to_state()``; ``BundleError`` if inconsistent."""
        return restore_detector(cls, manifest, files)

    def save(self, path: str | Path, signing_key: bytes | None = None) -> None:
        """Write a verified bundle directory, HMAC-signed with ``signing_key`` if given."""
        self._check_fitted()
        save_detector(self, Path(path), signing_key)

    @classmethod
    def load(cls, path: str | Path, signing_key: bytes | None = None) -> Detector:
        """Load a bundle, verifying every checksum (and, with a key, its signature) first."""
        return load_detector(cls, Path(path), signing_key)
