"""Model registry: a directory of verified bundles plus a pointer to the current one.

Layout::

    <root>/v0001/        a bundle directory (manifest.json + checksummed files)
    <root>/v0002/
    <root>/CURRENT       "v0002\\n": the version workers serve
    <root>/HISTORY       JSON list of promotions, oldest first: what ``rollback`` goes back to
    <root>/v0002.decision.json   the retraining gate's decision and figures for v0002

Bundles are verified (``Detector.load``) before they are copied in, copied to a temporary
directory and renamed into place, so a reader never sees a half-copied version. ``CURRENT``
is replaced atomically (write a temporary file, then ``os.replace``), so a worker reading it
sees either the old or the new version, never a torn write. Pure library: no env vars.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BundleError
from .bundle import MANIFEST

if TYPE_CHECKING:
    from ..detector import Detector

POINTER = "CURRENT"
HISTORY = "HISTORY"
HISTORY_KEEP = 100  # promotions remembered for rollback
_VERSION = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as listed by ``ModelRegistry.list``."""

    version: str
    path: Path
    current: bool
    model_version: str | None  # the detector's own content hash, from the manifest
    created_at: str | None


class ModelRegistry:
    """Versions under ``root``; ``root`` is created on the first ``add``.

    ``signing_key``: every bundle added or loaded must carry a matching HMAC signature.
    """

    def __init__(self, root: str | Path, signing_key: bytes | None = None) -> None:
        self.root = Path(root)
        self.signing_key = signing_key

    # ------------------------------------------------------------------ reading
    def versions(self) -> list[str]:
        """Registered versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda name: int(name[1:]))

    def current_version(self) -> str | None:
        """The version ``CURRENT`` points at, or ``None`` when nothing was promoted yet."""
        try:
            text = (self.root / POINTER).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):  # no root (or a file there): no pointer
            return None
        if not _VERSION.match(text):
            raise BundleError(f"{self.root / POINTER}: not a version name: {text[:40]!r}")
        return text

    def path(self, version: str) -> Path:
        if not _VERSION.match(version):
            raise BundleError(f"not a version name: {version!r} (expected e.g. 'v0001')")
        path = self.root / version
        if not path.is_dir():
            raise BundleError(f"model registry {self.root} has no version {version}")
        return path

    def load(self, version: str) -> Detector:
        """Load (and verify) one version; raises ``BundleError`` if it was tampered with."""
        from ..detector import Detector

        return Detector.load(self.path(version), signing_key=self.signing_key)

    def load_current(self) -> tuple[str, Detector]:
        """``(version, detector)`` for the current version."""
        version = self.current_version()
        if version is None:
            raise BundleError(
                f"model registry {self.root} has no current model: "
                "add one with `nearwatch models add BUNDLE_DIR --promote`"
            )
        return version, self.load(version)

    def list(self) -> list[ModelVersion]:
        import json

        try:
            current = self.current_version()
        except BundleError:  # a damaged pointer: the versions are still listed, none current
            current = None
        listed = []
        for version in self.versions():
            path = self.root / version
            try:
                manifest = json.loads((path / "manifest.json").read_text())
            except (OSError, ValueError):
                manifest = {}
            fitted = manifest.get("fitted") if isinstance(manifest.get("fitted"), dict) else {}
            listed.append(ModelVersion(
                version=version, path=path, current=version == current,
                model_version=fitted.get("model_version_"),
                created_at=manifest.get("created_at"),
            ))
        return listed

    # ------------------------------------------------------------------ writing
    def add(self, bundle_dir: str | Path, promote: bool = False) -> str:
        """Verify ``bundle_dir``, copy it in under the next version, optionally promote it."""
        from ..detector import Detector

        source = Path(bundle_dir)
        if not source.is_dir():
            raise BundleError(f"{source} is not a bundle directory")
        if not (source / MANIFEST).is_file():  # before walking what may be any directory
            raise BundleError(f"{source} is not a nearwatch bundle: {MANIFEST} is missing")
        _refuse_links(source)  # before anything reads a file through a link or a device
        # raises BundleError: a bad (or, with a key, unsigned) bundle never enters the registry
        Detector.load(source, signing_key=self.signing_key)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".adding-", dir=self.root))
        try:
            copied = staging / "bundle"
            shutil.copytree(source, copied, symlinks=True)  # a link swapped in is not followed
            _refuse_links(copied)
            Detector.load(copied)  # the copy, too: catches a bundle changed while copying
            version = self._rename_into_place(copied)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if promote:
            self.promote(version, reason="added")
        return version

    def promote(self, version: str, reason: str = "manual",
                guard: Callable[[], None] | None = None) -> None:
        """Point ``CURRENT`` at ``version`` (which must load and verify) and record it in the
        history. ``guard`` runs last before the pointer moves and may raise to stop it (the
        retraining's fencing check)."""
        self.load(version)
        with self._history_lock():
            if guard is not None:
                guard()
            history = self.history()
            history.append({"version": version, "time": time.time(), "reason": reason})
            # the pointer first: a crash in between leaves a promotion missing from the
            # history (rollback skips it), never a history entry that never served
            self._write_pointer(version)
            self._write_text(HISTORY, json.dumps(history[-HISTORY_KEEP:]))

    def rollback(self) -> str:
        """Go back to the version promoted before the current one; returns it.

        The current version's promotion leaves the history, so a second rollback goes one
        further back. The target is verified first; nothing changes if it does not load.
        """
        with self._history_lock():
            current = self.current_version()
            history = self.history()
            while history and history[-1].get("version") == current:
                history.pop()
            if not history:
                raise BundleError(f"model registry {self.root}: no earlier promotion of a "
                                  f"version other than {current} to roll back to")
            target = str(history[-1]["version"])
            self.load(target)
            self._write_text(HISTORY, json.dumps(history))
            self._write_pointer(target)
        return target

    def history(self) -> builtins.list[dict[str, Any]]:
        """Promotions, oldest first: ``{"version", "time", "reason"}``."""
        try:
            entries = json.loads((self.root / HISTORY).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except ValueError as exc:
            raise BundleError(f"{self.root / HISTORY} is corrupt: {exc}") from exc
        return [e for e in entries if isinstance(e, dict) and "version" in e]

    def prune(self, keep: int, protect_recent: int = 5) -> builtins.list[str]:
        """Remove the versions older than the newest ``keep`` (0: keep all); never the
        current one nor the last ``protect_recent`` promotions (what ``rollback`` goes back
        to), which stay beside the newest ``keep``: a version just rolled back from is newer
        than the current one and stays too. Returns the versions removed. Retraining adds a
        version per run: this bounds the registry to ``keep + protect_recent + 1``."""
        if keep <= 0:
            return []
        with self._history_lock():
            protected = {self.current_version(),
                         *(str(h["version"]) for h in self.history()[-protect_recent:])}
            versions = self.versions()
            doomed = [v for v in versions[:max(0, len(versions) - keep)] if v not in protected]
            for version in doomed:
                self.remove(version)
        return doomed

    def remove(self, version: str) -> None:
        """Delete a version that is not the current one (renamed away first: a reader sees
        it whole or not at all; a worker that loaded it keeps its mapped files)."""
        path = self.path(version)
        if version == self.current_version():
            raise BundleError(f"{version} is the current model of {self.root}: not removed")
        trash = Path(tempfile.mkdtemp(prefix=f".removing-{version}-", dir=self.root))
        os.rename(path, trash / version)
        shutil.rmtree(trash, ignore_errors=True)
        (self.root / f"{version}.decision.json").unlink(missing_ok=True)

    def record_decision(self, version: str, decision: dict[str, Any]) -> None:
        """Store the retraining gate's decision for ``version`` next to its bundle."""
        self.path(version)
        self._write_text(f"{version}.decision.json", json.dumps(decision, indent=2))

    def decision(self, version: str) -> dict[str, Any] | None:
        """The gate's decision for ``version``; None for versions added by hand."""
        try:
            loaded = json.loads((self.path(version).parent
                                 / f"{version}.decision.json").read_text())
        except FileNotFoundError:
            return None
        return loaded if isinstance(loaded, dict) else None

    @contextmanager
    def _history_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".history.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _rename_into_place(self, copied: Path) -> str:
        # Another `add` may race for the same number: rename fails on a non-empty target,
        # so try the next number.
        existing = self.versions()
        number = int(existing[-1][1:]) + 1 if existing else 1
        for _ in range(1000):
            version = f"v{number:04d}"
            try:
                os.rename(copied, self.root / version)
                return version
            except OSError:
                if not (self.root / version).exists():
                    raise
                number += 1
        raise BundleError(f"could not allocate a version number in {self.root}")

    def _write_pointer(self, version: str) -> None:
        self._write_text(POINTER, version + "\n")

    def _write_text(self, name: str, text: str) -> None:
        """Replace ``root/name`` atomically: readers see the old or the new text."""
        fd, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=self.root)
        try:
            with os.fdopen(fd, "w") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.root / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _refuse_links(root: Path) -> None:
    """A bundle holds regular files and directories only: a symlink could copy private data
    into the registry, a device (``/dev/zero``) could fill the disk."""
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link: a bundle holds regular files only")
        if not (path.is_file() or path.is_dir()):
            raise BundleError(f"{path} is not a regular file: a bundle holds regular files only")
