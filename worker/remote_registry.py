"""Workers' side of a model registry in Redis: a local, verified mirror.

Workers never load from Redis: ``MirroredRegistry`` is a ``ModelRegistry`` over a local cache
directory. Its ``current_version`` reads the pointer in Redis and downloads that version when
the cache lacks it (chunks checked against the index, into a staging directory renamed into
place); ``load`` then verifies it like any registry version (checksums, consistency checks,
signature). ``ModelHolder`` calls ``current_version`` once per reload interval, so hot reload,
refusal of a bad bundle and memory-mapping work exactly as with a directory registry.
"""

from __future__ import annotations

import builtins
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nearwatch.detector.errors import BundleError
from nearwatch.detector.store.registry import ModelRegistry, ModelVersion
from redis.exceptions import RedisError

from .remote_store import RedisModelStore

if TYPE_CHECKING:
    from nearwatch.detector import Detector

    from .settings import Settings

log = logging.getLogger("nearwatch.worker")
_VERSION = re.compile(r"^v(\d{4,})$")


class MirroredRegistry(ModelRegistry):
    """A ``ModelRegistry`` whose ``root`` is this node's cache of a ``RedisModelStore``.

    ``current_version`` reads the pointer in Redis and downloads that version when the cache
    lacks it; ``load`` verifies from the cache, exactly as for a directory registry. Redis
    unreachable: the last current version this node verified (the local ``CURRENT``), unless
    ``ride_out_outages`` is False (a one-shot command: "no current model" would mislead).
    """

    def __init__(self, store: RedisModelStore, cache_dir: str | Path,
                 ride_out_outages: bool = True) -> None:
        super().__init__(cache_dir, store.signing_key)
        self.store = store
        self.ride_out_outages = ride_out_outages
        self.location = store.location
        self._failed: dict[str, BundleError] = {}  # downloads refused, raised by ``load``
        self._wanted: str | None = None  # the pointer in Redis, as last read
        self._bad: str | None = None  # the last version whose download was refused
        self._unreachable = False

    def versions(self) -> list[str]:
        return self.store.versions()

    def list(self) -> list[ModelVersion]:
        return self.store.list(self.root)

    def current_version(self) -> str | None:
        version: str | None = None
        try:
            version = self.store.current_version()
            if (version is not None and version != self._bad
                    and not (self.root / version).is_dir()):
                self._fetch(version)
        except BundleError as exc:
            if version is None:
                raise
            self._failed[version] = exc  # the holder's load refuses it (logged, counted)
            self._bad = version  # not downloaded again at every check
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisError) and not self.ride_out_outages:
                raise
            local = super().current_version()
            if not self._unreachable:
                log.warning("model registry %s unreachable (or cache unwritable), staying on "
                            "%s: %s",
                            self.location, local, exc)
            self._unreachable = True
            return local
        if self._unreachable:
            log.warning("model registry %s reachable again", self.location)
            self._unreachable = False
        self._wanted = version
        return version

    def load(self, version: str) -> Detector:
        failed = self._failed.pop(version, None)
        if failed is not None:
            raise failed
        if _VERSION.match(version) and not (self.root / version).is_dir():
            try:
                self._fetch(version)
            except RedisError as exc:
                raise BundleError(f"cannot download {version} from {self.location}: "
                                  f"{exc}") from exc
        detector = super().load(version)
        if version == self._wanted:
            self._write_pointer(version)  # the fallback while Redis is unreachable
        return detector

    def load_current(self) -> tuple[str, Detector]:
        version = self.current_version()
        if version is None:
            raise BundleError(f"model registry {self.location} has no current model: add one "
                              "with `nearwatch models add BUNDLE_DIR --promote`")
        return version, self.load(version)

    def add(self, bundle_dir: str | Path, promote: bool = False) -> str:
        return self.store.add(bundle_dir, promote)

    def promote(self, version: str, reason: str = "manual",
                guard: Callable[[], None] | None = None) -> None:
        """Download and verify ``version`` like a worker, then move the pointer in Redis."""
        self.load(version)
        if guard is not None:
            guard()
        self.store.set_current(version, reason)

    def rollback(self) -> str:
        expected = self.store.current_version()
        target, dropped = self.store.rollback_target()
        self.load(target)  # verified before the pointer moves
        self.store.apply_rollback(target, dropped, expected)
        return target

    def history(self) -> builtins.list[dict[str, Any]]:
        return self.store.history()

    def record_decision(self, version: str, decision: dict[str, Any]) -> None:
        self.store.record_decision(version, decision)

    def remove(self, version: str) -> None:
        self.store.remove(version)
        shutil.rmtree(self.root / version, ignore_errors=True)  # this node's cached copy

    def decision(self, version: str) -> dict[str, Any] | None:
        return self.store.decision(version)

    def _fetch(self, version: str) -> None:
        """Download into a staging directory, then rename into place (one process per node
        downloads; the others wait on the lock and find it there)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / ".download.lock"):
            if (self.root / version).is_dir():
                return
            staging = Path(tempfile.mkdtemp(prefix=f".fetching-{version}-", dir=self.root))
            try:
                self.store.download(version, staging / version)
                os.rename(staging / version, self.root / version)
            finally:
                shutil.rmtree(staging, ignore_errors=True)


def open_registry(settings: Settings, cache_dir: Path | None = None,
                  ride_out_outages: bool = True) -> ModelRegistry:
    """The registry ``settings`` name: a directory, or Redis mirrored into a cache directory
    (``cache_dir``, else ``NEARWATCH_MODEL_CACHE``, else a fresh temporary directory)."""
    if settings.model_store is None:
        return ModelRegistry(settings.model_dir, settings.bundle_key)
    cache = cache_dir or settings.model_cache or Path(tempfile.mkdtemp(prefix="nearwatch-models-"))
    return MirroredRegistry(RedisModelStore.from_url(settings.model_store, settings.bundle_key),
                            cache, ride_out_outages)


@contextmanager
def registry_session(settings: Settings) -> Iterator[ModelRegistry]:
    """``open_registry`` for one command: a temporary cache is removed afterwards, and Redis
    unreachable is an error (``RedisError``), not the cache's last version."""
    if settings.model_store is None or settings.model_cache is not None:
        yield open_registry(settings, ride_out_outages=False)
        return
    with tempfile.TemporaryDirectory(prefix="nearwatch-models-") as cache:
        yield open_registry(settings, Path(cache), ride_out_outages=False)


def location_of(registry: ModelRegistry) -> str:
    return registry.location if isinstance(registry, MirroredRegistry) else str(registry.root)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


