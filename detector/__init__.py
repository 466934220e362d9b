"""nearwatch detector library: records → features → learned embedding → kNN → certified flags.

>>> from nearwatch.detector import Detector
>>> Detector().alpha
0.01
"""

from __future__ import annotations

from .detector import Detector
from .errors import (
    BundleError,
    CalibrationError,
    NearwatchError,
    NotFittedError,
    RecordError,
    SchemaMismatchError,
)

__all__ = [
    "BundleError",
    "CalibrationError",
    "Detector",
    "NearwatchError",
    "NotFittedError",
    "RecordError",
    "SchemaMismatchError",
]
