"""PyOD detectors as peers on the same splits (optional: ``pip install pyod``; bench only).

Each peer is fitted on the training normals with PyOD's defaults (KNN: 5 neighbours, largest
distance, the same as ``raw_knn`` but through PyOD's own code path) on min-max-free raw
features z-scored with the training statistics, as PyOD's benchmark does. Fit and scoring are
timed separately so scoring rates can be compared with the Detector's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.memory import PeakMemory

PEERS = ("knn", "lof", "iforest", "ecod", "copod", "autoencoder")


def make_peer(name: str, seed: int) -> Any:
    if name == "knn":
        from pyod.models.knn import KNN

        return KNN(n_neighbors=5)
    if name == "lof":
        from pyod.models.lof import LOF

        return LOF(n_neighbors=20)
    if name == "iforest":
        from pyod.models.iforest import IForest

        return IForest(random_state=seed)
    if name == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD()
    if name == "copod":
        from pyod.models.copod import COPOD

        return COPOD()
    if name == "autoencoder":
        from pyod.models.auto_encoder import AutoEncoder

        return AutoEncoder(random_state=seed, verbose=0, epoch_num=10)
    raise ValueError(f"unknown peer {name!r}: choose from {PEERS}")


def evaluate_peers(train: np.ndarray, test: np.ndarray, is_anomaly: np.ndarray,
                   names: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """AUROC, AUPRC, fit seconds, scoring records/s and peak memory for each PyOD peer."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0
    train_z, test_z = (train - mean) / std, (test - mean) / std
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        peak = PeakMemory()
        with peak:  # fit and scoring, above the data (as for the Detector)
            peer = make_peer(name, seed)
            started = time.perf_counter()
            peer.fit(train_z)
            fit_s = time.perf_counter() - started
            started = time.perf_counter()
            scores = peer.decision_function(test_z)
            score_s = time.perf_counter() - started
        del peer  # its memory must not count in the next peer's baseline
        results[f"pyod_{name}"] = {
            "auroc": 100.0 * float(roc_auc_score(is_anomaly, scores)),
            "auprc": 100.0 * float(average_precision_score(is_anomaly, scores)),
            "fit_s": fit_s, "score_s": score_s, "records_per_s": len(test) / max(score_s, 1e-9),
            "peak_mb": peak.mb,
        }
    return results
