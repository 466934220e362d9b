"""Model bundles: a directory of files plus a manifest with the sha256 of every file.

Nothing is unpickled: arrays are ``.npy`` read with ``allow_pickle=False``, tensors are read
with ``torch.load(weights_only=True)``, everything else is JSON. Every checksum is verified
before any file is parsed, so a tampered or truncated bundle is refused up front.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp()) / "model"
>>> write_bundle(folder, {"config": {"k": 5}}, {"notes.json": b"{}"})
>>> manifest, files = read_bundle(folder)
>>> manifest["config"], sorted(files)
({'k': 5}, ['notes.json'])
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError

# 2: distinct references with counts, index in parts; 3: content-hash model version, checked
# fitted state, numpy encoder weights, optional HMAC signature
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"  # digest of the manifest's own content, minus these two keys
SIGNATURE = "signature_hmac_sha256"  # optional: HMAC of that digest


def nearwatch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nearwatch")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(path: str | Path, manifest: dict[str, Any], files: Mapping[str, bytes],
                 signing_key: bytes | None = None) -> None:
    """Write ``files`` and a manifest (extended with checksums and versions) into ``path``.

    The directory is assembled next to the target and renamed into place, so a reader never
    sees a half-written bundle. With ``signing_key`` the manifest carries an HMAC-SHA256 of its
    digest: checksums catch corruption, only a signature catches deliberate tampering (anyone
    can recompute a checksum).
    """
    target = Path(path).resolve()  # "." has no name to stage beside
    if MANIFEST in files:
        raise ValueError(f"{MANIFEST} is written by write_bundle itself")
    check_bundle_target(target)
    full_manifest = {
        "format_version": FORMAT_VERSION,
        "nearwatch_version": nearwatch_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": {name: sha256_hex(data) for name, data in sorted(files.items())},
    }
    full_manifest.pop(SIGNATURE, None)
    full_manifest[MANIFEST_DIGEST] = _manifest_digest(full_manifest)
    if signing_key is not None:
        full_manifest[SIGNATURE] = sign_digest(full_manifest[MANIFEST_DIGEST], signing_key)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        manifest_text = json.dumps(full_manifest, indent=2, sort_keys=True)
        (staging / MANIFEST).write_text(manifest_text + "\n")
        if target.exists() and any(target.iterdir()):
            shutil.rmtree(target)  # a bundle, per check_bundle_target: replaced whole
        os.replace(staging, target)  # onto an empty directory too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_bundle_target(path: str | Path) -> None:
    """Refuse to write a bundle where it would destroy something else: ``path`` must be new,
    an empty directory or an existing bundle (one with a ``manifest.json``), which is replaced.

    >>> try:
    ...     check_bundle_target("/")
    ... except BundleError as exc:
    ...     print(str(exc)[:48])
    / is not empty and not a nearwatch bundle (no ma
    """
    target = Path(path)
    if not target.exists():
        return
    if not target.is_dir():
        raise BundleError(f"{target} exists and is not a directory: a bundle is a directory")
    if (target / MANIFEST).is_file() or not any(target.iterdir()):
        return
    raise BundleError(f"{target} is not empty and not a nearwatch bundle (no {MANIFEST}): "
                      "refusing to replace it; choose a new or empty directory")


class BundleFiles(Mapping[str, bytes]):
    """The verified files of a bundle: read on access, or mapped in place via ``path``.

    Every checksum is verified (streaming, so a large file is never held twice) before the
    mapping is handed out. Large arrays and indexes can then be memory-mapped from ``path``
    instead of read, which lets every worker process on a node share one copy through the page
    cache. A file is re-verified when its bytes are read; a mapped file is trusted from the
    up-front check (bundles in a registry are immutable: written once, renamed into place).
    """

    def __init__(self, folder: Path, checksums: dict[str, str]) -> None:
        self.folder = folder
        self._checksums = checksums

    def __getitem__(self, name: str) -> bytes:
        if name not in self._checksums:
            raise KeyError(name)
        data = (self.folder / name).read_bytes()
        if sha256_hex(data) != self._checksums[name]:
            raise BundleError(
                f"{self.folder}: checksum mismatch for {name}: the bundle was modified"
            )
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self._checksums)

    def __len__(self) -> int:
        return len(self._checksums)

    @property
    def checksums(self) -> dict[str, str]:
        return dict(self._checksums)

    def path(self, name: str) -> Path:
        if name not in self._checksums:
            raise KeyError(name)
        return self.folder / name


def read_bundle(path: str | Path, signing_key: bytes | None = None
                ) -> tuple[dict[str, Any], BundleFiles]:
    """Return the manifest and the verified files it lists (see ``BundleFiles``).

    With ``signing_key``, an unsigned bundle or one whose signature does not match is refused.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such directory (a bundle is the directory that "
                          "Detector.save or `nearwatch train --out` wrote)")
    if not manifest_path.is_file():
        raise BundleError(f"{folder} is not a nearwatch bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise BundleError(
            f"{folder}: unsupported bundle format version {found!r} (expected {FORMAT_VERSION})"
        )
    if manifest.get(MANIFEST_DIGEST) != _manifest_digest(manifest):
        raise BundleError(f"{manifest_path}: checksum mismatch for {MANIFEST}: it was modified")
    if signing_key is not None:
        signature = manifest.get(SIGNATURE)
        if not isinstance(signature, str):
            raise BundleError(f"{folder} is not signed, and this service requires signed "
                              "bundles (a signing key is configured)")
        if not hmac.compare_digest(signature, sign_digest(manifest[MANIFEST_DIGEST],
                                                          signing_key)):
            raise BundleError(f"{folder}: the signature does not match: the bundle was "
                              "tampered with, or signed with another key")
    checksums = manifest.get("files")
    if not isinstance(checksums, dict):
        raise BundleError(f"{manifest_path} has no file checksums")
    for name, expected in checksums.items():
        if Path(name).name != name:
            raise BundleError(f"{manifest_path} names a file outside the bundle: {name!r}")
        file_path = folder / name
        if not file_path.is_file():
            raise BundleError(f"{folder}: file {name} listed in the manifest is missing")
        if _file_sha256(file_path) != expected:
            raise BundleError(
                f"{folder}: checksum mismatch for {name}: the bundle was modified or truncated"
            )
    return manifest, BundleFiles(folder, dict(checksums))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sign_digest(digest: str, key: bytes) -> str:
    """HMAC-SHA256 of the manifest digest (which covers every file's checksum)."""
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    content = {key: value for key, value in manifest.items()
               if key not in (MANIFEST_DIGEST, SIGNATURE)}
    return sha256_hex(json.dumps(content, sort_keys=True).encode())


def array_to_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def fingerprint(features: np.ndarray) -> str:
    """A short content hash of the training matrix, recorded in the manifest."""
    contiguous = np.ascontiguousarray(features)
    digest = hashlib.sha256(contiguous.tobytes())
    digest.update(str(contiguous.shape).encode())
    return digest.hexdigest()[:16]
