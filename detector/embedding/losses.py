"""Metric-learning losses; each ``forward`` reads as its formula.

Conventions: ``embeddings`` (n, e), integer ``labels`` (n,); a distance (small = similar) or a
similarity (large = similar) and a miner are passed in, never inherited
(the pytorch-metric-learning split).

>>> import torch
>>> z = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
>>> round(ContrastiveLoss(margin=2.0)(z, torch.tensor([0, 0, 1])).item(), 4)  # (1+0+0)/3
0.3333
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distances import CosineSimilarity, EuclideanDistance
from .miners import BatchHardMiner, SemiHardMiner


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(diagonal=1)
    return same & upper, ~same & upper


class ContrastiveLoss(nn.Module):
    """Hadsell et al. 2006: ``mean over pairs of  y·d² + (1 − y)·max(0, m − d)²``.

    ``y = 1`` for a same-label pair. Every unordered pair of the batch counts once.
    """

    def __init__(self, margin: float = 1.0, distance: EuclideanDistance | None = None) -> None:
        super().__init__()
        self.margin = margin
        self.distance = distance or EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d = self.distance(embeddings, embeddings)
        positive, negative = _pair_masks(labels)
        pulled = d[positive].pow(2)
        pushed = F.relu(self.margin - d[negative]).pow(2)
        return torch.cat([pulled, pushed]).mean()

    def on_pairs(self, a: torch.Tensor, b: torch.Tensor, similar: torch.Tensor) -> torch.Tensor:
        """The same formula on explicit pairs ``(a_i, b_i, similar_i)`` (weak supervision)."""
        d = (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt()
        y = similar.float()
        return (y * d.pow(2) + (1 - y) * F.relu(self.margin - d).pow(2)).mean()


class TripletMarginLoss(nn.Module):
    """Schroff et al. 2015: ``mean over mined triplets of max(0, d(a,p) − d(a,n) + m)``.

    The miner (``BatchHardMiner`` or ``SemiHardMiner``) chooses the triplets.
    """

    def __init__(
        self,
        margin: float = 0.2,
        miner: BatchHardMiner | SemiHardMiner | None = None,
        distance: EuclideanDistance | None = None,
    ) -> None:
        super().__init__()
        self.margin = margin
        self.miner = miner or BatchHardMiner()
        self.distance = distance or EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d = self.distance(embeddings, embeddings)
        a, p, n = self.miner(d.detach(), labels)
        if len(a) == 0:
            return embeddings.sum() * 0.0  # nothing to learn from this batch
        return F.relu(d[a, p] - d[a, n] + self.margin).mean()

    def on_triplets(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The same formula on explicit ``(anchor, positive, negative)`` embeddings."""
        d_ap = (a - p).pow(2).sum(1).clamp_min(1e-12).sqrt()
        d_an = (a - n).pow(2).sum(1).clamp_min(1e-12).sqrt()
        return F.relu(d_ap - d_an + self.margin).mean()


class MultiSimilarityLoss(nn.Module):
    """Wang et al. 2019, on cosine similarities ``S`` with threshold ``λ`` (``base``)::

        L = mean_i [ 1/α · log(1 + Σ_{p∈P_i} e^{−α(S_ip − λ)})
                   + 1/β · log(1 + Σ_{n∈N_i} e^{ β(S_in − λ)}) ]

    (the soft weighting of the paper; its pair-mining step is left out so the formula is exact).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta, self.base = alpha, beta, base
        self.similarity = CosineSimilarity()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.similarity(embeddings, embeddings)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=s.device)
        positive, negative = same & ~eye, ~same
        pos_exp = torch.exp(-self.alpha * (s - self.base)) * positive
        neg_exp = torch.exp(self.beta * (s - self.base)) * negative
        pos_term = torch.log1p(pos_exp.sum(1)) / self.alpha
        neg_term = torch.log1p(neg_exp.sum(1)) / self.beta
        return (pos_term + neg_term).mean()


class SupConLoss(nn.Module):
    """Khosla et al. 2020 (L_out), with ``s_ij = cos(z_i, z_j) / τ``::

        L = mean_i  −1/|P_i| Σ_{p∈P_i} log( e^{s_ip} / Σ_{a≠i} e^{s_ia} )

    Anchors without a positive in the batch are skipped.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature
        self.similarity = CosineSimilarity()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.similarity(embeddings, embeddings) / self.temperature
        eye = torch.eye(len(labels), dtype=torch.bool, device=s.device)
        positive = (labels[:, None] == labels[None, :]) & ~eye
        log_prob = s - torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
        has_positive = positive.any(1)
        mean_log_prob = (log_prob * positive).sum(1)[has_positive] / positive.sum(1)[has_positive]
        return -mean_log_prob.mean()


class NTXentLoss(nn.Module):
    """InfoNCE / NT-Xent (Chen et al. 2020, SimCLR) for two views ``z1[i] ↔ z2[i]``.

    SupCon with one positive per anchor: the other view of the same record; every other
    record's views in the batch (2n − 2 of them) are the negatives.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.supcon = SupConLoss(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        record = torch.arange(len(z1), device=z1.device)
        return self.supcon(torch.cat([z1, z2]), torch.cat([record, record]))


class HardNegativeMarginLoss(nn.Module):
    """Known anomalies as hard negatives: ``mean max(0, m − d(anomaly, normal))²``
    plus ``mean d(normal_i, normal_j)²`` over disjoint normal pairs.

    This is ``ContrastiveLoss`` on the pairs (normal, normal: similar) and (anomaly, normal:
    dissimilar), computed on cross pairs only, so every anomaly is pushed at least ``m`` away
    from every normal of the batch while normals stay together.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin
        self.distance = EuclideanDistance()

    def forward(self, normals: torch.Tensor, anomalies: torch.Tensor) -> torch.Tensor:
        half = len(normals) // 2
        pulled = (normals[:half] - normals[half : 2 * half]).pow(2).sum(1).mean()
        pushed = F.relu(self.margin - self.distance(anomalies, normals)).pow(2).mean()
        return pulled + pushed


LOSSES: dict[str, type[nn.Module]] = {
    "contrastive": ContrastiveLoss,
    "triplet": TripletMarginLoss,
    "multi_similarity": MultiSimilarityLoss,
    "supcon": SupConLoss,
}
