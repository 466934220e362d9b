"""The detector's learned distance is a metric (property-based, from the definition).

d(x, y) is what the Detector ranks by: the distance that its ``ReferenceIndex`` returns between
the embeddings of two records. Checked on a trained metric embedder, through a fitted Detector.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from nearwatch.detector import Detector
from nearwatch.detector.embedding.training import TrainingConfig
from nearwatch.detector.index import ReferenceIndex

N_FIELDS = 4
rows = arrays(np.float32, (N_FIELDS,), elements=st.floats(-20, 20, width=32))


@pytest.fixture(scope="module")
def detector() -> Detector:
    x = np.random.default_rng(0).normal(size=(300, N_FIELDS)).astype(np.float32)
    config = TrainingConfig(max_steps=30, hidden=(32,), embedding_dim=8, seed=0)
    return Detector(encoder="metric", alpha=None, training=config).fit(x)


def _embed(detector: Detector, rows: np.ndarray) -> np.ndarray:
    """Records → the embeddings that the detector indexes (schema, then learned embedder)."""
    return detector.embedder_.embed(detector.feature_encoder_.transform(rows))


def _distance(detector: Detector, x: np.ndarray, y: np.ndarray) -> float:
    """The detector's distance: embed both records, ask a reference index for the distance."""
    ex, ey = _embed(detector, np.stack([x, y]))
    index = ReferenceIndex(metric=detector.metric, kind="flat").fit(ey[None])
    distances, _ = index.search(ex[None], 1)
    return float(distances[0, 0])


def _tolerance(*embeddings: np.ndarray) -> float:
    # float32 arithmetic: error grows with the magnitude of the embeddings
    return 1e-3 * (1.0 + max(float(np.abs(e).max()) for e in embeddings))


@settings(max_examples=60, deadline=None)
@given(x=rows)
def test_identity_of_indiscernibles(detector: Detector, x: np.ndarray) -> None:
    tolerance = _tolerance(_embed(detector, x[None]))
    assert _distance(detector, x, x) == pytest.approx(0.0, abs=tolerance)


@settings(max_examples=60, deadline=None)
@given(x=rows, y=rows)
def test_positivity_and_symmetry(detector: Detector, x: np.ndarray, y: np.ndarray) -> None:
    ex, ey = _embed(detector, np.stack([x, y]))
    d_xy, d_yx = _distance(detector, x, y), _distance(detector, y, x)
    assert d_xy == pytest.approx(d_yx, abs=_tolerance(ex, ey))
    gap = float(np.linalg.norm(ex.astype(np.float64) - ey))
    # and it is the Euclidean distance of the embeddings (numpy, float64)
    assert d_xy == pytest.approx(gap, abs=_tolerance(ex, ey))
    if gap > _tolerance(ex, ey):  # distinct embeddings (beyond float32 resolution)
        assert d_xy > 0.0


@settings(max_examples=60, deadline=None)
@given(x=rows, y=rows, z=rows)
def test_triangle_inequality(
    detector: Detector, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> None:
    ex, ey, ez = _embed(detector, np.stack([x, y, z]))
    d_xz = _distance(detector, x, z)
    d_xy, d_yz = _distance(detector, x, y), _distance(detector, y, z)
    assert d_xz <= d_xy + d_yz + _tolerance(ex, ey, ez)


def test_distinct_records_have_distinct_embeddings(detector: Detector) -> None:
    # the standardised features are part of the embedding, so d(x, y) = 0 only if x = y
    x = np.zeros((2, N_FIELDS), dtype=np.float32)
    x[1, 2] = 1e-2
    ex, ey = _embed(detector, x)
    assert np.linalg.norm(ex - ey) > 0
    assert _distance(detector, x[0], x[1]) > 0
