"""Building the approximate faiss indexes of ``detector.index`` (see its docstring for why),
and the input checks it shares."""

from __future__ import annotations

import faiss
import numpy as np


def build_hnsw(refs: np.ndarray, m: int, ef_construction: int, ef_search: int, seed: int
               ) -> faiss.Index:
    """HNSW graph built with one OpenMP thread and a seeded level generator: deterministic."""
    index = faiss.IndexHNSWFlat(refs.shape[1], m)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.rng = faiss.RandomGenerator(seed)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # per calling thread: other threads keep their own setting
    try:
        index.add(refs)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = ef_search
    return index


def build_ivf(refs: np.ndarray, seed: int, nprobe: int) -> faiss.Index:
    """IVF over 8-bit scalar-quantised codes; k-means trained on a seeded sample.

    nlist = 2 sqrt(n) lists, k-means on 40 points per list for 10 iterations: at 700k
    references training took 63 s with 4 sqrt(n) lists, 64 points each and faiss' 25
    iterations, and about 3 s now; nprobe 8 of 2 sqrt(n) lists scans the same share of the
    codes as 16 of 4 sqrt(n).
    """
    n, dim = refs.shape
    nlist = int(min(max(2 * np.sqrt(n), 16), 4096, max(n // 40, 1)))
    sample_size = min(n, 40 * nlist)
    sample = refs[np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False))]
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_L2)
    index.cp.seed = seed
    index.cp.niter = 10
    index.train(np.ascontiguousarray(sample))
    index.add(refs)
    index.make_direct_map()  # reconstruct(rows) for explanations
    index.nprobe = min(nprobe, nlist)
    return index


# An HNSW search that gets lost (clustered data: categories, duplicates) returns neighbours
# from the wrong region, and those queries made the top percent of normal scores that the
# certified threshold sits in. A query whose nearest returned reference is farther than the
# exact nearest-other-reference distance of 90 % of the references is searched again exactly.
EXACT_TAIL_QUANTILE = 0.9
EXACT_TAIL_SAMPLE = 1000


def exact_tail_level(refs: np.ndarray, seed: int) -> float | None:
    """The 90th percentile of the exact distance from a reference to its nearest other one,
    over a seeded sample of references (``ReferenceIndex.exact_above_``); None below 2."""
    n = len(refs)
    if n < 2:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(n, min(EXACT_TAIL_SAMPLE, n),
                                                      replace=False))
    _, ids = faiss.knn(np.ascontiguousarray(refs[rows]), refs, 2)
    other = np.where(ids[:, 0] == rows, ids[:, 1], ids[:, 0])
    # recomputed from the difference vectors, not faiss' BLAS distances (whose rounding
    # depends on the thread settings), so the level is the same wherever the fit runs
    diff = refs[other].astype(np.float64) - refs[rows]
    level = float(np.quantile(np.sqrt((diff * diff).sum(axis=1)), EXACT_TAIL_QUANTILE))
    return level if np.isfinite(level) else None


def as_matrix(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values (or overflow float32)")
    return array


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
