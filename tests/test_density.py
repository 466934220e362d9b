"""Local density normalisation (``detector.density``): radii, persistence, old bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nearwatch.detector import Detector
from nearwatch.detector.density import fit_local_density
from nearwatch.detector.errors import BundleError
from nearwatch.detector.references import ReferenceSet
from nearwatch.detector.store.persistence import REFERENCE_RADII_FILE


def test_radii_count_copies_and_leave_the_reference_itself_out() -> None:
    vectors = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    references = ReferenceSet().fit(vectors, counts=np.array([3, 1, 1]))
    density = fit_local_density(references, vectors, k=2, power=0.5)
    assert density is not None
    # 0.0: two other copies at 0; 1.0: its 2 nearest others are copies of 0 at 1, 1;
    # 3.0: 1.0 at 2 and a copy of 0 at 3
    np.testing.assert_allclose(density.radii, [0.0, 1.0, 2.5])
    assert density.floor == pytest.approx(1e-3 * np.mean([0.0, 1.0, 2.5]), rel=1e-6)


def test_too_few_records_or_zero_power_means_plain_knn() -> None:
    vectors = np.array([[0.0], [1.0]], dtype=np.float32)
    references = ReferenceSet().fit(vectors)
    assert fit_local_density(references, vectors, k=2, power=0.25) is None  # 2 records, k=2
    assert fit_local_density(references, vectors, k=1, power=0.0) is None


def test_a_tight_cluster_makes_a_smaller_distance_more_anomalous() -> None:
    rng = np.random.default_rng(0)
    vectors = np.vstack([rng.normal(scale=0.1, size=(500, 2)),  # tight, at the origin
                         rng.normal(scale=2.0, size=(500, 2)) + [40.0, 0.0]]).astype(np.float32)
    queries = np.array([[1.5, 0.0], [40.0, 7.0]], dtype=np.float32)
    references = ReferenceSet().fit(vectors)
    plain = references.score(queries, 5)
    references.density_ = fit_local_density(references, vectors, 5, 0.25)
    local = references.score(queries, 5)
    np.testing.assert_allclose(plain, references.mean_distance(queries, 5))
    assert plain[0] < plain[1]  # farther from the diffuse cluster in plain distance
    assert local[0] > local[1]  # but off the tight cluster by many of its own radii


def test_bundle_keeps_the_radii_and_plain_bundles_have_none(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(800, 4))
    queries = np.random.default_rng(2).normal(size=(50, 4)) * 2
    local = Detector(encoder="identity").fit(data)
    local.save(tmp_path / "local")
    assert (tmp_path / "local" / REFERENCE_RADII_FILE).exists()
    loaded = Detector.load(tmp_path / "local")
    np.testing.assert_array_equal(loaded.score(queries), local.score(queries))
    assert loaded.reference_index_.density_ is not None
    plain = Detector(encoder="identity", density_power=0.0).fit(data)
    plain.save(tmp_path / "plain")
    assert not (tmp_path / "plain" / REFERENCE_RADII_FILE).exists()
    assert Detector.load(tmp_path / "plain").reference_index_.density_ is None


def test_radii_that_contradict_the_state_are_refused() -> None:
    data = np.random.default_rng(3).normal(size=(700, 3))
    references = Detector(encoder="identity").fit(data).reference_index_
    state = references.to_state()
    part0 = references.parts_

    def read(position: int, _: dict) -> object:
        return part0[position]

    with pytest.raises(BundleError, match="local density but no radii"):
        ReferenceSet.from_state(state, read, references.counts_)
    with pytest.raises(BundleError, match="do not match the reference index"):
        ReferenceSet.from_state(state, read, references.counts_,
                                radii=np.ones(3, dtype=np.float32))
    plain_state = {key: value for key, value in state.items() if key != "density"}
    with pytest.raises(BundleError, match="without local density"):
        ReferenceSet.from_state(plain_state, read, references.counts_,
                                radii=references.density_.radii)


def test_compressed_index_scores_plainly() -> None:
    data = np.random.default_rng(4).normal(size=(3_000, 4))
    detector = Detector(encoder="identity", index="ivf").fit(data)
    assert detector.reference_index_.kind_ == "ivf"
    assert detector.reference_index_.density_ is None


@pytest.mark.parametrize("power", [-0.5, 1.5, "high", True])
def test_invalid_density_power_is_refused(power: object) -> None:
    with pytest.raises(ValueError, match="density_power must be a number in \\[0, 1\\]"):
        Detector(density_power=power).fit(np.zeros((10, 2)))
