"""Normal reference records, each distinct one indexed once with its multiplicity.

Monitoring data repeat themselves: the same telemetry tuple, the same flow, thousands of times
(ADBench donors: 18k distinct rows among 300k training normals). Indexing every copy wastes
memory and time, and duplicate-heavy HNSW graphs lose recall (thousands of identical points
are all each other's neighbours, so the graph has no edges out of the clump). A
``ReferenceSet`` therefore indexes each distinct embedding once and keeps its count; the score
is computed exactly as if every copy were present: the mean distance to the ``k`` nearest
*records*, a distinct reference standing for as many records as it has copies.

The set is made of *parts*, each a ``ReferenceIndex`` over distinct vectors. Part 0 holds the
references R that calibration searched; later parts hold records added after calibration (the
calibration records C, whose values are not already in R). Adding records only ever adds
copies to existing references (``add_copies``) or appends a new part (``add_part``); part 0's
index is never rebuilt. Search runs every part and merges, so a query's candidate records
after any addition are a superset of the candidates the calibration search returned for it,
and the mean of the ``k`` smallest distances of a superset can only be smaller. That is the
argument that keeps the certified threshold valid for *any* index kind (see
``detector.calibration``).

>>> import numpy as np
>>> references = ReferenceSet().fit(np.array([[0.0], [1.0]]), counts=np.array([3, 1]))
>>> references.mean_distance(np.array([[0.0]]), k=4).tolist()  # three copies at 0, one at 1
[0.25]
>>> _ = references.add_part(np.array([[0.5]]), counts=np.array([2]))
>>> references.mean_distance(np.array([[0.0]]), k=4).tolist()  # now 0, 0, 0, 0.5
[0.125]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .density import LocalDensity
from .errors import BundleError, NotFittedError
from .index import ReferenceIndex

STATE_FORMAT = 1


@dataclass(frozen=True)
class DuplicateGroups:
    """Distinct rows of ``vstack([references, calibration])`` and how often each occurs.

    ``in_references``: distinct rows that occur in the references (part 0), in first-occurrence
    order; ``only_calibration``: distinct rows seen only among calibration records (a later
    part). Both hold row numbers into the stacked matrix. ``reference_counts`` and
    ``calibration_counts`` count each distinct row (part 0 first, then the calibration-only
    rows); ``calibration_group``: for every calibration record, its distinct row's position.
    """

    in_references: np.ndarray
    only_calibration: np.ndarray
    reference_counts: np.ndarray
    calibration_counts: np.ndarray
    calibration_group: np.ndarray

    @property
    def representatives(self) -> np.ndarray:
        return np.concatenate([self.in_references, self.only_calibration])


def group_duplicates(references: np.ndarray, calibration: np.ndarray) -> DuplicateGroups:
    """Find exact duplicate rows (bitwise, with -0.0 == 0.0) across both matrices.

    >>> groups = group_duplicates(np.array([[1.0], [2.0], [1.0]]), np.array([[3.0], [1.0]]))
    >>> groups.in_references.tolist(), groups.only_calibration.tolist()
    ([0, 1], [3])
    >>> groups.reference_counts.tolist(), groups.calibration_counts.tolist()
    ([2, 1, 0], [1, 0, 1])
    >>> groups.calibration_group.tolist()
    [2, 0]
    """
    n_references = len(references)
    stacked = np.ascontiguousarray(np.vstack([references, calibration]), dtype=np.float32) + 0.0
    rows = stacked.view(np.dtype((np.void, stacked.dtype.itemsize * stacked.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    n_groups = len(first)
    in_reference = np.zeros(n_groups, dtype=bool)
    in_reference[inverse[:n_references]] = True
    # Order distinct rows by first occurrence: part 0 follows the reference order.
    by_first = np.argsort(first, kind="stable")
    ordered = np.concatenate([by_first[in_reference[by_first]],
                              by_first[~in_reference[by_first]]])
    position = np.empty(n_groups, dtype=np.int64)
    position[ordered] = np.arange(n_groups)
    group = position[inverse]
    n_part0 = int(in_reference.sum())
    return DuplicateGroups(
        in_references=first[ordered[:n_part0]],
        only_calibration=first[ordered[n_part0:]],
        reference_counts=np.bincount(group[:n_references], minlength=n_groups),
        calibration_counts=np.bincount(group[n_references:], minlength=n_groups),
        calibration_group=group[n_references:],
    )


class ReferenceSet:
    """kNN over records stored as distinct vectors with counts; see the module docstring."""

    def __init__(
        self, metric: str = "euclidean", kind: str = "auto", flat_max: int = 20_000,
        compress_min: int = 200_000, seed: int = 0,
    ) -> None:
        self.metric = metric
        self.kind = kind
        self.flat_max = flat_max
        self.compress_min = compress_min
        self.seed = seed

    def build_index(self, vectors: np.ndarray) -> ReferenceIndex:
        """An index over distinct ``vectors`` with this set's parameters (not yet a part)."""
        return ReferenceIndex(metric=self.metric, kind=self.kind, flat_max=self.flat_max,
                              compress_min=self.compress_min, seed=self.seed).fit(vectors)

    def fit(self, vectors: np.ndarray, counts: np.ndarray | None = None) -> ReferenceSet:
        """Part 0: distinct ``vectors`` (n, d), each standing for ``counts`` records (default 1)."""
        self.parts_: list[ReferenceIndex] = []
        self.counts_ = np.zeros(0, dtype=np.int64)
        self.density_: LocalDensity | None = None  # set by fit_local_density, else plain kNN
        self.add_part(vectors, counts)
        return self

    def add_part(self, vectors: np.ndarray, counts: np.ndarray | None = None,
                 index: ReferenceIndex | None = None) -> ReferenceSet:
        """Index more distinct vectors as a new part; earlier parts are left exactly as they are.

        ``index``: the part's index, already built by ``build_index(vectors)`` (e.g. on
        another thread).
        """
        part = self.build_index(vectors) if index is None else index
        part_counts = _check_counts(counts, part.n_)
        if self.parts_ and part.dim_ != self.parts_[0].dim_:
            raise ValueError(f"new part has dim {part.dim_}, the set has {self.parts_[0].dim_}")
        self.parts_.append(part)
        self.counts_ = np.concatenate([self.counts_, part_counts])
        return self

    def add_copies(self, extra_counts: np.ndarray) -> ReferenceSet:
        """More records identical to existing references: ``counts_ += extra_counts``."""
        self._require_fitted()
        extra = np.asarray(extra_counts)
        if extra.shape != self.counts_.shape or extra.dtype.kind not in "iu" or (extra < 0).any():
            raise ValueError(f"extra_counts must be {self.counts_.shape} non-negative integers")
        self.counts_ = self.counts_ + extra.astype(np.int64)
        return self

    def _require_fitted(self) -> None:
        if not hasattr(self, "parts_"):
            raise NotFittedError("ReferenceSet is not fitted: call fit() first")

    # ------------------------------------------------------------------ facts
    @property
    def n_unique_(self) -> int:
        return int(self.counts_.size)

    @property
    def n_records_(self) -> int:
        return int(self.counts_.sum())

    @property
    def kind_(self) -> str:
        """Kind of part 0: the index that produced the calibration scores."""
        return self.parts_[0].kind_

    @property
    def kinds_(self) -> list[str]:
        return [part.kind_ for part in self.parts_]

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, n_unique: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_unique`` nearest distinct references: distances and global rows, ascending.

        Every part is searched for its own nearest ``n_unique`` and the candidates are merged,
        so the result holds the ``n_unique`` nearest distinct references overall (for exact
        parts) and at least every candidate any single part found.
        """
        distances, rows, _ = self.search_parts(queries, n_unique)
        return distances, rows

    def search_parts(self, queries: np.ndarray, n_unique: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``search``, plus the rows part 0 alone returned (what local density divides by)."""
        self._require_fitted()
        n_unique = min(int(n_unique), self.n_unique_)
        blocks_d, blocks_i, offset = [], [], 0
        for part in self.parts_:
            distances, rows = part.search(queries, min(n_unique, part.n_))
            blocks_d.append(distances)
            blocks_i.append(rows + offset)
            offset += part.n_
        if len(blocks_d) == 1:
            return blocks_d[0], blocks_i[0], blocks_i[0]
        distances = np.concatenate(blocks_d, axis=1)
        rows = np.concatenate(blocks_i, axis=1)
        order = np.argsort(distances, axis=1, kind="stable")[:, :n_unique]
        return (np.take_along_axis(distances, order, 1), np.take_along_axis(rows, order, 1),
                blocks_i[0])

    def records_taken(self, rows: np.ndarray, k: int) -> np.ndarray:
        """How many of the ``k`` nearest records each (ascending) distinct neighbour supplies."""
        counts = self.counts_[rows]
        before = np.cumsum(counts, axis=1) - counts
        return np.clip(k - before, 0, counts)

    def mean_from_neighbours(self, distances: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """Mean distance to the ``k`` nearest records, copies counted, from ``search`` output."""
        if k > self.n_records_:
            raise ValueError(f"k={k} exceeds the number of reference records ({self.n_records_})")
        taken = self.records_taken(rows, k)
        return (taken * distances.astype(np.float64)).sum(axis=1) / k

    def mean_distance(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Mean distance from each query to its ``k`` nearest reference records."""
        if len(queries) == 0:
            return np.zeros(0, dtype=np.float64)
        distances, rows = self.search(queries, k)
        return self.mean_from_neighbours(distances, rows, k)

    def score(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The anomaly score: ``mean_distance``, divided by the local density where fitted."""
        if len(queries) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.score_from_search(*self.search_parts(queries, k), k)

    def score_from_search(self, distances: np.ndarray, rows: np.ndarray,
                          part0_rows: np.ndarray, k: int) -> np.ndarray:
        """``score`` from ``search_parts`` output (which may hold more than k neighbours)."""
        mean = self.mean_from_neighbours(distances, rows, k)
        return mean if self.density_ is None else mean / self.density_.scale(part0_rows, k)

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The indexed vectors of distinct references ``rows`` (global numbering), any shape."""
        self._require_fitted()
        flat_rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(flat_rows), self.parts_[0].dim_), dtype=np.float32)
        offset = 0
        for part in self.parts_:
            mine = (flat_rows >= offset) & (flat_rows < offset + part.n_)
            if mine.any():
                out[mine] = part.reconstruct(flat_rows[mine] - offset)
            offset += part.n_
        return out.reshape(*np.shape(rows), out.shape[1])

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """JSON-able parameters; ``counts_`` and each part's ``to_bytes()`` travel as files."""
        self._require_fitted()
        return {
            "format": STATE_FORMAT,
            "metric": self.metric, "kind": self.kind, "flat_max": self.flat_max,
            "compress_min": self.compress_min,
            "seed": self.seed,
            "parts": [part.to_state() for part in self.parts_],
            "n_unique": self.n_unique_, "n_records": self.n_records_,
            **({} if self.density_ is None else {"density": self.density_.to_state()}),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], read_part: Callable[[int, dict[str, Any]], ReferenceIndex],
        counts: np.ndarray, radii: np.ndarray | None = None,
    ) -> ReferenceSet:
        """Rebuild from ``to_state()``, a reader of each part (its position and params, e.g.
        ``ReferenceIndex.from_file``), the counts and the local density radii (where the
        state has a density); checks they agree."""
        if state.get("format") != STATE_FORMAT:
            raise BundleError(f"unknown reference set state format {state.get('format')!r}")
        try:
            obj = cls(metric=state["metric"], kind=state["kind"], flat_max=state["flat_max"],
                      compress_min=state.get("compress_min", 200_000), seed=state["seed"])
            part_states = list(state["parts"])
            n_unique, n_records = int(state["n_unique"]), int(state["n_records"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"invalid reference set state: {exc}") from exc
        if not part_states:
            raise BundleError("the reference set describes no index parts")
        obj.parts_ = [read_part(position, params) for position, params in enumerate(part_states)]
        counts = np.asarray(counts)
        if (counts.ndim != 1 or counts.dtype.kind not in "iu" or counts.size != n_unique
                or sum(p.n_ for p in obj.parts_) != n_unique or (counts < 1).any()
                or int(counts.sum()) != n_records
                or len({p.dim_ for p in obj.parts_}) != 1
                or any(p.metric != obj.metric for p in obj.parts_)):
            raise BundleError("reference counts and index parts do not agree")
        obj.counts_ = counts.astype(np.int64)
        obj.density_ = None
        if "density" in state:
            if radii is None:
                raise BundleError("the reference set has a local density but no radii")
            obj.density_ = LocalDensity.from_state(state["density"], radii, obj.parts_[0].n_)
        elif radii is not None:
            raise BundleError("radii given for a reference set without local density")
        return obj


def _check_counts(counts: np.ndarray | None, n: int) -> np.ndarray:
    if counts is None:
        return np.ones(n, dtype=np.int64)
    values = np.asarray(counts)
    if values.shape != (n,) or values.dtype.kind not in "iu" or (values < 1).any():
        raise ValueError(f"counts must be {n} positive integers, got shape {values.shape}")
    return values.astype(np.int64)


def compact_integers(values: np.ndarray) -> np.ndarray:
    """int32 where every value fits (half the bytes on disk and in memory), else int64.

    >>> compact_integers(np.array([1, 2])).dtype, compact_integers(np.array([2**40])).dtype
    (dtype('int32'), dtype('int64'))
    """
    array = np.asarray(values, dtype=np.int64)
    small = array.size == 0 or (array.min() >= -(2**31) and array.max() < 2**31)
    return array.astype(np.int32) if small else array
