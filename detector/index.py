"""faiss kNN index over normal reference vectors, returning true metric distances.

Design (measured on ADBench shuttle/mammography/pendigits/satellite, z-scored raw features and
random tanh/relu MLP projections to 16-64 dims, one thread):

* Euclidean: faiss L2 on the vectors. Cosine: the chord distance ``sqrt(2 - 2 cos)``, computed as
  Euclidean distance between L2-normalised vectors (one code path, and a true metric). Zero
  vectors cannot be normalised; they stay at the origin (distance 1 to every unit vector).
* Vectors are centred on the reference mean before indexing. L2 is translation invariant, but
  faiss' BLAS path computes ``|x|^2 + |y|^2 - 2<x, y>`` in float32, which cancels badly when the
  data sit far from the origin (all-positive relu embeddings: recall@5 fell to 0.93 with a +5
  offset; 0.999 once centred).
* faiss only *selects* the k neighbours; their distances are then recomputed exactly from the
  difference vectors (no cancellation), so near-duplicates get 0 instead of +-1e-3 noise.
* ``kind="auto"``: exact ``IndexFlatL2`` up to ``flat_max`` references (20k: Flat's batch
  throughput matches HNSW there and it stays exact), ``IndexHNSWFlat`` above. Defaults M=24,
  efConstruction=80: recall@5 >= 0.993 at efSearch=96 for held-out normal queries on every
  dataset and representation (M=32 fell to 0.89 on mammography, whose references are 30%
  duplicate rows). efSearch=48: on the service benchmark's 90-d embeddings of 40-field records
  at 100k references, 96 -> 48 cut search from 111 to 64 us/query (one thread) for recall@5
  0.990 -> 0.983 on normal queries and AUROC 0.944 -> 0.941 (exact: 0.948; see
  bench/hnsw_ef.py, bench/results/service/hnsw_ef.md). Calibration searches with the same
  efSearch, so the certified threshold still holds. Saved bundles keep their own efSearch.
  Queries far from all references (anomalies) get lower neighbour recall (0.44-0.99 on
  ADBench at efSearch=96, 0.90 here at 48); approximate search can only *over*-estimate
  their distances (median +0-4%), which makes them look more anomalous, not less.
* Exact tail (``exact_above_``): on clustered data (own telemetry) 1-2 % of HNSW searches got
  lost and set the threshold (100k references: recall at it 0.75, exact 0.97). A search whose
  nearest candidate is farther than the exact nearest-other distance of 90 % of sampled
  references is redone exactly (~10 % of normal queries): a fixed function of the query.
* Above ``compress_min`` distinct references (200k) ``kind="auto"`` compresses: an inverted-file
  index with 8-bit scalar-quantised codes (``IndexIVFScalarQuantizer``, nlist = 2 sqrt(n),
  nprobe 8): a quarter of the memory of float vectors, and built in seconds where an HNSW
  graph over a million vectors takes minutes. Its distances are faiss' (query against decoded
  codes), not recomputed: there are no float vectors to recompute from. Calibration uses the
  same index, so the certificate holds (``detector.calibration``); the AUROC cost is measured
  in ``bench/results/scale``.
* HNSW graphs are built with one thread and a seeded level generator: byte-identical indexes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .errors import BundleError, NotFittedError
from .index_build import as_matrix, build_hnsw, build_ivf, exact_tail_level, normalise_rows

METRICS = ("euclidean", "cosine")
KINDS = ("auto", "flat", "hnsw", "ivf")
STATE_FORMAT = 1
EXACT_TAIL_FORMAT = 2  # an index with an exact tail: older code refuses it (it would skip it)
_QUERY_CHUNK = 8192  # bounds the (chunk, k, d) gather used for exact distances


class ReferenceIndex:
    """k-nearest-neighbour distances from queries to a fixed set of reference vectors.

    >>> refs = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=np.float32)
    >>> index = ReferenceIndex().fit(refs)
    >>> distances, indices = index.search(np.array([[0.0, 0.0]]), k=2)
    >>> distances.tolist(), indices.tolist(), index.kind_
    ([[0.0, 5.0]], [[0, 1]], 'flat')
    """

    def __init__(
        self,
        metric: str = "euclidean",
        kind: str = "auto",
        flat_max: int = 20_000,
        hnsw_m: int = 24,
        ef_construction: int = 80,
        ef_search: int = 48,
        seed: int = 0,
        compress_min: int = 200_000,
        nprobe: int = 8,
    ) -> None:
        self.metric = metric
        self.kind = kind
        self.flat_max = flat_max
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.seed = seed
        self.compress_min = compress_min
        self.nprobe = nprobe

    # ------------------------------------------------------------------ fitting
    def fit(self, vectors: np.ndarray) -> ReferenceIndex:
        """Index ``vectors`` (n, d); float64 and other real dtypes are converted to float32."""
        self._check_params()
        refs = as_matrix(vectors, "vectors")
        if refs.shape[0] == 0 or refs.shape[1] == 0:
            raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {refs.shape}")
        if self.metric == "cosine":
            refs = normalise_rows(refs)
        self.center_ = refs.mean(axis=0, dtype=np.float64).astype(np.float32)
        refs = np.ascontiguousarray(refs - self.center_, dtype=np.float32)
        n, dim = refs.shape
        self.kind_ = self._choose_kind(n)
        self.n_, self.dim_ = n, dim
        if self.kind_ == "flat":
            index: faiss.Index = faiss.IndexFlatL2(dim)
            index.add(refs)
        elif self.kind_ == "ivf":
            index = build_ivf(refs, self.seed, self.nprobe)
        else:
            index = build_hnsw(refs, self.hnsw_m, self.ef_construction, self.ef_search, self.seed)
        # HNSW only: searches farther than this from their nearest candidate are redone exactly
        self.exact_above_ = exact_tail_level(refs, self.seed) if self.kind_ == "hnsw" else None
        self._attach(index)
        return self

    def _choose_kind(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        if n <= self.flat_max:
            return "flat"
        return "hnsw" if n <= self.compress_min else "ivf"

    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("flat_max", "hnsw_m", "ef_construction", "ef_search", "compress_min",
                     "nprobe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def _attach(self, index: faiss.Index) -> None:
        self._index = index
        if self.kind_ == "ivf":  # compressed codes: no float vectors to view
            self._refs = None
            return
        storage = index if self.kind_ == "flat" else faiss.downcast_index(index.storage)
        # Zero-copy, read-only view of the stored (centred) references, for exact distances.
        view = faiss.rev_swig_ptr(storage.get_xb(), self.n_ * self.dim_)
        self._refs = view.reshape(self.n_, self.dim_)

    def _require_fitted(self) -> None:
        if not hasattr(self, "_index"):
            raise NotFittedError("ReferenceIndex is not fitted: call fit() first")

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances (nq, k) float32, ascending, and reference indices (nq, k) int64."""
        self._require_fitted()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if k > self.n_:
            raise ValueError(
                f"k={k} exceeds the number of reference vectors ({self.n_}); "
                f"use k <= {self.n_} or add references"
            )
        q = as_matrix(queries, "queries")
        if q.shape[1] != self.dim_:
            raise ValueError(
                f"queries have {q.shape[1]} columns but the index was fitted on {self.dim_}"
            )
        distances = np.empty((q.shape[0], k), dtype=np.float32)
        indices = np.empty((q.shape[0], k), dtype=np.int64)
        for start in range(0, q.shape[0], _QUERY_CHUNK):
            stop = start + _QUERY_CHUNK
            distances[start:stop], indices[start:stop] = self._search_chunk(q[start:stop], k)
        return distances, indices

    def _search_chunk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.metric == "cosine":
            queries = normalise_rows(queries)
        q = np.ascontiguousarray(queries - self.center_, dtype=np.float32)
        if self._refs is None:
            return self._search_compressed(q, k)
        _, ids = self._index.search(q, k)
        missing = (ids < 0).any(axis=1)
        if missing.any():  # HNSW can come back short on a badly connected graph: go exact
            _, ids[missing] = faiss.knn(q[missing], self._refs, k)
        dist, ids = self._exact_distances(q, ids)
        if self.exact_above_ is not None:  # a lost search looks far: redo it exactly
            lost = np.flatnonzero(dist[:, 0] > self.exact_above_)
            if lost.size:
                _, exact_ids = faiss.knn(q[lost], self._refs, k)
                dist[lost], ids[lost] = self._exact_distances(q[lost], exact_ids)
        return dist, ids

    def _exact_distances(self, q: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances recomputed from the difference vectors, in ascending order."""
        assert self._refs is not None
        diff = self._refs[ids] - q[:, None, :]
        dist = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff, dtype=np.float32))
        order = np.argsort(dist, axis=1, kind="stable")
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)

    def _search_compressed(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        squared, ids = self._index.search(q, k)
        missing = (ids < 0).any(axis=1)
        if missing.any():  # fewer than k codes in the probed lists: probe them all
            everything = faiss.SearchParametersIVF(nprobe=self._index.nlist)
            squared[missing], ids[missing] = self._index.search(q[missing], k, params=everything)
        return np.sqrt(np.maximum(squared, 0.0)), ids

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` (decoded, for compressed indexes), uncentred."""
        self._require_fitted()
        flat_rows = np.asarray(rows, dtype=np.int64).ravel()
        if self._refs is not None:
            vectors = self._refs[flat_rows]
        else:
            vectors = self._index.reconstruct_batch(flat_rows)
        return (vectors + self.center_).reshape(*np.shape(rows), self.dim_)

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """JSON-able parameters; together with ``to_bytes()`` they rebuild the index."""
        self._require_fitted()
        state: dict[str, Any] = {
            "format": STATE_FORMAT if self.exact_above_ is None else EXACT_TAIL_FORMAT,
            "metric": self.metric,
            "kind": self.kind_,
            "n": self.n_,
            "dim": self.dim_,
            "flat_max": self.flat_max,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "seed": self.seed,
            "compress_min": self.compress_min,
            "nprobe": self.nprobe,
            # float32 -> Python float is exact, so the JSON round trip is lossless
            "center": [float(v) for v in self.center_],
        }
        if self.exact_above_ is not None:  # absent otherwise: older bundles keep their hash
            state["exact_above"] = self.exact_above_
        return state

    def to_bytes(self) -> bytes:
        """The faiss index in faiss' own binary format (no pickle)."""
        self._require_fitted()
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_file(cls, path: str | Path, params: dict[str, Any]) -> ReferenceIndex:
        """Like ``from_bytes``, but memory-maps the vectors or codes where faiss can.

        Flat vectors, an HNSW graph with its vectors, and IVF codes are mapped read-only from
        the (verified) file, so every process serving the same bundle shares one copy through
        the page cache. A faiss that cannot map an HNSW index (before 1.10) reads it instead.
        """
        kind = str(params.get("kind"))
        flags = {"flat": faiss.IO_FLAG_MMAP_IFC, "hnsw": faiss.IO_FLAG_MMAP_IFC,
                 "ivf": faiss.IO_FLAG_MMAP}.get(kind, 0)
        try:
            return cls._restore(lambda: faiss.read_index(str(path), flags), params)
        except RuntimeError:
            if kind != "hnsw":
                raise
            return cls._restore(lambda: faiss.read_index(str(path)), params)

    @classmethod
    def from_bytes(cls, data: bytes, params: dict[str, Any]) -> ReferenceIndex:
        """Rebuild from ``to_bytes()`` output and ``to_state()`` params; checks they agree."""
        return cls._restore(
            lambda: faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8).copy()), params
        )

    @classmethod
    def _restore(cls, read: Callable[[], faiss.Index], params: dict[str, Any]) -> ReferenceIndex:
        if params.get("format") not in (STATE_FORMAT, EXACT_TAIL_FORMAT):
            raise BundleError(f"unknown index state format {params.get('format')!r}")
        try:
            obj = cls(
                metric=params["metric"],
                kind=params["kind"],
                flat_max=params["flat_max"],
                hnsw_m=params["hnsw_m"],
                ef_construction=params["ef_construction"],
                ef_search=params["ef_search"],
                seed=params["seed"],
                compress_min=params.get("compress_min", 200_000),
                nprobe=params.get("nprobe", 8),
            )
            obj._check_params()
            kind, n, dim = params["kind"], int(params["n"]), int(params["dim"])
            center = np.asarray(params["center"], dtype=np.float32)
            exact_above = params.get("exact_above")  # absent before: no exact tail
            if (exact_above is None) != (params["format"] == STATE_FORMAT) or (
                    exact_above is not None and not 0.0 <= float(exact_above) < np.inf):
                raise ValueError(f"exact_above {exact_above!r} with format {params['format']}")
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"invalid index params: {exc}") from exc
        try:
            # deserialize_index already returns the concrete class (a second downcast_index
            # wrapper would not own the object, which is then freed under it)
            index = read()
        except RuntimeError as exc:
            raise BundleError(f"index bytes could not be deserialised: {exc}") from exc
        expected = {"flat": faiss.IndexFlatL2, "hnsw": faiss.IndexHNSWFlat,
                    "ivf": faiss.IndexIVFScalarQuantizer}.get(kind)
        if expected is None or not isinstance(index, expected):
            raise BundleError(f"index bytes hold {type(index).__name__}, params say {kind!r}")
        if index.ntotal != n or index.d != dim or center.shape != (dim,):
            raise BundleError(
                f"index bytes hold {index.ntotal} vectors of dim {index.d}, "
                f"params say {n} of dim {dim} (center of shape {center.shape})"
            )
        if kind == "hnsw":
            index.hnsw.efSearch = obj.ef_search
        elif kind == "ivf":
            index.nprobe = obj.nprobe
        obj.kind_, obj.n_, obj.dim_, obj.center_ = kind, n, dim, center
        obj.exact_above_ = None if exact_above is None else float(exact_above)
        obj._attach(index)
        return obj

