"""The reference set that serves and the calibration made with it (see ``detector.calibration``).

Part 0 of the reference set indexes the references R; calibration searches that very index;
the calibration records C join afterwards without rebuilding it, so a served score can only be
lower than the calibrated one.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .calibration import ConformalCalibrator
from .density import fit_local_density
from .errors import RepeatedRecordsWarning
from .references import DuplicateGroups, ReferenceSet, group_duplicates


@dataclass(frozen=True)
class CalibratedReferences:
    """The served reference set, its calibrator, and the distinct records it indexes."""

    references: ReferenceSet
    calibrator: ConformalCalibrator
    features: np.ndarray  # distinct feature rows, in reference-set order
    representatives: np.ndarray  # for each, its row in vstack([reference, calibration])


def calibrate_references(
    embedder: Any, reference_features: np.ndarray, calibration_features: np.ndarray, *,
    metric: str, index: str, flat_max: int, compress_min: int, random_state: int,
    n_neighbors: int, calibrator: ConformalCalibrator, density_power: float = 0.0,
) -> CalibratedReferences:
    """Index R, calibrate on C with that very index, then add C without rebuilding it.

    Each distinct record is embedded and indexed once, with its multiplicity. Part 0 of the
    reference set (R) is the index that calibration searches and that serves; C is added
    afterwards as extra copies or a new part, which can only lower a score (see
    ``detector.references`` and ``detector.detector``). The new part's index is built on a
    second thread while part 0 is built and calibrated (faiss releases the GIL): two cores.
    """
    groups = group_duplicates(reference_features, calibration_features)
    _warn_if_repeated(groups)
    stacked = np.vstack([reference_features, calibration_features])
    distinct = stacked[groups.representatives]
    embeddings = embedder.embed(distinct)
    n_part0 = len(groups.in_references)
    references = ReferenceSet(metric=metric, kind=index, flat_max=flat_max,
                              compress_min=compress_min, seed=random_state)
    with ThreadPoolExecutor(max_workers=1) as builder:
        later_part = (builder.submit(references.build_index, embeddings[n_part0:])
                      if len(distinct) > n_part0 else None)
        references.fit(embeddings[:n_part0], groups.reference_counts[:n_part0])
        if references.kind_ != "ivf":  # compressed sets: the radii would cost a search of all
            references.density_ = fit_local_density(
                references, embeddings[:n_part0], n_neighbors, density_power)
        calibration_groups = np.unique(groups.calibration_group)
        group_scores = np.zeros(len(distinct), dtype=np.float64)
        group_scores[calibration_groups] = references.score(
            embeddings[calibration_groups], n_neighbors
        )
        calibrator.fit(group_scores[groups.calibration_group])
        references.add_copies(groups.calibration_counts[:n_part0])
        if later_part is not None:
            references.add_part(embeddings[n_part0:], groups.calibration_counts[n_part0:],
                                index=later_part.result())
    return CalibratedReferences(references, calibrator, distinct, groups.representatives)


def stored_reference_features(
    metric: str, embedder: Any, references: ReferenceSet, features: np.ndarray
) -> np.ndarray | None:
    """The distinct references' features to keep for explanations, or None.

    Where the index vectors hold them (Euclidean, and the raw part of the embedding inverts)
    they are read back from the index and not stored twice; otherwise float16 copies: an
    explanation needs a field's typical value, not 7 digits of it.
    """
    if metric == "euclidean" and features_recoverable(embedder, references):
        return None
    return features.astype(np.float16)


def features_recoverable(embedder: Any, references: ReferenceSet) -> bool:
    """Whether the embedder turns the indexed vectors back into feature rows."""
    probe = references.reconstruct(np.zeros(1, dtype=np.int64))
    return embedder.features_from_embedding(probe) is not None


REPEATED_SHARE = 0.2  # of calibration records with an exact copy among the references
UNIFORM_SHARE = 0.9  # of distinct records that occur equally often (2 times or more)


def _warn_if_repeated(groups: DuplicateGroups) -> None:
    """A calibration record with a copy among the references scores low: right where new
    records repeat known ones as often (repetitive telemetry, discrete fields), wrong where
    the copies are an artefact. A trial with every training row written 3 times (a join, an
    export) realised false-alarm rates up to 5 alpha with ``certified_`` True. The artefact
    repeats every record the same number of times; real repetition is skewed (a few values
    very often): warn on the first only."""
    counts = groups.reference_counts + groups.calibration_counts
    if not len(groups.calibration_group) or not len(counts):
        return
    twinned = float(np.mean(groups.calibration_group < len(groups.in_references)))
    common = int(np.bincount(counts).argmax())
    if twinned >= REPEATED_SHARE and common >= 2 and \
            float(np.mean(counts == common)) >= UNIFORM_SHARE:
        warnings.warn(
            f"every distinct training record occurs {common} times (as encoded), and "
            f"{twinned:.0%} of the calibration records have an exact copy among the "
            "references: if rows were repeated by a join or an export, remove the repeats and "
            "fit again, else the certified false-alarm bound does not hold",
            RepeatedRecordsWarning, stacklevel=4)
