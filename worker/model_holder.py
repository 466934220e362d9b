"""The serving model of a worker process, hot-reloaded from the registry's ``CURRENT``."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from nearwatch.detector import BundleError, Detector
from nearwatch.detector.store.registry import ModelRegistry

if TYPE_CHECKING:
    from .metrics import ServiceMetrics

log = logging.getLogger("nearwatch.worker")


class ModelHolder:
    """The serving model; follows the registry's ``CURRENT`` pointer.

    The pointer is read at most once per ``check_interval`` seconds, from the scoring path
    (so an idle worker does no work). A new version is loaded *before* it replaces the old
    one: a batch in flight keeps the model it started with, and a bundle that fails
    verification is refused (logged, counted) while the old model keeps serving.
    """

    def __init__(self, registry: ModelRegistry, check_interval: float,
                 metrics: ServiceMetrics | None = None) -> None:
        self.registry = registry
        self.check_interval = check_interval
        self.metrics = metrics
        self.version: str | None = None
        self.detector: Detector | None = None
        self._refused: str | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def load_initial(self) -> bool:
        """Load the current model. One that fails verification is refused, and the version
        promoted before it that loads serves instead, as a running worker keeps its model;
        without any, the worker still starts, answers batches with a failure until a model
        is promoted, then picks it up."""
        version = None
        try:
            version = self.registry.current_version()
            if version is None:  # nothing promoted yet: waiting is not a refusal
                log.warning("no model to serve yet: the registry %s has no current model "
                            "(nearwatch models add BUNDLE_DIR --promote)", self.registry.root)
                return False
            detector = self.registry.load(version)
        except OSError as exc:  # unreadable now (a copy in progress?): the next check retries
            log.error("no model to serve yet: %s", exc)
            return False
        except (BundleError, ValueError) as exc:  # fails verification: refused
            self._refused = version  # counted once, not again at the next pointer check
            if self.metrics is not None:  # a pointer or bundle that does not load
                self.metrics.model_refused()
            return self._load_earlier(version, exc)
        self._install(version, detector)
        return True

    def _load_earlier(self, refused: str | None, reason: Exception) -> bool:
        """Serve the latest earlier promotion that loads, after ``refused`` failed."""
        try:
            earlier = [str(entry.get("version")) for entry in reversed(self.registry.history())]
        except (BundleError, OSError, ValueError):
            earlier = []
        for version in dict.fromkeys(v for v in earlier if v != refused):
            try:
                detector = self.registry.load(version)
            except (BundleError, OSError, ValueError):
                continue
            log.error("refusing model %s, serving %s (promoted before it) instead: %s",
                      refused, version, reason)
            self._install(version, detector)
            self._refused = refused
            return True
        log.error("no model to serve yet: %s", reason)
        return False

    def current(self) -> tuple[str, Detector]:
        now = time.monotonic()
        if self.detector is None or now - self._checked_at >= self.check_interval:
            with self._lock:
                self._checked_at = now
                self._follow_pointer()
        if self.detector is None:
            raise BundleError(f"no model to serve: the registry {self.registry.root} has no "
                              "current model that loads (nearwatch models add ... --promote)")
        return self.version or "", self.detector

    def watch(self) -> threading.Thread:
        """Follow the pointer from a daemon thread as well, every ``check_interval``: an idle
        process loads a promoted model (and its /metrics shows it) before its next batch."""
        def run() -> None:
            while True:
                time.sleep(max(self.check_interval, 0.5))
                try:
                    self.current()
                except BundleError:  # no model yet; a refused one was logged and counted
                    pass
                except Exception:  # the next batch follows the pointer anyway
                    log.exception("could not follow the model registry pointer")

        thread = threading.Thread(target=run, daemon=True, name="nearwatch-model-watch")
        thread.start()
        return thread

    def _follow_pointer(self) -> None:
        try:
            wanted = self.registry.current_version()
        except BundleError as exc:
            log.error("model registry pointer unreadable, keeping %s: %s", self.version, exc)
            return
        if wanted is None or wanted == self.version or wanted == self._refused:
            return
        try:
            detector = self.registry.load(wanted)
        except (BundleError, OSError, ValueError) as exc:
            self._refused = wanted
            log.error("refusing model %s, keeping %s: %s", wanted, self.version, exc)
            if self.metrics is not None:
                self.metrics.model_refused()
            return
        self._install(wanted, detector)

    def _install(self, version: str, detector: Detector) -> None:
        previous = self.version
        self.version, self.detector = version, detector
        self._refused = None
        log.info("serving model %s (was %s) in process %d", version, previous, os.getpid())
        if self.metrics is not None:
            self.metrics.model_loaded(version, detector)
