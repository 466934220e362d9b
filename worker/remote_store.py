"""A model registry in Redis (bundles in chunks + the pointer), for nodes sharing no filesystem.

``NEARWATCH_MODEL_DIR=redis://host:port/db`` selects it. Layout (prefix ``nearwatch:models``)::

    :next                      counter that numbers versions (INCR: concurrent adds never clash)
    :versions                  sorted set of the *complete* versions (score: the number)
    :current                   "v0002": the version workers serve
    :history                   list of promotions (JSON), oldest first: for rollback
    :v0002:decision            JSON: the retraining gate's decision and figures
    :v0002:index               JSON: every file's size, sha256 and chunk count, model facts
    :v0002:<file>:<n>          the file's n-th chunk (4 MiB)

``add`` verifies the bundle (``Detector.load`` with the signing key), uploads the manifest and
the files it lists (hashed while read: a file changed since it was verified is refused), and
only then, in one transaction, writes the index, adds the version to ``:versions`` and (with
``promote``) moves ``:current``: a version is visible only once complete.

Workers download and verify versions locally: ``worker/remote_registry.py``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nearwatch.detector.errors import BundleError
from nearwatch.detector.store.bundle import MANIFEST
from nearwatch.detector.store.registry import HISTORY_KEEP, ModelVersion
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis import Redis

PREFIX = "nearwatch:models"
CHUNK_BYTES = 4 << 20
_VERSION = re.compile(r"^v(\d{4,})$")


class RedisModelStore:
    """Verified bundles and the current-version pointer in Redis (see the module docstring)."""

    def __init__(self, client: Redis, signing_key: bytes | None = None, *,
                 location: str = "redis", prefix: str = PREFIX,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.client = client
        self.signing_key = signing_key
        self.location = location
        self.prefix = prefix
        self.chunk_bytes = chunk_bytes

    @classmethod
    def from_url(cls, url: str, signing_key: bytes | None = None) -> RedisModelStore:
        import redis

        return cls(redis.Redis.from_url(url), signing_key, location=public_url(url))

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ------------------------------------------------------------------ reading
    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        return [_text(name) for name in self.client.zrange(self.key("versions"), 0, -1)]

    def current_version(self) -> str | None:
        raw = self.client.get(self.key("current"))
        if raw is None:
            return None
        text = _text(raw).strip()
        if not _VERSION.match(text):
            raise BundleError(f"{self.location} {self.key('current')}: not a version name: "
                              f"{text[:40]!r}")
        return text

    def index(self, version: str) -> dict[str, Any]:
        if not _VERSION.match(version):
            raise BundleError(f"not a version name: {version!r} (expected e.g. 'v0001')")
        if self.client.zscore(self.key("versions"), version) is None:
            raise BundleError(f"model registry {self.location} has no version {version}")
        raw = self.client.get(self.key(version, "index"))
        try:
            index = json.loads(raw) if raw is not None else None
        except ValueError:
            index = None
        if not isinstance(index, dict) or not isinstance(index.get("files"), dict):
            raise BundleError(f"model registry {self.location}: the index of {version} is "
                              "missing or corrupt")
        return index

    def list(self, cache_dir: Path) -> list[ModelVersion]:
        current = self.current_version()
        listed = []
        for version in self.versions():
            try:
                index = self.index(version)
            except BundleError:
                index = {}
            listed.append(ModelVersion(
                version=version, path=cache_dir / version, current=version == current,
                model_version=index.get("model_version"), created_at=index.get("created_at"),
            ))
        return listed

    def download(self, version: str, target: Path) -> None:
        """Assemble ``version`` into the new directory ``target``; every file's size and
        sha256 are checked against the index (the load then verifies the bundle itself)."""
        files = self.index(version)["files"]
        target.mkdir(parents=True)
        for name, entry in sorted(files.items()):
            if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
                raise BundleError(f"{self.location}: {version} names a bad file: {name!r}")
            try:
                chunks, size, expected = int(entry["chunks"]), entry["size"], entry["sha256"]
            except (KeyError, TypeError, ValueError) as exc:
                raise BundleError(f"{self.location}: the index of {version} is corrupt at "
                                  f"{name}: {exc!r}") from exc
            digest, written = hashlib.sha256(), 0
            with (target / name).open("wb") as out:
                for number in range(chunks):
                    chunk = self.client.get(self.key(version, name, str(number)))
                    if chunk is None:
                        raise BundleError(
                            f"{self.location}: {version}/{name}: chunk {number} is missing "
                            "(deleted or evicted: a Redis holding models needs "
                            "maxmemory-policy noeviction)")
                    data = chunk if isinstance(chunk, bytes) else str(chunk).encode()
                    digest.update(data)
                    written += out.write(data)
            if written != size or digest.hexdigest() != expected:
                raise BundleError(f"{self.location}: {version}: checksum mismatch for {name}: "
                                  "the bundle in Redis was modified or truncated")

    # ------------------------------------------------------------------ writing
    def add(self, bundle_dir: str | Path, promote: bool = False) -> str:
        """Verify ``bundle_dir`` and upload it under the next version; optionally promote."""
        from nearwatch.detector import Detector

        source = Path(bundle_dir)
        if not source.is_dir():
            raise BundleError(f"{source} is not a bundle directory")
        _regular_file(source / MANIFEST)
        manifest_bytes = (source / MANIFEST).read_bytes()
        Detector.load(source, signing_key=self.signing_key)  # raises BundleError
        if (source / MANIFEST).read_bytes() != manifest_bytes:
            raise BundleError(f"{source}: {MANIFEST} changed while it was verified")
        manifest = json.loads(manifest_bytes)
        checksums: dict[str, str] = manifest["files"]
        for name in checksums:
            _regular_file(source / name)
        number = int(self.client.incr(self.key("next")))
        version = f"v{number:04d}"
        written: list[str] = []
        try:
            entries = {name: self._upload(version, source / name, written)
                       for name in [MANIFEST, *sorted(checksums)]}
            for name, expected in checksums.items():
                if entries[name]["sha256"] != expected:
                    raise BundleError(f"{source}: {name} changed while it was uploaded")
            fitted = manifest.get("fitted") if isinstance(manifest.get("fitted"), dict) else {}
            index = {"files": entries, "model_version": fitted.get("model_version_"),
                     "created_at": manifest.get("created_at"),
                     "uploaded_at": datetime.now(UTC).isoformat(timespec="seconds")}
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.key(version, "index"), json.dumps(index))
                pipe.zadd(self.key("versions"), {version: number})
                if promote:
                    pipe.set(self.key("current"), version)
                    pipe.rpush(self.key("history"), json.dumps(
                        {"version": version, "time": time.time(), "reason": "added"}))
                pipe.execute()
        except BaseException:
            with suppress(RedisError):  # best effort: an unfinished version is never listed
                if written:
                    self.client.delete(*written)
            raise
        return version

    def set_current(self, version: str, reason: str = "manual") -> None:
        """Move the pointer and record the promotion (callers verify the version first:
        ``MirroredRegistry.promote``); one transaction."""
        self.index(version)  # it exists and is complete
        entry = json.dumps({"version": version, "time": time.time(), "reason": reason})
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.key("current"), version)
            pipe.rpush(self.key("history"), entry)
            pipe.ltrim(self.key("history"), -HISTORY_KEEP, -1)
            pipe.execute()

    def history(self) -> builtins.list[dict[str, Any]]:
        entries = []
        for raw in self.client.lrange(self.key("history"), 0, -1):
            with suppress(ValueError):
                entry = json.loads(raw)
                if isinstance(entry, dict) and "version" in entry:
                    entries.append(entry)
        return entries

    def rollback_target(self) -> tuple[str, int]:
        """The version promoted before the current one, and how many history entries the
        rollback drops (the current version's promotions at the end of the history)."""
        current = self.current_version()
        history = self.history()
        dropped = 0
        while history and history[-1].get("version") == current:
            history.pop()
            dropped += 1
        if not history:
            raise BundleError(f"model registry {self.location}: no earlier promotion of a "
                              f"version other than {current} to roll back to")
        return str(history[-1]["version"]), dropped

    def apply_rollback(self, target: str, dropped: int, expected_current: str | None) -> None:
        """Point at ``target`` and drop ``dropped`` history entries, unless the pointer moved
        meanwhile (``WATCH``): then ``BundleError``, nothing changed."""
        from redis.exceptions import WatchError

        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key("current"), self.key("history"))
                if self.current_version() != expected_current:
                    raise BundleError("the current model changed during the rollback: retry")
                pipe.multi()
                pipe.set(self.key("current"), target)
                for _ in range(dropped):
                    pipe.rpop(self.key("history"))
                pipe.execute()
            except WatchError as exc:
                raise BundleError("the current model changed during the rollback: "
                                  "retry") from exc

    def remove(self, version: str) -> None:
        """Delete a version that is not current: unlisted first (one transaction), then its
        chunks, so no node starts downloading a version that is going away."""
        if version == self.current_version():
            raise BundleError(f"{version} is the current model of {self.location}: not removed")
        files = self.index(version)["files"]
        chunks = [self.key(version, name, str(number)) for name, entry in files.items()
                  for number in range(int(entry["chunks"]))]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.key("versions"), version)
            pipe.delete(self.key(version, "index"), self.key(version, "decision"))
            pipe.execute()
        for start in range(0, len(chunks), 500):
            self.client.delete(*chunks[start:start + 500])

    def record_decision(self, version: str, decision: dict[str, Any]) -> None:
        self.index(version)
        self.client.set(self.key(version, "decision"), json.dumps(decision))

    def decision(self, version: str) -> dict[str, Any] | None:
        raw = self.client.get(self.key(version, "decision"))
        try:
            loaded = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return loaded if isinstance(loaded, dict) else None

    def _upload(self, version: str, path: Path, written: builtins.list[str]
                ) -> dict[str, Any]:
        digest, size, number = hashlib.sha256(), 0, 0
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(self.chunk_bytes), b""):
                key = self.key(version, path.name, str(number))
                written.append(key)
                self.client.set(key, chunk)
                digest.update(chunk)
                size += len(chunk)
                number += 1
        return {"size": size, "sha256": digest.hexdigest(), "chunks": number}


def public_url(url: str) -> str:
    """``url`` without its password (for logs and messages)."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def _regular_file(path: Path) -> None:
    """Only regular files are uploaded: a link could upload private data, a device fill Redis."""
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{path} is not a regular file: a bundle holds regular files only")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
