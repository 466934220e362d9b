"""The fitted attributes a ``Detector`` declares: names and types, checked on every load.

``Detector.to_state`` saves every public fitted attribute; one not declared here makes saving
fail (so a new attribute cannot be silently dropped) and a bundle naming one not declared here,
or giving a declared one the wrong type, is refused on load (so a manifest cannot set arbitrary
attributes). Values are also checked against the components they describe
(``detector.store.persistence``). The components themselves (schema, embedder, reference set,
calibrator, reference features and ids) travel as their own states and files.
"""

from __future__ import annotations

from typing import Any, get_type_hints

COMPONENTS = frozenset({"feature_encoder_", "embedder_", "reference_index_", "calibrator_",
                        "reference_features_", "reference_ids_"})
TRAINING_MODES = frozenset({"self_supervised", "supervised", "weakly_supervised"})


class FittedAttributes:
    """Scalar fitted state (JSON in the bundle manifest's ``"fitted"`` object)."""

    threshold_: float | None
    fpr_bound_: float | None
    certified_: bool
    n_reference_: int
    n_unique_reference_: int
    duplicate_factor_: float
    n_calibration_: int
    calibration_index_: str
    n_features_: int
    n_features_in_: int
    n_known_anomalies_: int | None
    schema_version_: str
    model_version_: str
    training_mode_: str


def declared_fitted(cls: type) -> dict[str, Any]:
    """Name → type of every declared scalar fitted attribute of ``cls``."""
    return {name: kind for name, kind in get_type_hints(cls).items()
            if name.endswith("_") and not name.startswith("_") and name not in COMPONENTS}
