"""What ``Detector.fit`` was told about its records, and the embedder that follows from it.

Supervision arrives indexed by position in the training data. Only the reference part R of that
data trains the embedder (the calibration part must stay unseen for the threshold guarantee),
so labels, pairs and triplets are restricted to R and re-indexed into it.

>>> s = FitSupervision.restrict(None, [(0, 2, True), (1, 3, False)], None,
...                             reference_rows=np.array([0, 2, 3]), n=4)
>>> s.mode, s.pairs.tolist(), s.n_unused
('weakly_supervised', [[0, 1, 1]], 1)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FitSupervision:
    """Supervision restricted to the reference rows (indices are positions within R)."""

    labels: np.ndarray | None = None
    pairs: np.ndarray | None = None  # (m, 3): i, j, 1 = similar / 0 = dissimilar
    triplets: np.ndarray | None = None  # (m, 3): anchor, positive, negative
    n_unused: int = 0  # pairs/triplets touching calibration rows

    @property
    def mode(self) -> str:
        if self.labels is not None:
            return "supervised"
        if self.pairs is not None or self.triplets is not None:
            return "weakly_supervised"
        return "self_supervised"

    @classmethod
    def restrict(
        cls,
        labels: Sequence[Any] | np.ndarray | None,
        pairs: Sequence[Sequence[Any]] | np.ndarray | None,
        triplets: Sequence[Sequence[int]] | np.ndarray | None,
        reference_rows: np.ndarray,
        n: int,
    ) -> FitSupervision:
        position = np.full(n, -1, dtype=np.int64)
        position[reference_rows] = np.arange(len(reference_rows))
        restricted_labels = None
        if labels is not None:
            label_array = np.asarray(list(labels), dtype=object)
            if len(label_array) != n:
                raise ValueError(f"labels has {len(label_array)} entries for {n} records")
            nan = sum(1 for label in label_array if isinstance(label, float) and label != label)
            if nan:  # a missing class, not a class: str(nan) would group them all
                raise ValueError(f"labels hold nan ({nan} of {n}): a class label must be a "
                                 "string or a number")
            restricted_labels = _encode_labels(label_array[reference_rows])
        restricted_pairs, unused_pairs = _restrict_rows(pairs, "pairs", position, n)
        restricted_triplets, unused_triplets = _restrict_rows(triplets, "triplets", position, n)
        fitted = cls(restricted_labels, restricted_pairs, restricted_triplets,
                     unused_pairs + unused_triplets)
        if fitted.n_unused:  # said, not silent: the training mode may fall back
            left = "" if fitted.pairs is not None or fitted.triplets is not None else (
                f"; none is left, so the encoder trains {fitted.mode.replace('_', '-')}")
            warnings.warn(f"{fitted.n_unused} pairs/triplets name a calibration record (held "
                          f"out to certify the threshold) and do not train the encoder{left}",
                          UserWarning, stacklevel=3)
        return fitted


def _encode_labels(labels: np.ndarray) -> np.ndarray:
    """Class labels of any JSON type → consecutive integers."""
    names = sorted({str(label) for label in labels})
    code = {name: i for i, name in enumerate(names)}
    return np.array([code[str(label)] for label in labels], dtype=np.int64)


def _restrict_rows(
    rows: Sequence[Sequence[Any]] | np.ndarray | None, name: str, position: np.ndarray, n: int
) -> tuple[np.ndarray | None, int]:
    if rows is None:
        return None, 0
    table = np.asarray([parse_row(row, name, k) for k, row in enumerate(rows)],
                       dtype=np.int64).reshape(-1, 3)
    if len(table) == 0:
        return None, 0
    index_columns = table[:, :2] if name == "pairs" else table
    bad = np.flatnonzero(((index_columns < 0) | (index_columns >= n)).any(axis=1))
    if len(bad):
        raise ValueError(
            f"{name}[{bad[0]}] = {table[bad[0]].tolist()} refers to a record outside 0..{n - 1}"
        )
    if name == "pairs" and not np.isin(table[:, 2], (0, 1)).all():
        raise ValueError("pairs must be (i, j, similar) with similar True/False or 1/0")
    remapped = table.copy()
    remapped[:, : index_columns.shape[1]] = position[index_columns]
    keep = (remapped[:, : index_columns.shape[1]] >= 0).all(axis=1)
    kept = remapped[keep]
    return (kept if len(kept) else None), int((~keep).sum())


def parse_row(row: Any, name: str, k: int) -> list[int]:
    """Three whole numbers (a bool is 1/0: ``similar``), or a ValueError naming the row
    (``1.9`` was truncated to 1, ``(0, 1)`` said "cannot reshape array")."""
    shape = "(i, j, similar)" if name == "pairs" else "(anchor, positive, negative)"
    try:
        values = list(row)
    except TypeError:
        values = []
    whole = [v for v in values if isinstance(v, (int, np.integer)) or (
        isinstance(v, float | np.floating) and float(v).is_integer())]
    if len(values) != 3 or len(whole) != 3:
        raise ValueError(f"{name}[{k}] = {row!r}: expected {shape}, three whole numbers")
    return [int(v) for v in values]


def build_embedder_for_fit(
    encoder: str,
    features: np.ndarray,
    supervision: FitSupervision,
    anomaly_features: np.ndarray | None,
    *,
    numeric_columns: np.ndarray,
    column_groups: np.ndarray | None = None,
    invariant_fields: np.ndarray | None = None,
    training: Any,
    seed: int,
    progress: bool,
) -> Any:
    """The embedder named by ``Detector(encoder=...)``, trained when it learns."""
    from .identity import IdentityEmbedder

    if encoder == "identity":
        given = {"class labels": supervision.labels is not None,
                 "pairs": supervision.pairs is not None,
                 "triplets": supervision.triplets is not None,
                 "known anomalies": anomaly_features is not None and len(anomaly_features) > 0}
        if any(given.values()):
            ignored = ", ".join(name for name, present in given.items() if present)
            warnings.warn(f"encoder='identity' learns nothing, so this fit does not use its "
                          f"{ignored}: use encoder='metric' or 'auto' to learn from them",
                          UserWarning, stacklevel=3)
        return IdentityEmbedder()
    from .training import TrainingConfig, train_embedder

    config = training if training is not None else TrainingConfig(seed=seed)
    trained = train_embedder(
        features,
        config=config,
        labels=supervision.labels,
        pairs=supervision.pairs,
        triplets=supervision.triplets,
        anomalies=anomaly_features,
        standardise_columns=numeric_columns,
        column_groups=column_groups,
        invariant_fields=invariant_fields,
        progress=progress,
    )
    # From here on (references, calibration, serving) the numpy copy embeds: one function
    # for fitting and for every loaded bundle, and no torch in the serving processes.
    return trained.freeze()
