"""What the encoder is trained to do, per mode: one batch in, one scalar loss out.

The mode follows from the supervision that ``fit`` received:

- ``supervised`` (class labels): the configured labelled loss (SupCon by default) on two
  augmented views of each record, labels repeated, so every anchor has a positive;
- ``weakly_supervised`` (pairs / triplets of record indices): contrastive loss on the given
  pairs, triplet margin loss on the given triplets, plus NT-Xent on the records so the
  unconstrained ones keep a structure;
- ``self_supervised`` (nothing): NT-Xent between two marginal-corruption views;
- known anomalies, in any mode: ``HardNegativeMarginLoss`` pushes (mixed) anomalies at least
  a margin away from every normal of the batch and pulls normals together; NT-Xent is then
  weighted by ``view_loss_weight_with_anomalies`` (0 by default: measured, see bench/results).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .augment import MarginalCorruption, mix_anomalies
from .losses import (
    LOSSES,
    ContrastiveLoss,
    HardNegativeMarginLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
)
from .miners import BatchHardMiner, SemiHardMiner

MODES = ("auto", "supervised", "weakly_supervised", "self_supervised")
LABELLED_LOSSES = (*LOSSES, "triplet_semihard")


@dataclass(frozen=True)
class Supervision:
    """Training data and supervision as tensors (indices refer to rows of ``features``)."""

    features: torch.Tensor
    labels: torch.Tensor | None = None
    pairs: torch.Tensor | None = None  # (m, 3): i, j, similar
    triplets: torch.Tensor | None = None  # (m, 3): anchor, positive, negative
    anomalies: torch.Tensor | None = None

    def mode(self, requested: str) -> str:
        """The training mode: ``requested``, or inferred from the supervision for "auto"."""
        if requested not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {requested!r}")
        if requested == "supervised" and self.labels is None:
            raise ValueError("mode 'supervised' needs labels")
        if requested == "weakly_supervised" and self.pairs is None and self.triplets is None:
            raise ValueError("mode 'weakly_supervised' needs pairs or triplets")
        if requested != "auto":
            return requested
        if self.labels is not None:
            return "supervised"
        if self.pairs is not None or self.triplets is not None:
            return "weakly_supervised"
        return "self_supervised"


def labelled_loss(name: str, margin: float, temperature: float) -> nn.Module:
    """The supervised loss named in the config."""
    if name == "supcon":
        return SupConLoss(temperature)
    if name == "triplet":
        return TripletMarginLoss(margin, BatchHardMiner())
    if name == "triplet_semihard":
        return TripletMarginLoss(margin, SemiHardMiner(margin))
    if name == "multi_similarity":
        return MultiSimilarityLoss()
    if name == "contrastive":
        return ContrastiveLoss(margin)
    raise ValueError(f"supervised_loss must be one of {LABELLED_LOSSES}, got {name!r}")


class Objective:
    """Samples a batch for ``mode`` and returns the loss of ``encoder`` on it."""

    def __init__(
        self,
        mode: str,
        *,
        supervised_loss: str = "supcon",
        temperature: float = 0.2,
        corruption_rate: float = 0.6,
        margin: float = 1.0,
        anomaly_margin: float = 1.0,
        anomaly_views: int = 128,
        anomaly_noise: float = 0.1,
        anomaly_loss_weight: float = 1.0,
        view_loss_weight_with_anomalies: float = 0.0,
        column_groups: torch.Tensor | None = None,
        invariant_fields: torch.Tensor | None = None,
    ) -> None:
        self.mode = mode
        self.view_loss_weight_with_anomalies = view_loss_weight_with_anomalies
        self.view = MarginalCorruption(corruption_rate, column_groups, invariant_fields)
        self.nt_xent = NTXentLoss(temperature)
        self.labelled = labelled_loss(supervised_loss, margin, temperature)
        self.pair_loss = ContrastiveLoss(margin)
        self.triplet_loss = TripletMarginLoss(margin)
        self.hard_negatives = HardNegativeMarginLoss(anomaly_margin)
        self.anomaly_views = anomaly_views
        self.anomaly_noise = anomaly_noise
        self.anomaly_loss_weight = anomaly_loss_weight

    def __call__(
        self,
        encoder: nn.Module,
        data: Supervision,
        rows: torch.Tensor,
        batch_size: int,
        g: torch.Generator,
    ) -> torch.Tensor:
        """Loss on a random batch of ``rows`` (the training or the validation rows)."""
        batch = rows[torch.randint(0, len(rows), (min(batch_size, len(rows)),), generator=g)]
        x = data.features[batch]
        loss = x.new_zeros(())
        if self.mode == "supervised":
            assert data.labels is not None
            z1, z2 = self._views(encoder, data, rows, x, g)
            labels = data.labels[batch]
            loss = loss + self.labelled(torch.cat([z1, z2]), torch.cat([labels, labels]))
        else:
            # With known anomalies the hard-negative loss already shapes the normals (pulled
            # together, anomalies pushed out); the benchmark shows NT-Xent's uniformity on top
            # of it only blurs that, so by default its weight there is 0.
            weight = 1.0 if data.anomalies is None else self.view_loss_weight_with_anomalies
            if weight > 0:
                loss = loss + weight * self.nt_xent(*self._views(encoder, data, rows, x, g))
        if self.mode == "weakly_supervised":
            loss = loss + self._weak_loss(encoder, data, batch_size, g)
        if data.anomalies is not None:
            fake = mix_anomalies(data.anomalies, self.anomaly_views, g, self.anomaly_noise)
            loss = loss + self.anomaly_loss_weight * self.hard_negatives(
                encoder(x), encoder(fake)
            )
        return loss

    def _views(
        self, encoder: nn.Module, data: Supervision, rows: torch.Tensor, x: torch.Tensor,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of two marginal-corruption views of ``x`` (marginals from ``rows``)."""
        return (encoder(self.view(x, data.features, g, rows)),
                encoder(self.view(x, data.features, g, rows)))

    def _weak_loss(
        self, encoder: nn.Module, data: Supervision, batch_size: int, g: torch.Generator
    ) -> torch.Tensor:
        loss = data.features.new_zeros(())
        f = data.features
        if data.pairs is not None:
            p = data.pairs[torch.randint(0, len(data.pairs), (batch_size,), generator=g)]
            loss = loss + self.pair_loss.on_pairs(encoder(f[p[:, 0]]), encoder(f[p[:, 1]]), p[:, 2])
        if data.triplets is not None:
            t = data.triplets[torch.randint(0, len(data.triplets), (batch_size,), generator=g)]
            loss = loss + self.triplet_loss.on_triplets(
                encoder(f[t[:, 0]]), encoder(f[t[:, 1]]), encoder(f[t[:, 2]])
            )
        return loss
