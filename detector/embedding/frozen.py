"""A trained metric encoder frozen into numpy: inference without torch.

Serving needs only the forward pass of a small MLP (``z = (x − center) / scale``, then
``Linear → ReLU`` per hidden width, then ``Linear``, optionally L2-normalised), which numpy does
as fast as torch at these sizes. Freezing right after training means the Detector embeds its
references, its calibration records and live records with this one implementation, so a loaded
bundle reproduces the fitted detector's scores bit for bit, and a worker process never imports
torch (about 120 MB less private memory per process, and seconds less start-up).

>>> state = {"kind": "metric_mlp", "version": 2, "n_features": 2, "hidden": [],
...          "embedding_dim": 1, "normalize": False, "raw_weight": 1.0, "embedding_weight": 2.0}
>>> arrays = {"center": np.zeros(2), "scale": np.ones(2),
...           "net.0.weight": np.array([[1.0, 1.0]]), "net.0.bias": np.zeros(1)}
>>> FrozenMLPEmbedder(state, arrays).embed(np.array([[1.0, 2.0]])).tolist()
[[1.0, 2.0, 6.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

EMBED_BATCH = 8192  # rows per pass: bounded memory, still vectorised
NORMALIZE_EPS = 1e-12  # as torch.nn.functional.normalize
# 2: float64 products (below). A version-1 state (older bundles) keeps float32 products, the
# function its references and threshold were computed with; older code refuses version 2.
MLP_STATE_VERSION = 2
MLP_STATE_VERSIONS = (1, 2)


class FrozenMLPEmbedder:
    """``[raw_weight · z(x), embedding_weight · f(z(x))]`` from saved weights, numpy only."""

    def __init__(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if state.get("kind") != "metric_mlp" or state.get("version") not in MLP_STATE_VERSIONS:
            raise ValueError(f"not a metric embedder state: {state.get('kind')!r} version "
                             f"{state.get('version')!r}")
        self.state = dict(state)
        self.n_features = int(state["n_features"])
        self.hidden = [int(width) for width in state["hidden"]]
        self.embedding_dim = int(state["embedding_dim"])
        self.normalize = bool(state["normalize"])
        self.raw_weight = float(state["raw_weight"])
        self.embedding_weight = float(state["embedding_weight"])
        widths = [self.n_features, *self.hidden, self.embedding_dim]
        expected: dict[str, tuple[int, ...]] = {
            "center": (self.n_features,), "scale": (self.n_features,)}
        for layer, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
            expected[f"net.{2 * layer}.weight"] = (fan_out, fan_in)
            expected[f"net.{2 * layer}.bias"] = (fan_out,)
        found = {name: tuple(np.shape(value)) for name, value in arrays.items()}
        if found != expected:
            raise ValueError(f"encoder tensors do not match the architecture: expected "
                             f"{expected}, got {found}")
        self.arrays = {name: np.ascontiguousarray(value, dtype=np.float32)
                       for name, value in arrays.items()}
        if not all(np.isfinite(value).all() for value in self.arrays.values()):
            raise ValueError("encoder tensors contain NaN or infinite values")
        # float64 products, rounded to float32 at the end: BLAS sums a row's products in an
        # order that depends on the batch's size and the row's place in it, so float32
        # products of one record differed by ~1e-7 between batches. A duplicate of a reference
        # then scored 1e-7 live against exactly 0 at calibration, and on repetitive data,
        # where the certified threshold is 0, half the normal records were flagged.
        self._products = np.dtype(np.float64 if state["version"] >= 2 else np.float32)
        self._layers: list[tuple[np.ndarray, np.ndarray]] = [
            (self.arrays[f"net.{2 * i}.weight"].T.astype(self._products),
             self.arrays[f"net.{2 * i}.bias"].astype(self._products))
            for i in range(len(widths) - 1)]

    @property
    def dim(self) -> int:
        return self.n_features + self.embedding_dim

    def embed(self, features: np.ndarray) -> np.ndarray:
        """float32 ``(n, n_features + embedding_dim)``, batch-wise."""
        rows = np.asarray(features, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got "
                             f"{rows.shape}")
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        center, scale = self.arrays["center"], self.arrays["scale"]
        for start in range(0, len(rows), EMBED_BATCH):
            standard = (rows[start : start + EMBED_BATCH] - center) / scale
            hidden: np.ndarray = standard.astype(self._products)
            for layer, (weight, bias) in enumerate(self._layers):
                hidden = hidden @ weight + bias
                if layer < len(self._layers) - 1:
                    np.maximum(hidden, 0.0, out=hidden)
            if self.normalize:
                norms = np.linalg.norm(hidden, axis=1, keepdims=True)
                hidden = hidden / np.maximum(norms, NORMALIZE_EPS)
            stop = start + len(standard)
            out[start:stop, : self.n_features] = self.raw_weight * standard
            out[start:stop, self.n_features :] = (self.embedding_weight * hidden).astype(np.float32)
        return out

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """``z(x)``: the features as the embedding's raw part sees them, before its weight."""
        return (np.asarray(features, dtype=np.float32) - self.arrays["center"]) \
            / self.arrays["scale"]

    def features_from_embedding(self, vectors: np.ndarray) -> np.ndarray | None:
        """Invert the raw part ``raw_weight · (x − center) / scale``; None if it is weighted 0."""
        if self.raw_weight == 0.0:
            return None
        raw = np.asarray(vectors, dtype=np.float32)[..., : self.n_features]
        return raw / self.raw_weight * self.arrays["scale"] + self.arrays["center"]

    def to_state(self) -> dict[str, Any]:
        return dict(self.state)

    def tensors(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.arrays.items()}
