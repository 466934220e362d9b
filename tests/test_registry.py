"""Model registry: verified copies, version numbering, atomic pointer, refusal of bad bundles."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from nearwatch.detector import Detector
from nearwatch.detector.errors import BundleError
from nearwatch.detector.store.registry import POINTER, ModelRegistry


def _tamper(bundle: Path) -> None:
    target = bundle / "calibration.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))


def test_add_copies_verifies_and_promotes(tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    registry = ModelRegistry(tmp_path / "models")
    assert registry.versions() == [] and registry.current_version() is None
    first = registry.add(bundles[0])
    assert first == "v0001" and registry.current_version() is None
    second = registry.add(bundles[1], promote=True)
    assert second == "v0002" and registry.current_version() == "v0002"
    assert (tmp_path / "models" / POINTER).read_text() == "v0002\n"
    version, detector = registry.load_current()
    assert version == "v0002" and detector.n_reference_ == 1500  # every training record
    listed = registry.list()
    assert [(m.version, m.current) for m in listed] == [("v0001", False), ("v0002", True)]
    assert listed[0].model_version and listed[0].model_version != listed[1].model_version
    # the current model is the second bundle's, not the first's
    assert detector.model_version_ == listed[1].model_version
    assert listed[1].model_version == Detector.load(bundles[1]).model_version_
    # the registry holds copies: the source bundle can go away
    manifest = json.loads((registry.path("v0001") / "manifest.json").read_text())
    assert manifest["files"]
    registry.promote("v0001")
    assert registry.current_version() == "v0001"
    # no staging leftovers (the history's lock file stays, empty, like any lock file)
    assert not [p for p in (tmp_path / "models").iterdir()
                if p.name.startswith(".") and p.name != ".history.lock"]


def test_tampered_bundle_is_refused(tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundles[0], bad)
    _tamper(bad)
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(BundleError, match=r"checksum mismatch for calibration\.npy"):
        registry.add(bad, promote=True)
    assert registry.versions() == [] and registry.current_version() is None
    with pytest.raises(BundleError, match="not a bundle directory"):
        registry.add(tmp_path / "missing")
    # a version tampered with *inside* the registry cannot be promoted or loaded
    version = registry.add(bundles[0], promote=True)
    _tamper(registry.path(version))
    with pytest.raises(BundleError, match=r"checksum mismatch for calibration\.npy"):
        registry.promote(version)
    with pytest.raises(BundleError, match=r"checksum mismatch for calibration\.npy"):
        registry.load_current()


def test_pointer_errors_are_clear(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(BundleError, match="has no current model: add one with"):
        registry.load_current()
    (tmp_path / POINTER).write_text("../../etc\n")
    with pytest.raises(BundleError, match=r"CURRENT: not a version name: '\.\./\.\./etc'"):
        registry.current_version()
    with pytest.raises(BundleError, match=r"not a version name: '1' \(expected e\.g\. 'v0001'\)"):
        registry.path("1")
    with pytest.raises(BundleError, match="no version v0042"):
        registry.path("v0042")


def test_concurrent_adds_get_distinct_versions(tmp_path: Path,
                                               bundles: tuple[Path, Path]) -> None:
    registry = ModelRegistry(tmp_path / "models")
    versions: list[str] = []
    threads = [threading.Thread(target=lambda: versions.append(registry.add(bundles[0])))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == ["v0001", "v0002", "v0003"] == registry.versions()
