"""Bundles: save → load gives identical scores; any flipped byte or truncation is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nearwatch.detector import BundleError, Detector, SchemaMismatchError
from nearwatch.detector.synthetic import generate_records


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, Path, list[dict]]:
    train = generate_records(900, 0.0, seed=3)
    test = generate_records(200, 0.05, seed=4)
    detector = Detector(encoder="identity", label_fields=("is_anomaly",)).fit(train)
    path = tmp_path_factory.mktemp("bundle") / "model"
    detector.save(path)
    return detector, path, test


def test_round_trip_gives_identical_scores(saved: tuple) -> None:
    detector, path, test = saved
    loaded = Detector.load(path)
    np.testing.assert_array_equal(loaded.score(test), detector.score(test))
    np.testing.assert_array_equal(loaded.p_value(test), detector.p_value(test))
    assert loaded.threshold_ == detector.threshold_
    assert loaded.fpr_bound_ == detector.fpr_bound_
    assert loaded.schema_version_ == detector.schema_version_
    assert loaded.get_params() == detector.get_params()
    assert loaded.score_records(test[:5]) == detector.score_records(test[:5])


def test_manifest_describes_the_bundle(saved: tuple) -> None:
    _, path, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("format_version", "nearwatch_version", "created_at", "config", "schema",
                "files", "data_fingerprint"):
        assert key in manifest
    assert set(manifest["files"]) == {p.name for p in path.iterdir()} - {"manifest.json"}
    assert all(len(digest) == 64 for digest in manifest["files"].values())


@pytest.mark.parametrize("victim", ["encoder.pt", "index.faiss", "calibration.npy",
                                    "reference_features.npy", "reference_ids.json"])
def test_flipped_byte_in_any_file_is_refused(saved: tuple, tmp_path: Path, victim: str) -> None:
    _, path, _ = saved
    copy = tmp_path / "model"
    shutil.copytree(path, copy)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch for {victim}"):
        Detector.load(copy)


def test_truncated_or_missing_file_is_refused(saved: tuple, tmp_path: Path) -> None:
    _, path, _ = saved
    copy = tmp_path / "model"
    shutil.copytree(path, copy)
    index_bytes = (copy / "index.faiss").read_bytes()
    (copy / "index.faiss").write_bytes(index_bytes[: len(index_bytes) // 2])
    with pytest.raises(BundleError, match="index.faiss"):
        Detector.load(copy)
    (copy / "index.faiss").unlink()
    with pytest.raises(BundleError, match="missing"):
        Detector.load(copy)


def test_tampered_manifest_is_refused(saved: tuple, tmp_path: Path) -> None:
    _, path, _ = saved
    copy = tmp_path / "model"
    shutil.copytree(path, copy)
    manifest_path = copy / "manifest.json"
    manifest_path.write_text(manifest_path.read_text()[:-40])
    with pytest.raises(BundleError, match="corrupt"):
        Detector.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(path, copy)
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["k"] = 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="checksum mismatch for manifest.json"):
        Detector.load(copy)


def test_schema_version_mismatch_is_refused(saved: tuple, tmp_path: Path) -> None:
    from nearwatch.detector.store.bundle import read_bundle, write_bundle

    _, path, _ = saved
    manifest, files = read_bundle(path)
    manifest["schema_version"] = "ffffffffffffffff"
    write_bundle(tmp_path / "model", manifest, files)
    with pytest.raises(SchemaMismatchError, match="schema version"):
        Detector.load(tmp_path / "model")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Detector.load(tmp_path)
