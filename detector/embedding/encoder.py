"""Embedders: feature rows → vectors whose Euclidean distance is the anomaly metric.

``MLPEncoder`` is the ``nn.Module`` (trained by ``detector.training``, never training itself).
``MetricEmbedder`` wraps it for the ``Detector``: its output concatenates the standardised
features with the learned embedding, ``[w_raw · z(x), w_emb · f(z(x))]``. The Euclidean
distance on that concatenation is ``sqrt(w_raw² ||z(x) − z(y)||² + w_emb² ||f(x) − f(y)||²)``,
a true metric on records (a pseudo-metric only if two different records share features
*and* embedding, i.e. are the same feature row). Keeping the raw part is what the benchmark
chose: kNN on standardised features is a strong detector on its own and the learned part adds
what the supervision (labels, pairs, known anomalies) teaches; see ``bench/results``.

Categorical fields arrive one-hot (or hashed) from the schema, so the first ``Linear`` layer
acting on those columns *is* a learned embedding table for each categorical field.

>>> import numpy as np, torch
>>> _ = torch.manual_seed(0)
>>> embedder = MetricEmbedder(MLPEncoder(3, hidden=(8,), embedding_dim=2), embedding_weight=0.5)
>>> embedder.embed(np.zeros((4, 3), dtype=np.float32)).shape
(4, 5)
>>> frozen = embedder.freeze()  # what a fitted Detector and every loaded bundle embed with
>>> bool(np.allclose(frozen.embed(np.ones((2, 3))), embedder.embed(np.ones((2, 3)))))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .builder import build_embedder
from .frozen import MLP_STATE_VERSION, FrozenMLPEmbedder
from .identity import STATE_VERSION, Embedder, IdentityEmbedder

__all__ = ["STATE_VERSION", "Embedder", "IdentityEmbedder", "MLPEncoder", "MetricEmbedder",
           "build_embedder"]
EMBED_BATCH = 8192  # rows per forward pass: bounded memory, still vectorised


class MLPEncoder(nn.Module):
    """``z = (x − center) / scale``, then ``Linear → ReLU`` per hidden width, then ``Linear``.

    ``normalize=True``: the embedding is L2-normalised (distances in [0, 2]), matching the
    cosine losses (NT-Xent, SupCon, multi-similarity) it is trained with. With known anomalies
    it is plain: the hard-negative loss pushes anomalies a fixed distance beyond a compact
    normal region, which a unit sphere cannot express (cosine losses normalise internally).
    ``center``/``scale`` are buffers, so they travel in the state dict.
    """

    center: torch.Tensor  # buffers: saved in the state dict, not trained
    scale: torch.Tensor

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int] = (128, 128),
        embedding_dim: int = 16,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.n_features = n_features
        self.hidden = tuple(int(h) for h in hidden)
        self.embedding_dim = embedding_dim
        self.register_buffer("center", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, embedding_dim))
        self.net = nn.Sequential(*layers)

    def set_standardisation(
        self, features: torch.Tensor, columns: torch.Tensor | None = None
    ) -> None:
        """Z-score with these rows' mean and std (std 0 → 1): every column on one scale.

        ``columns`` (bool mask) limits this to numeric value columns: 0/1 columns (one-hot,
        hashed, boolean, missing indicators) keep their scale, since dividing a rare
        category's indicator by its small std would make that one column dominate distances.
        """
        std = features.std(0)
        center = features.mean(0)
        scale = torch.where(std > 1e-6, std, torch.ones_like(std))
        if columns is not None:
            center = torch.where(columns, center, torch.zeros_like(center))
            scale = torch.where(columns, scale, torch.ones_like(scale))
        self.center.copy_(center)
        self.scale.copy_(scale)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.net(self.standardise(x))
        return F.normalize(embedding, dim=1) if self.normalize else embedding


class MetricEmbedder:
    """Embedder for the ``Detector``: ``[raw_weight · z(x), embedding_weight · f(x)]``."""

    def __init__(
        self, encoder: MLPEncoder, raw_weight: float = 1.0, embedding_weight: float = 1.0
    ) -> None:
        self.encoder = encoder.eval()
        self.raw_weight = float(raw_weight)
        self.embedding_weight = float(embedding_weight)
        self.history: dict[str, Any] = {}  # set by train_embedder; not part of the state

    def embed(self, features: np.ndarray) -> np.ndarray:
        """float32 ``(n, n_features + embedding_dim)``, computed in eval mode, batch-wise."""
        rows = np.asarray(features, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.encoder.n_features:
            raise ValueError(
                f"expected features of shape (n, {self.encoder.n_features}), got {rows.shape}"
            )
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        self.encoder.eval()
        with torch.inference_mode():
            for start in range(0, len(rows), EMBED_BATCH):
                x = torch.from_numpy(rows[start : start + EMBED_BATCH])
                raw = self.raw_weight * self.encoder.standardise(x)
                learned = self.embedding_weight * self.encoder(x)
                out[start : start + len(x)] = torch.cat([raw, learned], dim=1).numpy()
        return out

    @property
    def dim(self) -> int:
        return self.encoder.n_features + self.encoder.embedding_dim

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": "metric_mlp",
            "version": MLP_STATE_VERSION,
            "n_features": self.encoder.n_features,
            "hidden": list(self.encoder.hidden),
            "embedding_dim": self.encoder.embedding_dim,
            "normalize": self.encoder.normalize,
            "raw_weight": self.raw_weight,
            "embedding_weight": self.embedding_weight,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone() for name, t in self.encoder.state_dict().items()}

    def features_from_embedding(self, vectors: np.ndarray) -> np.ndarray | None:
        return self.freeze().features_from_embedding(vectors)

    def freeze(self) -> FrozenMLPEmbedder:
        """The same function in numpy, for fitting's last steps and serving (no torch)."""
        arrays = {name: tensor.numpy() for name, tensor in self.tensors().items()}
        return FrozenMLPEmbedder(self.to_state(), arrays)
