"""Model registry: a directory of verified bundles plus a pointer to the current one.

Layout::

    <root>/v0001/        a bundle directory (manifest.json + checksummed files)
    <root>/v0002/
    <root>/CURRENT       "v0002\\n": the version workers serve

Bundles are verified (``Detector.load``) before they are copied in, copied to a temporary
directory and renamed into place, so a reader never sees a half-copied version. ``CURRENT``
is replaced atomically (write a temporary file, then ``os.replace``), so a worker reading it
sees either the old or the new version, never a torn write. Pure library: no env vars.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BundleError

if TYPE_CHECKING:
    from ..detector import Detector

POINTER = "CURRENT"
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
        except FileNotFoundError:
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

        current = self.current_version()
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
            self.promote(version)
        return version

    def promote(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` (which must load and verify)."""
        self.load(version)
        self._write_pointer(version)

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
        fd, temporary = tempfile.mkstemp(prefix=".CURRENT-", dir=self.root)
        try:
            with os.fdopen(fd, "w") as stream:
                stream.write(version + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.root / POINTER)
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
