"""The embedder contract, and the identity embedder that needs no torch.

Everything in the Detector outside ``embedding/`` talks to an ``Embedder``: rows of features in,
float32 vectors out, plus its JSON state and named weight tensors for the bundle. The identity
embedder (plain kNN on the scaled features) has no weights, so a Detector with
``encoder="identity"`` fits, saves, loads and scores where torch is not installed.

>>> IdentityEmbedder().embed(np.array([[1, 2]])).dtype
dtype('float32')
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

STATE_VERSION = 1


class Embedder(Protocol):
    """Feature rows → vectors whose Euclidean distance is the anomaly metric."""

    def embed(self, features: np.ndarray) -> np.ndarray: ...
    def to_state(self) -> dict[str, Any]: ...
    def tensors(self) -> dict[str, Any]: ...  # name → array; empty without weights
    def features_from_embedding(self, vectors: np.ndarray) -> np.ndarray | None: ...


class IdentityEmbedder:
    """``embed(x) = x`` as float32: plain kNN on the schema's scaled features."""

    def embed(self, features: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(features, dtype=np.float32)

    def to_state(self) -> dict[str, Any]:
        return {"kind": "identity", "version": STATE_VERSION}

    def tensors(self) -> dict[str, Any]:
        return {}

    def features_from_embedding(self, vectors: np.ndarray) -> np.ndarray | None:
        """The feature rows whose embedding is ``vectors`` (explanations read them back)."""
        return np.asarray(vectors, dtype=np.float32)
