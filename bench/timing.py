"""Training-time check: the metric-learned encoder on a 100 k × 40-field training set.

The records are synthetic (a correlated Gaussian mixture): training cost depends on the shape of
the data, not its meaning. Both the encoder training alone and a full ``Detector.fit``
(schema, training, calibration, index) are timed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from nearwatch.detector import Detector
from nearwatch.detector.embedding.training import TrainingConfig, train_embedder


def synthetic_normals(n_rows: int, n_fields: int, seed: int = 0) -> np.ndarray:
    """``n_rows`` records from 8 correlated Gaussian clusters.

    >>> synthetic_normals(10, 3).shape
    (10, 3)
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(8, n_fields))
    mixing = rng.normal(size=(n_fields, n_fields)) / np.sqrt(n_fields)
    cluster = rng.integers(0, 8, size=n_rows)
    return (centres[cluster] + rng.normal(size=(n_rows, n_fields)) @ mixing).astype(np.float32)


def measure_training_time(n_rows: int = 100_000, n_fields: int = 40) -> dict[str, Any]:
    x = synthetic_normals(n_rows, n_fields)
    started = time.perf_counter()
    embedder = train_embedder(x, config=TrainingConfig())
    encoder_s = time.perf_counter() - started
    started = time.perf_counter()
    embedder.embed(x)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    detector = Detector(random_state=0).fit(x)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    detector.score(x[:20_000])
    score_s = time.perf_counter() - started
    return {
        "n_rows": n_rows,
        "n_fields": n_fields,
        "train_embedder_s": round(encoder_s, 2),
        "train_embedder_steps": embedder.history["steps"],
        "embed_records_per_s": round(n_rows / embed_s),
        "detector_fit_s": round(fit_s, 2),
        "detector_score_records_per_s": round(20_000 / score_s),
        "index_kind": detector.reference_index_.kind_,
    }
