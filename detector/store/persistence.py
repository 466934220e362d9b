"""A fitted ``Detector`` ↔ its state (manifest part + files) ↔ a verified bundle directory.

``Detector.to_state`` / ``Detector.from_state`` call ``detector_state`` / ``restore_detector``.
Nothing lists the scalar fitted attributes: every public attribute ending in ``_`` that is not
one of the components below goes into the manifest's ``"fitted"`` object, and one that JSON
cannot carry unchanged makes saving fail instead of being dropped. The components travel as
files of the bundle layout (format 3): ``encoder.npz`` (learned encoders only; an identity
embedder has no weights, so neither torch nor that file is needed), ``index.faiss`` (+
``index_1.faiss`` ...), ``reference_counts.npy``, ``calibration.npy``,
``reference_features.npy`` and ``reference_ids.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..calibrated import features_recoverable
from ..calibration import ConformalCalibrator
from ..embedding.builder import _as_numpy, build_embedder
from ..embedding.weights import arrays_from_bytes, arrays_to_bytes, tensors_from_bytes
from ..errors import BundleError, SchemaMismatchError
from ..features.schema import FeatureEncoder
from ..fitted import COMPONENTS, TRAINING_MODES, declared_fitted
from ..fitting import check_params
from ..index import ReferenceIndex
from ..references import ReferenceSet, compact_integers
from .bundle import (
    BundleFiles,
    array_from_bytes,
    array_to_bytes,
    fingerprint,
    read_bundle,
    sha256_hex,
    write_bundle,
)

if TYPE_CHECKING:
    from ..detector import Detector

ENCODER_FILE = "encoder.npz"  # numpy weights; bundles written before: encoder.pt (torch)
LEGACY_ENCODER_FILE = "encoder.pt"
INDEX_FILE = "index.faiss"  # part 0 (the calibrated index); part i > 0: index_{i}.faiss
REFERENCE_COUNTS_FILE = "reference_counts.npy"
REFERENCE_RADII_FILE = "reference_radii.npy"  # local density (detector.density), if fitted
CALIBRATION_FILE = "calibration.npy"
REFERENCE_FEATURES_FILE = "reference_features.npy"
REFERENCE_IDS_FILE = "reference_ids.json"  # any JSON ids; integer ids: reference_ids.npy
REFERENCE_INT_IDS_FILE = "reference_ids.npy"
REQUIRED_FILES = (INDEX_FILE, CALIBRATION_FILE, REFERENCE_COUNTS_FILE)
RENAMED_CONFIG = {"k": "n_neighbors", "seed": "random_state"}  # older bundles' config keys


def index_file(part: int) -> str:
    return INDEX_FILE if part == 0 else f"index_{part}.faiss"


def is_fitted_name(name: str) -> bool:
    """sklearn's convention: public fitted attributes end in ``_``."""
    return name.endswith("_") and not name.startswith("_")


def save_detector(detector: Detector, path: Path, signing_key: bytes | None = None) -> None:
    write_bundle(path, *detector.to_state(), signing_key=signing_key)


def load_detector(cls: type[Detector], path: Path, signing_key: bytes | None = None
                  ) -> Detector:
    manifest, files = read_bundle(path, signing_key=signing_key)
    try:
        return cls.from_state(manifest, files)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc


def detector_state(detector: Detector) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest part and the files of a fitted detector (see the module docstring)."""
    declared = declared_fitted(type(detector))
    fitted = {name: _json_value(name, value) for name, value in vars(detector).items()
              if is_fitted_name(name) and name not in COMPONENTS}
    undeclared = sorted(set(fitted) - set(declared))
    if undeclared:
        raise TypeError(f"fitted attributes {undeclared} are not declared in "
                        "detector.fitted.FittedAttributes: declare them to save them")
    embedder, references = detector.embedder_, detector.reference_index_
    manifest = {
        "config": detector._config(),
        "schema": detector.feature_encoder_.to_state(),
        "schema_version": detector.schema_version_,
        "embedder": embedder.to_state(),
        "references": references.to_state(),
        "calibration": detector.calibrator_.to_state(),
        "fitted": fitted,
        "data_fingerprint": fingerprint(references.counts_),
    }
    files = {
        REFERENCE_COUNTS_FILE: array_to_bytes(compact_integers(references.counts_)),
        CALIBRATION_FILE: array_to_bytes(detector.calibrator_.calibration_scores_),
    }
    if references.density_ is not None:
        files[REFERENCE_RADII_FILE] = array_to_bytes(references.density_.radii)
    if detector.reference_features_ is not None:  # else read back from the index vectors
        files[REFERENCE_FEATURES_FILE] = array_to_bytes(
            np.asarray(detector.reference_features_, dtype=np.float16))
    ids = detector.reference_ids_
    if isinstance(ids, np.ndarray):
        files[REFERENCE_INT_IDS_FILE] = array_to_bytes(ids)
    else:
        files[REFERENCE_IDS_FILE] = json.dumps(ids).encode()
    tensors = embedder.tensors()
    if tensors:  # the identity embedder has none: no encoder weights file
        files[ENCODER_FILE] = arrays_to_bytes(
            {name: np.asarray(_as_numpy(value)) for name, value in tensors.items()})
    for part, index in enumerate(references.parts_):
        files[index_file(part)] = index.to_bytes()
    return manifest, files


def _json_value(name: str, value: Any) -> Any:
    try:
        same = json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        same = False
    if not same or (value is not None and type(value) not in (bool, int, float, str, list, dict)):
        raise TypeError(
            f"fitted attribute {name} ({type(value).__name__}) cannot be saved as JSON "
            "unchanged: store a plain value, or add it to detector.fitted.COMPONENTS "
            "with its own file"
        )
    return value


def restore_detector(
    cls: type[Detector], manifest: dict[str, Any], files: Mapping[str, bytes]
) -> Detector:
    """Inverse of ``detector_state``; ``BundleError`` for missing or inconsistent contents."""
    missing = set(REQUIRED_FILES) - set(files)
    if missing:
        raise BundleError(f"bundle lacks {', '.join(sorted(missing))}")
    try:
        return _restore(cls, manifest, files)
    except (SchemaMismatchError, BundleError):
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"bundle contents are inconsistent: {exc}") from exc


def _restore(
    cls: type[Detector], manifest: dict[str, Any], files: Mapping[str, bytes]
) -> Detector:
    detector = cls(**_constructor_params(manifest["config"]))
    encoder = FeatureEncoder.from_state(manifest["schema"])
    if encoder.version_ != manifest["schema_version"]:
        raise SchemaMismatchError(
            f"bundle schema version {manifest['schema_version']} does not match its schema "
            f"(which hashes to {encoder.version_})"
        )
    detector.feature_encoder_ = encoder
    embedder_state = manifest["embedder"]
    tensors: dict[str, Any] = {}
    if embedder_state.get("kind") != "identity":  # older identity bundles: encoder.pt ignored
        if ENCODER_FILE in files:
            tensors = dict(arrays_from_bytes(files[ENCODER_FILE]))
        elif LEGACY_ENCODER_FILE in files:  # torch.load(weights_only=True), torch needed
            tensors = tensors_from_bytes(files[LEGACY_ENCODER_FILE])
        else:
            raise BundleError(f"bundle lacks {ENCODER_FILE}, which its learned encoder needs")
    detector.embedder_ = build_embedder(embedder_state, tensors)
    references = manifest["references"]
    n_parts = len(references["parts"])
    if any(index_file(part) not in files for part in range(n_parts)):
        raise BundleError(f"bundle lacks one of the {n_parts} index files")
    detector.reference_index_ = ReferenceSet.from_state(
        references, lambda part, params: _index_part(files, index_file(part), params),
        array_from_bytes(files[REFERENCE_COUNTS_FILE]),
        _mapped_array(files, REFERENCE_RADII_FILE) if REFERENCE_RADII_FILE in files else None,
    )
    detector.calibrator_ = ConformalCalibrator.from_state(
        manifest["calibration"], array_from_bytes(files[CALIBRATION_FILE])
    )
    detector.reference_features_ = (_mapped_array(files, REFERENCE_FEATURES_FILE)
                                    if REFERENCE_FEATURES_FILE in files else None)
    if REFERENCE_INT_IDS_FILE in files:
        detector.reference_ids_ = _mapped_array(files, REFERENCE_INT_IDS_FILE)
    elif REFERENCE_IDS_FILE in files:
        detector.reference_ids_ = json.loads(files[REFERENCE_IDS_FILE])
    else:
        raise BundleError(f"bundle lacks {REFERENCE_IDS_FILE} (or {REFERENCE_INT_IDS_FILE})")
    declared = declared_fitted(cls)
    fitted = manifest["fitted"]
    if not isinstance(fitted, dict) or set(fitted) != set(declared):
        found = sorted(fitted) if isinstance(fitted, dict) else fitted
        raise BundleError(f"the manifest's fitted state names {found}, expected exactly "
                          f"{sorted(declared)}")
    for name, value in fitted.items():
        kind = declared[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _members(kind)):
            raise BundleError(f"fitted {name} is {value!r}, not a {kind}")
        setattr(detector, name, value)
    _check_consistent(detector)
    recomputed = content_version(manifest, _checksums(files))
    if recomputed != detector.model_version_:
        raise BundleError(f"the manifest's model_version_ {detector.model_version_} does not "
                          f"match the bundle's content ({recomputed}): it was edited")
    detector._params_at_fit = detector._config()
    return detector


def model_version_of(detector: Detector) -> str:
    """``content_version`` of a fitted detector's state (what ``fit`` records)."""
    manifest, files = detector_state(detector)
    return content_version(manifest, {name: sha256_hex(data) for name, data in files.items()})


def content_version(manifest: dict[str, Any], checksums: Mapping[str, str]) -> str:
    """The model version: a hash of everything that decides scores and answers.

    Computed from the manifest's component states and the files' checksums, so it is the same
    when ``fit`` computes it and when a load recomputes it from a verified bundle.
    """
    decisive = {key: manifest[key] for key in ("config", "schema", "embedder", "references",
                                                "calibration")}
    digest = hashlib.sha256(json.dumps(decisive, sort_keys=True, allow_nan=False).encode())
    for name in sorted(checksums):
        digest.update(f"{name}:{checksums[name]};".encode())
    return digest.hexdigest()[:12]


def _checksums(files: Mapping[str, bytes]) -> dict[str, str]:
    if isinstance(files, BundleFiles):
        return files.checksums
    return {name: sha256_hex(data) for name, data in files.items()}


def _members(kind: Any) -> tuple[Any, ...]:
    return tuple(getattr(kind, "__args__", (kind,)))


def _index_part(files: Mapping[str, bytes], name: str, params: dict[str, Any]) -> ReferenceIndex:
    if isinstance(files, BundleFiles):  # a verified directory: map what faiss can
        return ReferenceIndex.from_file(files.path(name), params)
    return ReferenceIndex.from_bytes(files[name], params)


def _mapped_array(files: Mapping[str, bytes], name: str) -> np.ndarray:
    """Read-only memory map of a verified bundle's array (shared by every process)."""
    if isinstance(files, BundleFiles):
        array = np.load(files.path(name), mmap_mode="r", allow_pickle=False)
    else:
        array = array_from_bytes(files[name])
    if array.dtype.kind not in "iuf":
        raise BundleError(f"{name} holds {array.dtype} values, not numbers")
    return array


def _check_consistent(detector: Detector) -> None:
    references, calibrator = detector.reference_index_, detector.calibrator_
    check_params(detector.get_params())  # e.g. n_neighbors=0 would fail every record
    if detector.n_neighbors > references.n_records_:
        raise BundleError(f"n_neighbors={detector.n_neighbors} exceeds the "
                          f"{references.n_records_} reference records")
    facts = {
        "n_unique_reference_": (detector.n_unique_reference_, references.n_unique_),
        "n_calibration_": (detector.n_calibration_, calibrator.n_calibration_),
        "calibration_index_": (detector.calibration_index_, references.kind_),
        "n_features_": (detector.n_features_, detector.feature_encoder_.n_features_),
        "schema_version_": (detector.schema_version_, detector.feature_encoder_.version_),
    }
    wrong = {name: pair for name, pair in facts.items() if pair[0] != pair[1]}
    if not np.isclose(detector.duplicate_factor_,
                      references.n_records_ / references.n_unique_):
        wrong["duplicate_factor_"] = (detector.duplicate_factor_, None)
    if detector.training_mode_ not in TRAINING_MODES:
        wrong["training_mode_"] = (detector.training_mode_, None)
    if wrong:
        raise BundleError(f"fitted facts contradict the bundle's components: {wrong}")
    features = detector.reference_features_
    if (len(detector.reference_ids_) != references.n_unique_
            or (features is not None and len(features) != references.n_unique_)
            or (features is None
                and not features_recoverable(detector.embedder_, references))
            or detector.n_reference_ != references.n_records_):
        raise BundleError("reference ids, features and counts do not match the index")
    found = (detector.threshold_, detector.fpr_bound_, detector.certified_)
    expected = (calibrator.threshold_, calibrator.fpr_bound_, bool(calibrator.certified_))
    if found != expected:
        raise BundleError(
            f"fitted (threshold_, fpr_bound_, certified_) = {found} do not match the "
            f"calibration state {expected}"
        )


def _constructor_params(config: dict[str, Any]) -> dict[str, Any]:
    params = {RENAMED_CONFIG.get(name, name): value for name, value in config.items()}
    params.setdefault("density_power", 0.0)  # bundles from before local density scored plainly
    training = params.get("training")
    if isinstance(training, dict):
        from ..embedding.training import TrainingConfig

        # JSON has no tuples: give sequence fields back the tuple type the dataclass uses
        fields: dict[str, Any] = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in training.items()
        }
        params["training"] = TrainingConfig(**fields)
    if isinstance(params.get("label_fields"), list):
        params["label_fields"] = tuple(params["label_fields"])
    return params
