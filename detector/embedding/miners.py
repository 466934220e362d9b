"""Triplet miners: which (anchor, positive, negative) triplets of a labelled batch to train on.

A miner only chooses indices; the loss (``TripletMarginLoss``) computes the formula. Both take
a distance matrix ``d`` (n × n) and integer labels (n,).

>>> import torch
>>> d = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 0.5], [3.0, 0.5, 0.0]])
>>> labels = torch.tensor([0, 0, 1])
>>> [t.tolist() for t in BatchHardMiner()(d, labels)]
[[0, 1], [1, 0], [2, 2]]
"""

from __future__ import annotations

import torch

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


class BatchHardMiner:
    """For each anchor: its farthest positive and its nearest negative (Hermans et al. 2017).

    Anchors without a positive or without a negative in the batch are skipped.
    """

    def __call__(self, d: torch.Tensor, labels: torch.Tensor) -> Triplets:
        positive, negative = _masks(labels)
        usable = positive.any(1) & negative.any(1)
        hardest_positive = d.masked_fill(~positive, float("-inf")).argmax(1)
        hardest_negative = d.masked_fill(~negative, float("inf")).argmin(1)
        anchors = torch.nonzero(usable).flatten()
        return anchors, hardest_positive[anchors], hardest_negative[anchors]


class SemiHardMiner:
    """All (a, p, n) with ``d(a,p) < d(a,n) < d(a,p) + margin`` (Schroff et al. 2015, FaceNet).

    Semi-hard negatives are farther than the positive but still inside the margin, so they
    give a gradient without the collapse that the very hardest negatives can cause early on.
    """

    def __init__(self, margin: float = 0.2) -> None:
        self.margin = margin

    def __call__(self, d: torch.Tensor, labels: torch.Tensor) -> Triplets:
        positive, negative = _masks(labels)
        d_ap = d[:, :, None]  # (a, p, 1)
        d_an = d[:, None, :]  # (a, 1, n)
        valid = positive[:, :, None] & negative[:, None, :]
        semi_hard = valid & (d_an > d_ap) & (d_an < d_ap + self.margin)
        anchors, positives, negatives = torch.nonzero(semi_hard, as_tuple=True)
        return anchors, positives, negatives
