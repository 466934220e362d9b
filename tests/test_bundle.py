"""Bundles: save → load gives identical scores; any flipped byte or truncation is refused.

Covered for the identity encoder and for the default learned (metric MLP) encoder in each of
its training modes (self-supervised, supervised with class labels, known anomalies), on
records and on arrays.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from nearwatch.detector import BundleError, Detector, SchemaMismatchError
from nearwatch.detector.embedding.training import TrainingConfig
from nearwatch.detector.synthetic import generate_records

# A small training budget: the bundle logic is what is tested, not the encoder's quality.
SMALL_TRAINING = TrainingConfig(max_steps=30, hidden=(16,), embedding_dim=4, batch_size=64,
                                eval_every=10)
LEARNED_MODES = ["self_supervised", "supervised", "known_anomalies", "array"]


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


def test_flipped_byte_in_any_file_is_refused(saved: tuple, tmp_path: Path) -> None:
    _, path, _ = saved
    victims = sorted(json.loads((path / "manifest.json").read_text())["files"])
    # every file the manifest lists (the learned encoder's encoder.npz: see below)
    assert {"index.faiss", "calibration.npy", "reference_counts.npy",
            "reference_ids.json"} <= set(victims)  # features: read back from the index
    for victim in victims:
        copy = tmp_path / victim / "model"
        shutil.copytree(path, copy)
        data = bytearray((copy / victim).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / victim).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=f"checksum mismatch for {re.escape(victim)}"):
            Detector.load(copy)


def test_truncated_or_missing_file_is_refused(saved: tuple, tmp_path: Path) -> None:
    _, path, _ = saved
    copy = tmp_path / "model"
    shutil.copytree(path, copy)
    index_bytes = (copy / "index.faiss").read_bytes()
    (copy / "index.faiss").write_bytes(index_bytes[: len(index_bytes) // 2])
    with pytest.raises(BundleError, match=r"checksum mismatch for index\.faiss"):
        Detector.load(copy)
    (copy / "index.faiss").unlink()
    with pytest.raises(BundleError, match=r"file index\.faiss listed in the manifest is missing"):
        Detector.load(copy)


def test_tampered_manifest_is_refused(saved: tuple, tmp_path: Path) -> None:
    _, path, _ = saved
    copy = tmp_path / "model"
    shutil.copytree(path, copy)
    manifest_path = copy / "manifest.json"
    manifest_path.write_text(manifest_path.read_text()[:-40])
    with pytest.raises(BundleError, match=r"manifest\.json is corrupt"):
        Detector.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(path, copy)
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["alpha"] = 0.5
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"checksum mismatch for manifest\.json"):
        Detector.load(copy)


def test_schema_version_mismatch_is_refused(saved: tuple, tmp_path: Path) -> None:
    from nearwatch.detector.store.bundle import read_bundle, write_bundle

    _, path, _ = saved
    manifest, files = read_bundle(path)
    manifest["schema_version"] = "ffffffffffffffff"
    write_bundle(tmp_path / "model", manifest, files)
    with pytest.raises(SchemaMismatchError,
                       match="bundle schema version ffffffffffffffff does not match its schema"):
        Detector.load(tmp_path / "model")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"not a nearwatch bundle: manifest\.json is missing"):
        Detector.load(tmp_path)
    with pytest.raises(BundleError, match=r"missing: no such directory \(a bundle is the"):
        Detector.load(tmp_path / "missing")


# ---------------------------------------------------------------- learned (default) encoder
def _fit_learned(mode: str) -> tuple[Detector, object]:
    """A detector with the default encoder (``encoder="auto"``: metric-learned) and its probes."""
    detector = Detector(alpha=0.05, delta=0.1, training=SMALL_TRAINING,
                        label_fields=("is_anomaly",))
    if mode == "array":
        rng = np.random.default_rng(7)
        mixing = rng.normal(size=(5, 5))  # correlated columns
        train = rng.normal(size=(800, 5)) @ mixing
        test = np.vstack([rng.normal(size=(150, 5)) @ mixing, rng.normal(8.0, 1.0, (10, 5))])
        return detector.fit(train), test
    train = generate_records(900, 0.0, seed=3)
    test = generate_records(200, 0.05, seed=4)
    if mode == "supervised":
        detector.fit(train, labels=[record["service"] for record in train])
    elif mode == "known_anomalies":
        known = [r for r in generate_records(300, 0.1, seed=6) if r["is_anomaly"]][:12]
        detector.fit(train, anomalies=known)
    else:
        detector.fit(train)
    return detector, test


@pytest.fixture(scope="module", params=LEARNED_MODES)
def learned(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, Path, object, str]:
    detector, test = _fit_learned(request.param)
    path = tmp_path_factory.mktemp(f"learned-{request.param}") / "model"
    detector.save(path)
    return detector, path, test, request.param


def test_learned_encoder_was_trained_in_the_requested_mode(learned: tuple) -> None:
    detector, path, _, mode = learned
    state = detector.embedder_.to_state()
    assert state["kind"] == "metric_mlp"  # the default encoder is the learned one
    expected_mode = "supervised" if mode == "supervised" else "self_supervised"
    assert detector.training_mode_ == expected_mode
    # known anomalies train an unnormalised embedding (hard negatives pushed beyond a margin)
    assert state["normalize"] is (mode != "known_anomalies")
    manifest = json.loads((path / "manifest.json").read_text())
    assert "encoder.npz" in manifest["files"] and (path / "encoder.npz").stat().st_size > 1000


def test_learned_encoder_round_trip_gives_identical_scores(learned: tuple) -> None:
    detector, path, test, mode = learned
    loaded = Detector.load(path)
    assert loaded.embedder_.to_state() == detector.embedder_.to_state()
    saved_tensors, loaded_tensors = detector.embedder_.tensors(), loaded.embedder_.tensors()
    assert sorted(loaded_tensors) == sorted(saved_tensors)
    for name, tensor in saved_tensors.items():
        np.testing.assert_array_equal(loaded_tensors[name], tensor)
    scores = detector.score(test)
    np.testing.assert_array_equal(loaded.score(test), scores)
    np.testing.assert_array_equal(loaded.p_value(test), detector.p_value(test))
    np.testing.assert_array_equal(loaded.predict(test), detector.predict(test))
    assert detector.predict(test).any()  # the probes include records that are flagged
    assert loaded.threshold_ == detector.threshold_
    assert loaded.fpr_bound_ == detector.fpr_bound_
    assert loaded.model_version_ == detector.model_version_
    assert loaded.training_mode_ == detector.training_mode_
    assert loaded.get_params() == detector.get_params()
    if mode != "array":
        assert loaded.score_records(test[:5]) == detector.score_records(test[:5])
    # a second save of the loaded model is the same model
    resaved = path.parent / "resaved"
    loaded.save(resaved)
    np.testing.assert_array_equal(Detector.load(resaved).score(test), scores)


def test_flipped_byte_in_learned_encoder_is_refused(learned: tuple, tmp_path: Path) -> None:
    _, path, _, _ = learned
    copy = tmp_path / "model"
    shutil.copytree(path, copy)
    data = bytearray((copy / "encoder.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "encoder.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for encoder\.npz"):
        Detector.load(copy)
    (copy / "encoder.npz").unlink()
    with pytest.raises(BundleError, match=r"encoder\.npz"):
        Detector.load(copy)


def test_resigned_bundle_with_bad_or_no_encoder_weights_is_refused(learned: tuple,
                                                                    tmp_path: Path) -> None:
    """Checksums recomputed over bad content (a buggy writer): still a BundleError, not torch's."""
    from nearwatch.detector.store.bundle import read_bundle, write_bundle

    _, path, _, _ = learned
    manifest, files = read_bundle(path)
    truncated = {**files, "encoder.npz": files["encoder.npz"][: len(files["encoder.npz"]) // 2]}
    write_bundle(tmp_path / "truncated", manifest, truncated)
    with pytest.raises(BundleError, match="encoder weights could not be read"):
        Detector.load(tmp_path / "truncated")
    without = {name: data for name, data in files.items() if name != "encoder.npz"}
    write_bundle(tmp_path / "without", manifest, without)
    with pytest.raises(BundleError, match=r"bundle lacks encoder\.npz"):
        Detector.load(tmp_path / "without")


def test_saving_never_destroys_a_directory_that_is_no_bundle(saved: tuple, tmp_path: Path
                                                              ) -> None:
    """``save`` removed whatever directory it was given (``train --out .`` emptied the
    working directory); now only a bundle or an empty directory is replaced."""
    detector, _, test = saved
    folder = tmp_path / "work"
    (folder / "code").mkdir(parents=True)
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(BundleError, match="not a nearwatch bundle"):
        detector.save(folder)
    assert (folder / "notes.txt").read_text() == "precious" and (folder / "code").is_dir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(BundleError, match="not a directory"):
        detector.save(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    detector.save(empty)  # an empty directory is used
    detector.save(empty)  # and a bundle is replaced whole
    assert sorted(p.name for p in empty.iterdir()) == sorted(
        p.name for p in saved[1].iterdir())
    np.testing.assert_array_equal(Detector.load(empty).score(test), detector.score(test))
