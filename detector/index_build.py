"""Building the approximate faiss indexes of ``detector.index`` (see its docstring for why)."""

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
