"""Rebuild an embedder from its saved state; imports torch only for learned encoders.

>>> build_embedder({"kind": "identity", "version": 1}, {}).to_state()["kind"]
'identity'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .frozen import MLP_STATE_VERSIONS, FrozenMLPEmbedder
from .identity import STATE_VERSION, Embedder, IdentityEmbedder


def build_embedder(state: dict[str, Any], tensors: dict[str, Any]) -> Embedder:
    """Rebuild an embedder from ``to_state()`` and ``tensors()`` (e.g. read from a bundle).

    Raises ``ValueError`` for an unknown kind or version, or tensors that do not fit.
    """
    if not isinstance(state, dict):
        raise ValueError(f"embedder state must be an object, got {type(state).__name__}")
    kind = state.get("kind")
    if kind not in ("identity", "metric_mlp"):
        raise ValueError(f"unknown embedder kind {kind!r}")
    known = MLP_STATE_VERSIONS if kind == "metric_mlp" else (STATE_VERSION,)
    if state.get("version") not in known:
        raise ValueError(f"unsupported embedder state version {state.get('version')!r}")
    if kind == "identity":
        if tensors:
            raise ValueError("the identity embedder has no weights, but tensors were given")
        return IdentityEmbedder()
    # numpy inference: loading and serving a learned encoder needs no torch
    arrays = {name: np.asarray(_as_numpy(value)) for name, value in tensors.items()}
    return FrozenMLPEmbedder(state, arrays)


def _as_numpy(value: Any) -> Any:
    """torch tensors (older bundles' encoder.pt) to numpy; arrays pass through."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value
