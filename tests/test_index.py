"""ReferenceIndex against exact numpy brute force (faiss-test style), on seeded data."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from nearwatch.detector.errors import BundleError, NotFittedError
from nearwatch.detector.index import ReferenceIndex
from nearwatch.detector.threads import BLAS_THRESHOLD, configure_threads

K = 5


def brute_force(refs: np.ndarray, queries: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Exact (nq, n) distance matrix in float64: Euclidean, or chord distance for cosine."""
    r, q = refs.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))


def clustered(rng: np.random.Generator, n: int, dim: int, offset: float = 0.0) -> np.ndarray:
    centers = rng.normal(scale=4.0, size=(20, dim))
    points = centers[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))
    return (points + offset).astype(np.float32)


def check_exact(index: ReferenceIndex, refs, queries, metric: str = "euclidean") -> None:
    distances, indices = index.search(queries, K)
    full = brute_force(refs, queries, metric)
    expected = np.sort(full, axis=1)[:, :K]
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-5)
    # indices equal modulo ties: each returned neighbour really is at the reported distance
    np.testing.assert_allclose(
        np.take_along_axis(full, indices, 1), distances, rtol=1e-4, atol=1e-5
    )
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    assert (np.diff(distances, axis=1) >= 0).all()


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_flat_matches_numpy_brute_force(offset: float) -> None:
    rng = np.random.default_rng(0)
    refs, queries = clustered(rng, 2000, 24, offset), clustered(rng, 300, 24, offset)
    index = ReferenceIndex().fit(refs)
    assert index.kind_ == "flat" and (index.n_, index.dim_) == (2000, 24)
    check_exact(index, refs, queries)
    # continuous random data has no ties, so the indices must match exactly
    _, indices = index.search(queries, K)
    np.testing.assert_array_equal(indices, np.argsort(brute_force(refs, queries), 1)[:, :K])


def test_single_queries_and_batches_agree() -> None:
    rng = np.random.default_rng(1)
    refs, queries = clustered(rng, 1500, 32), clustered(rng, 40, 32)
    index = ReferenceIndex().fit(refs)
    batch_d, batch_i = index.search(queries, K)
    for row in range(0, 40, 7):
        one_d, one_i = index.search(queries[row : row + 1], K)
        np.testing.assert_allclose(one_d[0], batch_d[row], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(one_i[0], batch_i[row])


def test_cosine_matches_numpy_chord_distance() -> None:
    rng = np.random.default_rng(2)
    refs, queries = clustered(rng, 1000, 16, 1.0), clustered(rng, 200, 16, 1.0)
    index = ReferenceIndex(metric="cosine").fit(refs)
    check_exact(index, refs, queries, metric="cosine")
    distances, _ = index.search(queries, K)
    assert distances.max() <= 2.0 + 1e-5
    scaled, _ = index.search(queries * 7.5, K)  # cosine ignores the norm
    np.testing.assert_allclose(scaled, distances, rtol=1e-4, atol=1e-5)


def test_hnsw_recall_above_flat_max() -> None:
    rng = np.random.default_rng(3)
    data = clustered(rng, 4400, 16)  # queries from the same clusters as the references
    refs, queries = data[:4000], data[4000:]
    outliers = clustered(rng, 100, 16)  # fresh cluster centres: far from every reference
    index = ReferenceIndex(flat_max=1000).fit(refs)
    assert index.kind_ == "hnsw"
    distances, indices = index.search(queries, K)
    full = brute_force(refs, queries)
    kth = np.sort(full, axis=1)[:, K - 1 : K]
    recall = float((np.take_along_axis(full, indices, 1) <= kth * (1 + 1e-6)).mean())
    assert recall >= 0.95, recall
    # reported distances are exact for the neighbours HNSW found
    np.testing.assert_allclose(
        np.take_along_axis(full, indices, 1), distances, rtol=1e-4, atol=1e-5
    )
    # far-away queries: neighbour recall is lower, but the score (mean kNN distance) is close
    far, _ = index.search(outliers, K)
    exact_far = np.sort(brute_force(refs, outliers), axis=1)[:, :K].mean(1)
    assert np.median(far.mean(1) / exact_far - 1) <= 0.02


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_metric_axioms(metric: str, kind: str) -> None:
    rng = np.random.default_rng(4)
    xs, ys = clustered(rng, 60, 8, 0.5), clustered(rng, 50, 8, 0.5)
    d_xy = _full_matrix(ReferenceIndex(metric=metric, kind=kind).fit(ys), xs)
    d_yx = _full_matrix(ReferenceIndex(metric=metric, kind=kind).fit(xs), ys)
    np.testing.assert_allclose(d_xy, d_yx.T, rtol=1e-5, atol=1e-6)  # symmetry
    d_xx = _full_matrix(ReferenceIndex(metric=metric, kind=kind).fit(xs), xs)
    np.testing.assert_array_equal(np.diag(d_xx), 0.0)  # zero self-distance
    assert (d_xx >= 0).all()
    # triangle inequality d(a, c) <= d(a, b) + d(b, c) over all triples
    slack = d_xx[:, :, None] + d_xx[None, :, :] - d_xx[:, None, :]
    assert slack.min() >= -1e-5


def _full_matrix(index: ReferenceIndex, queries: np.ndarray) -> np.ndarray:
    distances, indices = index.search(queries, index.n_)
    matrix = np.empty_like(distances)
    np.put_along_axis(matrix, indices, distances, axis=1)
    return matrix


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_identical_references_and_zero_distances(kind: str) -> None:
    refs = np.tile(np.array([[1.0, -2.0, 3.0]], dtype=np.float32), (300, 1))
    index = ReferenceIndex(kind=kind).fit(refs)
    distances, indices = index.search(refs[:4], K)
    np.testing.assert_array_equal(distances, 0.0)
    assert ((indices >= 0) & (indices < 300)).all()
    far, _ = index.search(np.array([[1.0, -2.0, 7.0]]), K)
    np.testing.assert_allclose(far, 4.0)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_query_equal_to_a_reference_has_distance_zero(kind: str) -> None:
    rng = np.random.default_rng(5)
    refs = clustered(rng, 500, 12, 30.0)
    refs[100:110] = refs[7]  # a block of duplicates
    index = ReferenceIndex(kind=kind).fit(refs)
    distances, indices = index.search(refs[[7, 42]], K)
    assert distances[0].tolist() == [0.0] * K
    assert set(indices[0]) <= {7, *range(100, 110)}
    assert distances[1, 0] == 0.0 and indices[1, 0] == 42


def test_input_validation() -> None:
    rng = np.random.default_rng(6)
    refs = rng.normal(size=(10, 4))  # float64: converted
    index = ReferenceIndex().fit(refs)
    with pytest.raises(ValueError, match="k=11 exceeds the number of reference vectors"):
        index.search(refs, 11)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(refs, 0)
    with pytest.raises(ValueError, match="3 columns but the index was fitted on 4"):
        index.search(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match=r"queries must be a 2-D \(n, d\) array, got shape \(4,\)"):
        index.search(np.zeros(4), 2)
    with pytest.raises(ValueError, match="queries contain NaN or infinite values"):
        index.search(np.full((1, 4), np.nan), 2)
    with pytest.raises(ValueError, match="queries must be numeric"):
        index.search(np.full((1, 4), "a"), 2)
    distances, indices = index.search(np.zeros((0, 4)), 3)
    assert distances.shape == indices.shape == (0, 3)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    distances, _ = index.search(refs.astype(np.float64), 10)
    assert distances.dtype == np.float32
    with pytest.raises(NotFittedError, match="ReferenceIndex is not fitted"):
        ReferenceIndex().search(refs, 1)
    with pytest.raises(ValueError, match="metric must be one of .*got 'manhattan'"):
        ReferenceIndex(metric="manhattan").fit(refs)
    with pytest.raises(ValueError, match="kind must be one of .*got 'annoy'"):
        ReferenceIndex(kind="annoy").fit(refs)
    with pytest.raises(ValueError, match=r"must be a non-empty \(n, d\) array, got shape \(0, 4\)"):
        ReferenceIndex().fit(np.zeros((0, 4)))


def test_lost_hnsw_searches_are_redone_exactly() -> None:
    """The project's telemetry features (categories: clustered) at the default graph
    settings: 2 % of normal HNSW searches get lost (their mean 5-NN distance 5 % or more
    above the exact one), enough to move a 1 % threshold. Every query whose true nearest
    distance is above the level gets exact neighbours (its returned nearest can only be
    farther), and the lost searches that remain are a fraction of those without the tail."""
    from nearwatch.detector import Detector
    from nearwatch.detector.synthetic import generate_records

    records = generate_records(7000, anomaly_rate=0.0, seed=0)
    encoder = Detector(encoder="identity").fit(records[:2000]).feature_encoder_
    features = encoder.transform(records)
    refs, queries = features[:6000], features[6000:]
    index = ReferenceIndex(kind="hnsw").fit(refs)
    full = brute_force(refs, queries)
    exact = np.sort(full, axis=1)[:, :K]
    level = index.exact_above_
    assert level is not None and 0.02 < (exact[:, 0] > level).mean() < 0.3

    def lost(distances: np.ndarray) -> float:
        return float((distances.mean(1) > exact.mean(1) * 1.05).mean())

    distances, _ = index.search(queries, K)
    far = exact[:, 0] > level
    np.testing.assert_allclose(distances[far], exact[far], rtol=1e-4, atol=1e-5)
    with_tail = lost(distances)
    index.exact_above_ = None  # the plain HNSW search, for comparison
    without_tail = lost(index.search(queries, K)[0])
    assert without_tail >= 0.01 and with_tail <= without_tail / 4, (with_tail, without_tail)


def test_an_hnsw_index_of_one_vector_has_no_exact_tail() -> None:
    """Its level was inf, which the bundle's JSON refused (fit crashed)."""
    index = ReferenceIndex(kind="hnsw").fit(np.ones((1, 3)))
    assert index.exact_above_ is None and json.dumps(index.to_state(), allow_nan=False)
    assert index.search(np.zeros((1, 3)), 1)[0].tolist() == [[pytest.approx(3 ** 0.5)]]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_serialisation_round_trip(metric: str, kind: str) -> None:
    rng = np.random.default_rng(7)
    refs, queries = clustered(rng, 1500, 10, 3.0), clustered(rng, 100, 10, 3.0)
    index = ReferenceIndex(metric=metric, kind=kind, ef_search=48).fit(refs)
    params = json.loads(json.dumps(index.to_state()))
    restored = ReferenceIndex.from_bytes(index.to_bytes(), params)
    assert (restored.kind_, restored.n_, restored.dim_) == (kind, 1500, 10)
    for got, want in zip(restored.search(queries, K), index.search(queries, K), strict=True):
        np.testing.assert_array_equal(got, want)
    assert restored.to_state() == params
    assert (restored.exact_above_ is not None) == (kind == "hnsw")
    assert params["format"] == (2 if kind == "hnsw" else 1)  # older code refuses format 2
    before = {**{k: v for k, v in params.items() if k != "exact_above"}, "format": 1}
    older = ReferenceIndex.from_bytes(index.to_bytes(), before)
    assert older.exact_above_ is None  # bundles from before the exact tail search as they did
    assert older.to_state() == before  # and save unchanged (their content hash holds)
    if kind == "hnsw":
        with pytest.raises(BundleError, match="exact_above None with format 2"):
            ReferenceIndex.from_bytes(index.to_bytes(), {**before, "format": 2})


def test_from_bytes_rejects_mismatched_or_corrupt_data() -> None:
    refs = np.random.default_rng(8).normal(size=(50, 6)).astype(np.float32)
    index = ReferenceIndex().fit(refs)
    data, params = index.to_bytes(), index.to_state()
    with pytest.raises(BundleError, match="index bytes hold 50 vectors of dim 6, params say 49"):
        ReferenceIndex.from_bytes(data, {**params, "n": 49})
    with pytest.raises(BundleError, match="params say 'hnsw'"):
        ReferenceIndex.from_bytes(data, {**params, "kind": "hnsw"})
    with pytest.raises(BundleError, match="index bytes could not be deserialised"):
        ReferenceIndex.from_bytes(data[: len(data) // 2], params)
    with pytest.raises(BundleError, match="unknown index state format 99"):
        ReferenceIndex.from_bytes(data, {**params, "format": 99})


def test_hnsw_build_is_deterministic_for_a_seed() -> None:
    refs = clustered(np.random.default_rng(9), 2000, 8)
    first = ReferenceIndex(kind="hnsw", seed=3).fit(refs).to_bytes()
    assert ReferenceIndex(kind="hnsw", seed=3).fit(refs).to_bytes() == first


def test_configure_threads_sets_faiss_and_torch() -> None:
    torch = pytest.importorskip("torch")
    saved = (faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold,
             torch.get_num_threads())
    try:
        configure_threads(1)
        assert faiss.omp_get_max_threads() == 1
        assert faiss.cvar.distance_compute_blas_threshold == BLAS_THRESHOLD
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="n_threads must be a positive integer, got 0"):
            configure_threads(0)
    finally:
        faiss.omp_set_num_threads(saved[0])
        faiss.cvar.distance_compute_blas_threshold = saved[1]
        torch.set_num_threads(saved[2])


def test_compressed_ivf_finds_the_exact_neighbours_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    centres = rng.normal(scale=4.0, size=(20, 8))
    refs = (centres[rng.integers(0, 20, 30_000)] + rng.normal(size=(30_000, 8))).astype(
        np.float32)
    queries = (centres[rng.integers(0, 20, 500)] + rng.normal(size=(500, 8))).astype(np.float32)
    compressed = ReferenceIndex(kind="auto", compress_min=20_000).fit(refs)
    exact = ReferenceIndex(kind="flat").fit(refs)
    assert compressed.kind_ == "ivf"
    distances, rows = compressed.search(queries, 5)
    exact_distances, exact_rows = exact.search(queries, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows, exact_rows, strict=True)])
    assert recall >= 0.9, recall
    # 8-bit codes: a decoded vector is within half a quantisation step per dimension of the
    # true one, so distances can fall below the exact ones by at most that vector's norm
    half_step = (refs.max(axis=0) - refs.min(axis=0)) / 255 / 2
    assert np.all(distances >= exact_distances - 1.5 * np.linalg.norm(half_step))
    np.testing.assert_allclose(compressed.reconstruct(exact_rows[:3]), refs[exact_rows[:3]],
                               atol=0.05)
    restored = ReferenceIndex.from_bytes(compressed.to_bytes(), compressed.to_state())
    np.testing.assert_array_equal(restored.search(queries, 5)[0], distances)
    path = tmp_path / "ivf.faiss"
    path.write_bytes(compressed.to_bytes())
    mapped = ReferenceIndex.from_file(path, compressed.to_state())
    np.testing.assert_array_equal(mapped.search(queries, 5)[0], distances)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_from_file_memory_maps_the_vectors(kind: str, tmp_path: Path) -> None:
    refs = np.random.default_rng(3).normal(size=(5_000, 16)).astype(np.float32)
    index = ReferenceIndex(kind=kind).fit(refs)
    path = tmp_path / f"{kind}.faiss"
    path.write_bytes(index.to_bytes())
    mapped = ReferenceIndex.from_file(path, index.to_state())
    maps = Path("/proc/self/maps").read_text()
    assert str(path) in maps  # shared through the page cache, not copied per process
    queries = refs[:20] + 0.01
    np.testing.assert_array_equal(mapped.search(queries, 3)[1], index.search(queries, 3)[1])
