"""The one-class protocol: splits, one evaluated run of the Detector, and the baselines.

For every dataset and seed: train on a random 50 % of the normals; test on the other 50 % plus
the anomalies. With ``labelled`` K > 0, K anomalies go to ``fit(anomalies=...)`` and leave the
test set; a dataset with fewer than 2K anomalies gives at most half of them (so some remain to
test on), and the number actually used is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from nearwatch.detector import Detector
from nearwatch.detector.calibration import required_calibration_size
from nearwatch.detector.errors import CalibrationError
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.memory import PeakMemory


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # normal rows only
    test: np.ndarray
    test_is_anomaly: np.ndarray  # bool
    labelled_anomalies: np.ndarray  # rows given to fit


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` float32 (n, d) and ``y`` bool (True = anomaly) from an ADBench-style ``.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return data["X"].astype(np.float32), data["y"].astype(bool)


def split(x: np.ndarray, y: np.ndarray, seed: int, labelled: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    normals = rng.permutation(np.flatnonzero(~y))
    anomalies = rng.permutation(np.flatnonzero(y))
    half = len(normals) // 2
    n_labelled = min(labelled, len(anomalies) // 2)
    test = np.concatenate([normals[half:], anomalies[n_labelled:]])
    return Split(
        train=x[normals[:half]],
        test=x[test],
        test_is_anomaly=np.concatenate(
            [np.zeros(len(normals) - half, bool), np.ones(len(anomalies) - n_labelled, bool)]
        ),
        labelled_anomalies=x[anomalies[:n_labelled]],
    )


def _quality(is_anomaly: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {
        "auroc": 100.0 * float(roc_auc_score(is_anomaly, scores)),
        "auprc": 100.0 * float(average_precision_score(is_anomaly, scores)),
    }


def evaluate_detector(
    s: Split, seed: int, alpha: float, delta: float, detector_params: dict[str, Any]
) -> dict[str, Any]:
    """Fit the real ``Detector`` on the training normals; quality, calibration and timing.

    A training set too small to certify ``alpha`` at ``delta`` raises ``CalibrationError``
    (``strict=True``: the benchmark reports certified thresholds only); then the run is
    reported as not certifiable (with the size needed) and scored by a detector fitted with
    ``alpha=None`` (same scores, no threshold).
    """
    anomalies = s.labelled_anomalies if len(s.labelled_anomalies) else None
    peak = PeakMemory()
    with peak:  # fit and scoring: the run's peak memory above the loaded data
        started = time.perf_counter()
        certified = True
        try:
            detector = Detector(alpha=alpha, delta=delta, random_state=seed, strict=True,
                                **detector_params)
            detector.fit(s.train, anomalies=anomalies)
        except CalibrationError:
            certified = False
            detector = Detector(alpha=None, delta=delta, random_state=seed, **detector_params)
            detector.fit(s.train, anomalies=anomalies)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        scores = detector.score(s.test)
        score_s = time.perf_counter() - started
    run: dict[str, Any] = {
        **_quality(s.test_is_anomaly, scores),
        "train_s": train_s,
        "score_s": score_s,
        "records_per_s": len(s.test) / max(score_s, 1e-9),
        "peak_mb": peak.mb,
        "n_train": len(s.train),
        "n_test_normal": int((~s.test_is_anomaly).sum()),
        "n_test_anomaly": int(s.test_is_anomaly.sum()),
        "n_labelled": len(s.labelled_anomalies),
        "training_mode": detector.training_mode_,
        "certified": certified,
        "calibration_index": detector.calibration_index_,
        "index_parts": detector.reference_index_.kinds_,
        "n_distinct_references": detector.n_unique_reference_,
        "duplicate_factor": detector.duplicate_factor_,
    }
    if certified:
        false_positives = int((scores[~s.test_is_anomaly] > detector.threshold_).sum())
        run.update(
            false_positives=false_positives,
            realised_fpr=false_positives / run["n_test_normal"],
            fpr_bound=detector.fpr_bound_,
            threshold=detector.threshold_,
        )
    else:
        needed = required_calibration_size(alpha, delta)
        run.update(calibration_records_needed=needed, training_normals_needed=2 * needed)
    return run


def raw_knn_scores(train: np.ndarray, test: np.ndarray, k: int = 5) -> np.ndarray:
    """Baseline: z-score with training stats, faiss Flat L2, distance to the k-th neighbour."""
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0
    reference = np.ascontiguousarray((train - mean) / std, dtype=np.float32)
    queries = np.ascontiguousarray((test - mean) / std, dtype=np.float32)
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    squared, _ = index.search(queries, k)
    return np.sqrt(np.maximum(squared[:, -1], 0.0))


def evaluate_baselines(s: Split, seed: int) -> dict[str, dict[str, float]]:
    """Raw-feature kNN and IsolationForest on the same split (labelled anomalies unused)."""
    results = {}
    started = time.perf_counter()
    knn = raw_knn_scores(s.train, s.test)
    results["raw_knn"] = {
        **_quality(s.test_is_anomaly, knn), "time_s": time.perf_counter() - started
    }
    started = time.perf_counter()
    forest = IsolationForest(random_state=seed).fit(s.train)
    iforest = -forest.score_samples(s.test)
    results["iforest"] = {
        **_quality(s.test_is_anomaly, iforest), "time_s": time.perf_counter() - started
    }
    return results
