"""Peak memory of one step of the benchmark (a fit and its scoring), in the benchmark's process.

Linux keeps a process' peak resident set (``VmHWM``) and lets the process reset it to the
current RSS (``echo 5 > /proc/self/clear_refs``). So each step is measured as its peak RSS above
the RSS it started from: the data already loaded and anything an earlier step left resident are
not counted. Freed heap that glibc kept from an earlier step could hide a later step's growth, so
it is handed back first (``gc.collect``, ``malloc_trim``). Where this is not Linux, or the
reset did not take, the peak is ``None`` rather than a wrong figure.

>>> import numpy as np
>>> with PeakMemory() as peak:
...     block = np.ones(20_000_000)  # 160 MB, touched
...     del block
>>> peak.mb is None or peak.mb > 120
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(key)


@cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")  # runs a subprocess: once
    return None if name is None else getattr(ctypes.CDLL(name), "malloc_trim", None)


def _trim_heap() -> None:
    gc.collect()  # garbage of an earlier step must not sit in this step's baseline
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class PeakMemory:
    """Context manager: ``mb`` is the peak RSS inside the block above the RSS at its start."""

    def __init__(self) -> None:
        self.mb: float | None = None
        self._start: float | None = None

    def __enter__(self) -> PeakMemory:
        try:
            _trim_heap()
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
            self._start = _status_mb("VmRSS")
            if _status_mb("VmHWM") > self._start + 4:  # the reset did not happen: no figure
                self._start = None
        except (OSError, KeyError, ValueError):
            self._start = None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._start is None:
            return
        try:
            self.mb = max(0.0, _status_mb("VmHWM") - self._start)
        except (OSError, KeyError, ValueError):  # never hide the block's own exception
            self.mb = None
