"""Exceptions raised by the detector library; every message names what to fix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


class NearwatchError(Exception):
    """Base class for every nearwatch error."""


class NotFittedError(NearwatchError, ValueError):
    """A method that needs a fitted estimator was called before ``fit``."""


class RecordError(NearwatchError, ValueError):
    """One input record is unusable; names the field and, when known, the record.

    >>> str(RecordError("bytes", "cannot convert 'abc' to a number"))
    "field 'bytes': cannot convert 'abc' to a number"
    """

    def __init__(
        self,
        field: str | None,
        reason: str,
        record_index: int | None = None,
        record_id: object = None,
    ) -> None:
        self.field = field
        self.reason = reason
        self.record_index = record_index
        self.record_id = record_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.record_index is not None:
            where.append(f"record {self.record_index}")
        if self.record_id is not None:
            where.append(f"id {self.record_id!r}")
        prefix = f"{' '.join(where)}: " if where else ""
        if self.field is None:
            return f"{prefix}{self.reason}"
        return f"{prefix}field {self.field!r}: {self.reason}"


class CalibrationError(NearwatchError, ValueError):
    """Too few calibration records to certify the requested false-positive rate."""


# The advice of CalibrationError and CalibrationWarning names Python arguments: the CLI
# replaces these sentences with its flags (worker/commands_model.py).
STRICT_ADVICE = ("raise alpha or delta, pass alpha=None for scores and p-values only, or "
                 "strict=False for an uncertified threshold.")
UNCERTIFIED_ADVICE = "Pass strict=True to raise CalibrationError instead."


class BundleError(NearwatchError, ValueError):
    """A model bundle is missing, tampered with, truncated or of an unknown format."""


class SchemaMismatchError(NearwatchError, ValueError):
    """Records or a bundle were produced under a different schema version."""


class MissingFieldsWarning(UserWarning):
    """Scored records lack a field every training record had: scored as if it held a typical
    value, so an anomaly in it cannot show (``Detector.score``; the service counts them)."""


class RepeatedRecordsWarning(UserWarning):
    """Many calibration records have exact copies among the references: the certified bound
    holds only if new records repeat known ones as often (see ``calibrated.py``)."""


class CalibrationWarning(UserWarning):
    """Too few calibration records to certify ``alpha``: the fit uses an uncertified threshold.

    ``Detector.fit`` then reports the bound it does achieve in ``fpr_bound_`` and sets
    ``certified_ = False``; ``Detector(strict=True)`` raises ``CalibrationError`` instead.
    """


@contextmanager
def named_by_input(rows: np.ndarray) -> Iterator[None]:
    """A RecordError raised inside names the record by its position in ``fit``'s input
    (``rows``), not in the reference or calibration part the split put it in."""
    try:
        yield
    except RecordError as error:
        if error.record_index is None:
            raise
        raise RecordError(error.field, error.reason, record_index=int(rows[error.record_index]),
                          record_id=error.record_id) from None
