"""Distances between embeddings, shared by the losses, the miners and the tests.

Two roles, as in pytorch-metric-learning: a distance (small = similar) and a similarity
(large = similar). Losses take either and ask ``is_inverted`` which way is "closer".

>>> import torch
>>> a = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
>>> EuclideanDistance()(a, a).round().tolist()
[[0.0, 5.0], [5.0, 0.0]]
>>> CosineSimilarity()(a[1:], a[1:]).round(decimals=3).tolist()
[[1.0]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# sqrt has an infinite gradient at 0 (every self-pair); clamping the squared distance keeps
# training finite while changing distances by at most sqrt(EPS).
EPS = 1e-12


class EuclideanDistance:
    """``d(a_i, b_j) = ||a_i - b_j||_2``: a true metric (smaller = more similar)."""

    is_inverted = False

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        squared = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
        return squared.clamp_min(EPS).sqrt()


class CosineSimilarity:
    """``s(a_i, b_j) = <a_i, b_j> / (||a_i|| ||b_j||)`` (larger = more similar)."""

    is_inverted = True

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def chord_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sqrt(2 - 2 cos)``: the Euclidean distance between L2-normalised vectors (a metric)."""
    return EuclideanDistance()(F.normalize(a, dim=1), F.normalize(b, dim=1))
