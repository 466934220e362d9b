"""The steps of ``Detector.fit`` that are not the estimator API: inputs, split, references.

``y`` (0/1 anomaly flags, one per record of ``X``) is routed here: flagged rows leave the normal
records and join the known anomalies; ``labels``, ``pairs`` and ``triplets`` index the original
``X`` and are re-indexed onto the normal rows. A pair or triplet that names a flagged row is
refused (``ValueError``): known anomalies already train the embedder as hard negatives, and
silently dropping a constraint the caller wrote would hide a mistake. A label of a flagged row
is ignored (``labels`` has one entry per record of ``X``, so flagged rows have one too).

>>> x = np.arange(10.0).reshape(5, 2)
>>> routed = route_anomaly_flags(x, [0, 1, 0, 0, 1], None, [(0, 3, 1)], None, None)
>>> len(routed.normals), routed.pairs.tolist(), routed.anomalies[:, 0].tolist()
(3, [[0, 2, 1]], [2.0, 8.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .calibration import required_calibration_size
from .embedding.supervision import parse_row
from .errors import STRICT_ADVICE, UNCERTIFIED_ADVICE, CalibrationError
from .features.schema import FeatureEncoder
from .index import KINDS
from .io import take_rows

Data = np.ndarray | list[Any]
ENCODERS = ("auto", "identity", "metric")


def check_params(params: dict[str, Any]) -> None:
    """Refuse parameter values ``fit`` cannot use (sklearn style: checked in fit, not init)."""
    n_neighbors = params["n_neighbors"]
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if params["metric"] not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {params['metric']!r}")
    if params["encoder"] not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {params['encoder']!r}")
    if not (_is_number(fraction := params["calibration_fraction"]) and 0.0 < fraction < 1.0):
        raise ValueError(f"calibration_fraction must be a number in (0, 1), got {fraction!r}")
    alpha, delta = params["alpha"], params["delta"]
    if alpha is not None and not (_is_number(alpha) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be a number in (0, 1) or None, got {alpha!r}")
    if not (_is_number(delta) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    power = params.get("density_power", 0.0)
    if not _is_number(power) or not 0.0 <= power <= 1.0:
        raise ValueError(f"density_power must be a number in [0, 1], got {power!r}")
    if params["index"] not in KINDS:
        raise ValueError(f"index must be one of {KINDS}, got {params['index']!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class FitInputs:
    """What ``fit`` trains on once ``y`` is applied; indices refer to ``normals``.

    ``rows``: each normal record's position in ``X`` (the fallback id of a record without one).
    """

    normals: Data
    labels: Sequence[Any] | None
    pairs: np.ndarray | Sequence[Sequence[Any]] | None
    triplets: np.ndarray | Sequence[Sequence[int]] | None
    anomalies: Data | None
    rows: np.ndarray
    anomaly_rows: np.ndarray  # X rows of the y-flagged anomalies, then anomalies=' positions
    n_input: int  # len(X): explicit calibration records are numbered from here


def anomaly_flags(y: Any, n: int) -> np.ndarray:
    """``y`` as a bool mask: booleans, or numbers that are exactly 0 or 1, one per record.

    >>> anomaly_flags([0, 1, True], 3).tolist()
    [False, True, True]
    """
    values = np.asarray(y)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(
            f"y must be one 0/1 anomaly flag per record of X ({n}), got shape {values.shape}"
        )
    if values.dtype == bool:
        return values
    if values.dtype.kind in "iuf":
        valid = (values == 0) | (values == 1)
        if valid.all():
            return values == 1
        first = int(np.flatnonzero(~valid)[0])
        found: Any = values[first].item()
    else:
        first, found = 0, values[0].item() if n else None
    raise ValueError(
        f"y must hold 0/1 anomaly flags (1 = known anomaly), got {found!r} at position {first}; "
        "class labels of normal records for metric learning go in labels="
    )


def route_anomaly_flags(
    data: Data,
    y: Any,
    labels: Sequence[Any] | None,
    pairs: Sequence[Sequence[Any]] | None,
    triplets: Sequence[Sequence[int]] | None,
    anomalies: Data | None,
) -> FitInputs:
    """Split ``data`` by ``y`` into normals and known anomalies; re-index the supervision."""
    n, given = len(data), np.arange(0 if anomalies is None else len(anomalies))
    if y is None:
        return FitInputs(data, labels, pairs, triplets, anomalies, np.arange(n), given, n)
    flags = anomaly_flags(y, n)
    normal_rows = np.flatnonzero(~flags)
    if len(normal_rows) == 0:
        raise ValueError("y flags every record of X as an anomaly: fit needs normal records")
    position = np.full(n, -1, dtype=np.int64)
    position[normal_rows] = np.arange(len(normal_rows))
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries for {n} records")
        labels = [labels[row] for row in normal_rows.tolist()]
    flagged = take_rows(data, np.flatnonzero(flags))
    return FitInputs(
        normals=take_rows(data, normal_rows),
        labels=labels,
        pairs=_reindex(pairs, "pairs", position),
        triplets=_reindex(triplets, "triplets", position),
        anomalies=_combine(flagged, anomalies),
        rows=normal_rows, anomaly_rows=np.concatenate([np.flatnonzero(flags), given]),
        n_input=n,
    )


def _reindex(
    rows: Sequence[Sequence[Any]] | None, name: str, position: np.ndarray
) -> np.ndarray | None:
    if rows is None:
        return None
    table = np.asarray([parse_row(row, name, k) for k, row in enumerate(rows)],
                       dtype=np.int64).reshape(-1, 3)
    n_index = 2 if name == "pairs" else 3
    indices = table[:, :n_index]
    n = len(position)
    outside = np.flatnonzero(((indices < 0) | (indices >= n)).any(axis=1))
    if len(outside):
        first = int(outside[0])
        raise ValueError(
            f"{name}[{first}] = {table[first].tolist()} refers to a record outside 0..{n - 1}"
        )
    mapped = position[indices]
    flagged = np.flatnonzero((mapped < 0).any(axis=1))
    if len(flagged):
        first = int(flagged[0])
        record = int(indices[first][mapped[first] < 0][0])
        raise ValueError(
            f"{name}[{first}] = {table[first].tolist()} refers to record {record}, which y flags "
            f"as an anomaly: {name} must join normal records (known anomalies already train "
            "the embedder as hard negatives)"
        )
    table[:, :n_index] = mapped
    return table


def _combine(flagged: Data, anomalies: Data | None) -> Data | None:
    """X's flagged rows followed by ``anomalies=``; both arrays or both record lists."""
    if anomalies is None:
        return flagged if len(flagged) else None
    if not len(flagged):
        return anomalies
    if isinstance(flagged, np.ndarray) != isinstance(anomalies, np.ndarray):
        raise ValueError("anomalies= must be of X's kind (an array or records) when y is given")
    if isinstance(flagged, np.ndarray):
        return np.vstack([flagged, np.asarray(anomalies)])
    return list(flagged) + list(anomalies)


def calibration_split(
    n: int, n_neighbors: int, alpha: float | None, delta: float, fraction: float,
    random_state: int, strict: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference rows, calibration rows, and the calibration size ``alpha`` needs.

    Calibration takes ``fraction`` of the records, raised to what ``alpha``/``delta`` need, at
    most half. When even half is too few: ``strict`` raises ``CalibrationError``, otherwise the
    half is used and the calibrator reports the bound it achieves.
    """
    wanted = math.ceil(fraction * n)
    needed = 1 if alpha is None else required_calibration_size(alpha, delta)
    if alpha is not None:
        wanted = min(wanted, max(needed, enough_calibration(alpha, delta)))
    n_calibration = min(max(wanted, needed), n // 2)
    if n_calibration < 1 or n - n_calibration < n_neighbors:  # too few whatever alpha is
        raise ValueError(
            f"{n} normal records leave {n - n_calibration} references beside {n_calibration} "
            f"calibration records; n_neighbors={n_neighbors} needs at least {n_neighbors} "
            f"references and 1 calibration record")
    if n_calibration < needed and strict:
        raise CalibrationError(
            f"alpha={alpha} with delta={delta} needs at least {needed} calibration records, "
            f"i.e. at least {2 * needed} normal training records (calibration uses at most "
            f"half of them); got {n}. Provide more normal records, {STRICT_ADVICE}")
    order = np.random.default_rng(random_state).permutation(n)
    return np.sort(order[n_calibration:]), np.sort(order[:n_calibration]), needed


@dataclass(frozen=True)
class FitSplit:
    """The normal records of a fit, split into references R and calibration records C."""

    reference_data: Data
    calibration_data: Data
    reference_rows: np.ndarray  # positions of R among the normal records
    id_rows: np.ndarray  # row numbers that stand in for ids, R then C
    needed: int  # calibration records alpha/delta need


def split_for_fit(
    inputs: FitInputs, calibration: Data | None, n_neighbors: int, alpha: float | None,
    delta: float, fraction: float, random_state: int, strict: bool,
) -> FitSplit:
    """A random split of the normal records, or R = all of them and C = ``calibration``.

    An explicit ``calibration`` (``Detector.fit(..., calibration=C)``) is for callers that
    hold records exchangeable with the ones to be served, e.g. retraining, which calibrates on
    a held-out window of recent traffic. Its row numbers continue after X's.
    """
    n = len(inputs.normals)
    if calibration is None:
        reference_rows, calibration_rows, needed = calibration_split(
            n, n_neighbors, alpha, delta, fraction, random_state, strict)
        return FitSplit(take_rows(inputs.normals, reference_rows),
                        take_rows(inputs.normals, calibration_rows), reference_rows,
                        inputs.rows[np.concatenate([reference_rows, calibration_rows])], needed)
    n_calibration = len(calibration)
    needed = 1 if alpha is None else required_calibration_size(alpha, delta)
    if n_calibration < 1 or (strict and n_calibration < needed):
        raise CalibrationError(
            f"alpha={alpha} with delta={delta} needs at least {needed} calibration records; "
            f"calibration= holds {n_calibration}")
    if n < n_neighbors:
        raise ValueError(f"need at least {n_neighbors} normal records for "
                         f"n_neighbors={n_neighbors}")
    first = inputs.n_input
    return FitSplit(inputs.normals, calibration, np.arange(n),
                    np.concatenate([inputs.rows, np.arange(first, first + n_calibration)]),
                    needed)


def enough_calibration(alpha: float, delta: float, slack: float = 0.25) -> int:
    """Calibration records that certify ``alpha`` to within ``slack * alpha``.

    The certified threshold's false-positive rate sits about ``z(1 - delta) * sqrt(alpha /
    n)`` below ``alpha`` for ``n`` calibration records; past the ``n`` where that is a quarter
    of ``alpha``, more calibration buys little. And it costs: calibration records are scored
    against R only, then join the references, so every served score is at most its calibrated
    one (that is the guarantee), and the more of them there are, the further below ``alpha``
    the realised rate falls. 100 000 telemetry normals, default encoder: with 30 % the realised
    FPR was 0.15 α and recall at threshold 0.42, with this cap 0.28 α and 0.83
    (``bench/results/calibration-choices``).

    >>> enough_calibration(0.01, 0.05)
    4286
    """
    z = float(NormalDist().inv_cdf(1.0 - delta))
    return math.ceil((z / slack) ** 2 * (1.0 - alpha) / alpha)


def uncertified_message(
    n: int, needed: int, alpha: float, delta: float, n_calibration: int, fpr_bound: float
) -> str:
    """The ``CalibrationWarning`` text: what was asked, what it needs, what was achieved."""
    return (
        f"{n} normal records cannot certify a false-positive rate <= {alpha:g} with "
        f"confidence {1 - delta:g}: that needs at least {2 * needed} normal records "
        f"({needed} for calibration, which uses at most half). The threshold is the largest "
        f"of the {n_calibration} calibration scores; its false-positive rate is certified only "
        f"up to fpr_bound_={fpr_bound:.4g} and certified_ is False. {UNCERTIFIED_ADVICE}"
    )


def numeric_columns(encoder: FeatureEncoder) -> np.ndarray:
    """Mask of the feature columns that carry numeric values (not 0/1 indicator columns)."""
    mask = np.zeros(encoder.n_features_, dtype=bool)
    for field in encoder.field_columns_:
        column = encoder.numeric_value_column(field)
        if column is not None:
            mask[column] = True
    return mask


def field_groups(encoder: FeatureEncoder) -> tuple[np.ndarray, np.ndarray]:
    """Field index of each feature column, and which fields are hashed (high-cardinality ids).

    Self-supervision corrupts a field's columns together and always corrupts hashed fields:
    per-column corruption makes impossible one-hot mixes, and an id hashed into buckets is
    noise the embedding should not learn (synthetic records: +0.02 AUROC over per-column).
    """
    groups = np.zeros(encoder.n_features_, dtype=np.int64)
    hashed = np.zeros(len(encoder.fields_), dtype=bool)
    for index, spec in enumerate(encoder.fields_):
        groups[encoder.field_columns_[spec["name"]]] = index
        hashed[index] = spec.get("encoding") == "hash"
    return groups, hashed


def reference_ids(
    encoder: FeatureEncoder, reference_data: Data, calibration_data: Data, rows: np.ndarray
) -> list[Any]:
    """Record ids where the records have them, else the training row number."""
    ids = list(encoder.record_ids(reference_data)) + list(encoder.record_ids(calibration_data))
    return [int(row) if rid is None else rid for rid, row in zip(ids, rows, strict=True)]
