"""Save and load a fitted ``Detector`` as a verified bundle (all fitted state together)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..calibration import ConformalCalibrator
from ..errors import BundleError, SchemaMismatchError
from ..features.schema import FeatureEncoder
from ..references import ReferenceSet
from .bundle import (
    array_from_bytes,
    array_to_bytes,
    fingerprint,
    read_bundle,
    tensors_from_bytes,
    tensors_to_bytes,
    write_bundle,
)

if TYPE_CHECKING:
    from ..detector import Detector

ENCODER_FILE = "encoder.pt"
INDEX_FILE = "index.faiss"  # part 0 (the calibrated index); part i > 0: index_{i}.faiss
REFERENCE_COUNTS_FILE = "reference_counts.npy"
CALIBRATION_FILE = "calibration.npy"
REFERENCE_FEATURES_FILE = "reference_features.npy"
REFERENCE_IDS_FILE = "reference_ids.json"
FITTED_ATTRIBUTES = (
    "n_reference_", "n_calibration_", "n_features_", "threshold_", "fpr_bound_",
    "model_version_", "schema_version_", "training_mode_", "n_unique_reference_",
    "duplicate_factor_", "calibration_index_",
)


def index_file(part: int) -> str:
    return INDEX_FILE if part == 0 else f"index_{part}.faiss"


def save_detector(detector: Detector, path: Path) -> None:
    manifest = {
        "config": detector.get_params(),
        "schema": detector.feature_encoder_.to_state(),
        "schema_version": detector.schema_version_,
        "embedder": detector.embedder_.to_state(),
        "references": detector.reference_index_.to_state(),
        "calibration": detector.calibrator_.to_state(),
        "fitted": {name: getattr(detector, name) for name in FITTED_ATTRIBUTES},
        "data_fingerprint": fingerprint(detector.reference_features_),
    }
    files = {
        ENCODER_FILE: tensors_to_bytes(detector.embedder_.tensors()),
        REFERENCE_COUNTS_FILE: array_to_bytes(detector.reference_index_.counts_),
        CALIBRATION_FILE: array_to_bytes(detector.calibrator_.calibration_scores_),
        REFERENCE_FEATURES_FILE: array_to_bytes(detector.reference_features_),
        REFERENCE_IDS_FILE: json.dumps(detector.reference_ids_).encode(),
    }
    for part, index in enumerate(detector.reference_index_.parts_):
        files[index_file(part)] = index.to_bytes()
    write_bundle(path, manifest, files)


def load_detector(cls: type[Detector], path: Path) -> Detector:
    manifest, files = read_bundle(path)
    missing = {ENCODER_FILE, INDEX_FILE, CALIBRATION_FILE, REFERENCE_FEATURES_FILE,
               REFERENCE_IDS_FILE, REFERENCE_COUNTS_FILE} - set(files)
    if missing:
        raise BundleError(f"{path}: bundle lacks {', '.join(sorted(missing))}")
    try:
        detector = _restore(cls, manifest, files)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SchemaMismatchError | BundleError):
            raise
        raise BundleError(f"{path}: bundle contents are inconsistent: {exc}") from exc
    return detector


def _restore(cls: type[Detector], manifest: dict[str, Any], files: dict[str, bytes]) -> Detector:
    from ..embedding.encoder import build_embedder

    detector = cls(**_constructor_params(manifest["config"]))
    encoder = FeatureEncoder.from_state(manifest["schema"])
    if encoder.version_ != manifest["schema_version"]:
        raise SchemaMismatchError(
            f"bundle schema version {manifest['schema_version']} does not match its schema "
            f"(which hashes to {encoder.version_})"
        )
    detector.feature_encoder_ = encoder
    tensors = tensors_from_bytes(files[ENCODER_FILE])
    detector.embedder_ = build_embedder(manifest["embedder"], tensors)
    references = manifest["references"]
    n_parts = len(references["parts"])
    if any(index_file(part) not in files for part in range(n_parts)):
        raise BundleError(f"bundle lacks one of the {n_parts} index files")
    detector.reference_index_ = ReferenceSet.from_state(
        references, [files[index_file(part)] for part in range(n_parts)],
        array_from_bytes(files[REFERENCE_COUNTS_FILE]),
    )
    detector.calibrator_ = ConformalCalibrator.from_state(
        manifest["calibration"], array_from_bytes(files[CALIBRATION_FILE])
    )
    detector.reference_features_ = array_from_bytes(files[REFERENCE_FEATURES_FILE])
    detector.reference_ids_ = json.loads(files[REFERENCE_IDS_FILE])
    for name, value in manifest["fitted"].items():
        setattr(detector, name, value)
    references = detector.reference_index_
    if (len(detector.reference_ids_) != references.n_unique_
            or len(detector.reference_features_) != references.n_unique_
            or detector.n_reference_ != references.n_records_):
        raise BundleError("reference ids, features and counts do not match the index")
    return detector


def _constructor_params(config: dict[str, Any]) -> dict[str, Any]:
    params = dict(config)
    training = params.get("training")
    if isinstance(training, dict):
        from ..embedding.training import TrainingConfig

        params["training"] = TrainingConfig(**training)
    return params
