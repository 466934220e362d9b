"""Bundles that were tampered with, not merely corrupted (issue 11, items 7 and 8).

A checksum catches a flipped byte; anyone who edits a bundle can recompute checksums. So every
loaded value is checked against the others, the model version is recomputed from content, and
a service with a signing key refuses bundles without a matching HMAC signature.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nearwatch.detector import BundleError, Detector
from nearwatch.detector.store.bundle import read_bundle, write_bundle
from nearwatch.detector.store.registry import ModelRegistry
from nearwatch.worker.runtime import ModelHolder

KEY = b"correct horse battery staple"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = np.random.default_rng(0).normal(size=(900, 4))
    path = tmp_path_factory.mktemp("bundle") / "model"
    Detector(encoder="identity", alpha=0.05, delta=0.1).fit(rows).save(path)
    return path


def _rewritten(bundle: Path, tmp_path: Path, edit: Any, files_edit: Any = None) -> Path:
    """A copy whose manifest (and files) were edited, with every checksum recomputed."""
    manifest, files = read_bundle(bundle)
    contents = dict(files.items())
    edit(manifest)
    if files_edit is not None:
        files_edit(contents)
    target = tmp_path / "tampered"
    write_bundle(target, manifest, contents)
    return target


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["fitted"].update(threshold_=1e9), "do not match the calibration state"),
    (lambda m: m["config"].update(n_neighbors=0), "n_neighbors must be a positive integer"),
    (lambda m: m["fitted"].update(embedder_=None), "fitted state names"),
    (lambda m: m["fitted"].update(model_version_="0123456789ab"), "does not match the bundle"),
    (lambda m: m["fitted"].update(n_calibration_=5), "contradict the bundle's components"),
    (lambda m: m["fitted"].update(certified_="yes"), "fitted certified_ is 'yes'"),
    (lambda m: m["config"].update(alpha=0.5), "does not match the bundle's content"),
])
def test_edited_manifest_with_fresh_checksums_is_refused(bundle: Path, tmp_path: Path,
                                                         edit: Any, message: str) -> None:
    tampered = _rewritten(bundle, tmp_path, edit)
    with pytest.raises(BundleError, match=message):
        Detector.load(tampered)
    with pytest.raises(BundleError, match=message):
        ModelRegistry(tmp_path / "registry").add(tampered, promote=True)


def test_model_version_is_recomputed_from_content(bundle: Path, tmp_path: Path) -> None:
    def swap_calibration(files: dict[str, bytes]) -> None:
        scores = np.load(io.BytesIO(files["calibration.npy"]))
        buffer = io.BytesIO()
        np.save(buffer, scores * 10)  # every threshold moves: a different model
        files["calibration.npy"] = buffer.getvalue()

    def keep(manifest: dict[str, Any]) -> None:  # every fact made consistent but the version
        manifest["calibration"]["threshold"] *= 10
        manifest["fitted"]["threshold_"] *= 10

    tampered = _rewritten(bundle, tmp_path, keep, swap_calibration)
    with pytest.raises(BundleError, match="model_version_ .* does not match"):
        Detector.load(tampered)


def test_signed_bundles_only_when_a_key_is_configured(bundle: Path, tmp_path: Path) -> None:
    signed = tmp_path / "signed"
    manifest, files = read_bundle(bundle)
    write_bundle(signed, manifest, files, signing_key=KEY)
    registry = ModelRegistry(tmp_path / "registry", signing_key=KEY)
    with pytest.raises(BundleError, match="is not signed, and this service requires signed"):
        registry.add(bundle)
    other = tmp_path / "other-key"
    write_bundle(other, manifest, files, signing_key=b"another key")
    with pytest.raises(BundleError, match="signature does not match"):
        registry.add(other)
    version = registry.add(signed, promote=True)
    assert registry.load_current()[0] == version
    # an edited, re-checksummed signed bundle: the signature no longer matches
    forged = _rewritten(signed, tmp_path, lambda m: m["fitted"].update(n_reference_=1))
    with pytest.raises(BundleError, match="is not signed"):
        registry.add(forged)  # write_bundle without the key drops the signature
    assert Detector.load(signed).n_reference_ == 900  # no key configured: checksums only


class _Counting:
    refused = 0
    loaded: list[str] = []

    def model_refused(self) -> None:
        self.refused += 1

    def model_loaded(self, version: str, detector: Detector) -> None:
        self.loaded.append(version)


def test_running_worker_refuses_unsigned_or_unreadable_bundles_and_keeps_serving(
        bundle: Path, tmp_path: Path) -> None:
    signed = tmp_path / "signed"
    manifest, files = read_bundle(bundle)
    write_bundle(signed, manifest, files, signing_key=KEY)
    registry = ModelRegistry(tmp_path / "registry", signing_key=KEY)
    first = registry.add(signed, promote=True)
    metrics = _Counting()
    holder = ModelHolder(registry, check_interval=0.0, metrics=metrics)  # type: ignore[arg-type]
    assert holder.load_initial() and holder.current()[0] == first
    # someone copies an unsigned bundle into the registry and moves the pointer by hand
    unsigned = registry.path(first).parent / "v9999"
    shutil.copytree(bundle, unsigned)
    (registry.root / "CURRENT").write_text("v9999\n")
    assert holder.current()[0] == first and metrics.refused == 1
    # a signed bundle whose weights file is garbage: BundleError, counted, not a traceback
    garbage = tmp_path / "garbage"
    write_bundle(garbage, manifest, {**files, "calibration.npy": b"not numpy"},
                 signing_key=KEY)
    shutil.rmtree(unsigned)
    shutil.copytree(garbage, unsigned)
    holder._refused = None  # the pointer names the same version again: look again
    assert holder.current()[0] == first and metrics.refused == 2


def test_edited_local_density_radii_are_refused(bundle: Path, tmp_path: Path) -> None:
    """The radii decide every score (detector.density): halving them with fresh checksums
    changes the model, so its recorded version no longer matches."""
    def halve_radii(files: dict[str, bytes]) -> None:
        radii = np.load(io.BytesIO(files["reference_radii.npy"]))
        buffer = io.BytesIO()
        np.save(buffer, radii / 2)
        files["reference_radii.npy"] = buffer.getvalue()

    tampered = _rewritten(bundle, tmp_path, lambda manifest: None, halve_radii)
    with pytest.raises(BundleError, match="model_version_ .* does not match"):
        Detector.load(tampered)
