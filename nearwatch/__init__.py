"""nearwatch: anomaly-detection monitoring with metric-learned embeddings and certified thresholds.

The one import name of the installed distribution. The repository keeps the pipeline in
top-level folders, mapped here by the build configuration (``pyproject.toml``):
``detector/`` → ``nearwatch.detector`` (the science, torch only in ``embedding``),
``worker/`` → ``nearwatch.worker`` (Celery service, CLI), ``scheduler/`` → ``nearwatch.scheduler``.

>>> from nearwatch import Detector
>>> Detector().alpha
0.01
"""

from __future__ import annotations

from nearwatch.detector import (
    BundleError,
    CalibrationError,
    Detector,
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
