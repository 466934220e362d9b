"""Each loss against a value computed by hand on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch
from nearwatch.detector.embedding.distances import (
    CosineSimilarity,
    EuclideanDistance,
    chord_distance,
)
from nearwatch.detector.embedding.losses import (
    ContrastiveLoss,
    HardNegativeMarginLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
)
from nearwatch.detector.embedding.miners import BatchHardMiner, SemiHardMiner

LINE = torch.tensor([[0.0], [1.0], [3.0], [3.5]])  # 1-D points: distances are differences
LINE_LABELS = torch.tensor([0, 0, 1, 1])
AXES = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # cosines 1, 0, 0
AXES_LABELS = torch.tensor([0, 0, 1])


def test_contrastive_by_hand() -> None:
    z = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    # pairs: (0,1) similar d=1 -> 1; (0,2) d=3 -> (4-3)^2 = 1; (1,2) d=sqrt(10) -> (4-sqrt10)^2
    expected = (1.0 + 1.0 + (4 - math.sqrt(10)) ** 2) / 3
    assert ContrastiveLoss(margin=4.0)(z, torch.tensor([0, 0, 1])).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_contrastive_on_pairs_by_hand() -> None:
    a, b = torch.tensor([[0.0], [0.0]]), torch.tensor([[2.0], [0.5]])
    # similar pair d=2 -> 4; dissimilar pair d=0.5, margin 1 -> 0.25
    loss = ContrastiveLoss(margin=1.0).on_pairs(a, b, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((4 + 0.25) / 2, rel=1e-5)


def test_triplet_batch_hard_by_hand() -> None:
    # anchors: 0 -> p1 (1), n2 (3): 0 ; 1 -> p0 (1), n2 (2): 1 ; 2 -> p3 (.5), n1 (2): .5 ;
    # 3 -> p2 (.5), n1 (2.5): 0   with margin 2
    loss = TripletMarginLoss(margin=2.0, miner=BatchHardMiner())(LINE, LINE_LABELS)
    assert loss.item() == pytest.approx(1.5 / 4, rel=1e-5)


def test_triplet_semi_hard_by_hand() -> None:
    # semi-hard (d_ap < d_an < d_ap + 2): (1,0,2): 1, (1,0,3): .5, (2,3,1): .5
    miner = SemiHardMiner(margin=2.0)
    anchors, _, _ = miner(EuclideanDistance()(LINE, LINE), LINE_LABELS)
    assert sorted(anchors.tolist()) == [1, 1, 2]
    loss = TripletMarginLoss(margin=2.0, miner=miner)(LINE, LINE_LABELS)
    assert loss.item() == pytest.approx(2.0 / 3, rel=1e-5)


def test_triplet_without_valid_triplets_is_zero_with_gradient() -> None:
    z = torch.tensor([[0.0], [1.0]], requires_grad=True)
    loss = TripletMarginLoss()(z, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() == 0.0 and z.grad is not None
    assert torch.equal(z.grad, torch.zeros_like(z))  # a zero loss that pushes nothing


def test_multi_similarity_by_hand() -> None:
    alpha, beta, base = 2.0, 50.0, 0.5
    anchor_with_positive = math.log1p(math.exp(-alpha * (1 - base))) / alpha + math.log1p(
        math.exp(beta * (0 - base))
    ) / beta
    anchor_alone = math.log1p(2 * math.exp(beta * (0 - base))) / beta
    expected = (2 * anchor_with_positive + anchor_alone) / 3
    loss = MultiSimilarityLoss(alpha, beta, base)(AXES, AXES_LABELS)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_supcon_by_hand() -> None:
    # anchors 0 and 1: -log(e^1 / (e^1 + e^0)); anchor 2 has no positive and is skipped
    loss = SupConLoss(temperature=1.0)(AXES, AXES_LABELS)
    assert loss.item() == pytest.approx(math.log(math.e + 1) - 1, rel=1e-5)


def test_nt_xent_by_hand() -> None:
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # every anchor: positive cos 1, two negatives cos 0 -> -log(e / (e + 2))
    loss = NTXentLoss(temperature=1.0)(views, views.clone())
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-5)


def test_nt_xent_temperature_sharpens() -> None:
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert NTXentLoss(0.1)(views, views).item() < NTXentLoss(1.0)(views, views).item()


def test_hard_negative_margin_by_hand() -> None:
    normals = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    anomalies = torch.tensor([[0.0, 0.5]])
    # pull: ||n0 - n1||^2 = 1 ; push: (1 - 0.5)^2 for both normals -> mean 0.25
    assert HardNegativeMarginLoss(margin=1.0)(normals, anomalies).item() == pytest.approx(1.25)


def test_distances_by_hand() -> None:
    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    assert EuclideanDistance()(a, b).tolist()[0] == pytest.approx([5.0, 5.0], rel=1e-5)
    assert CosineSimilarity()(a, b[1:]).item() == pytest.approx(1.0)
    assert chord_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == (
        pytest.approx(math.sqrt(2.0))
    )


@pytest.mark.parametrize(
    "loss",
    [ContrastiveLoss(), TripletMarginLoss(), MultiSimilarityLoss(), SupConLoss()],
    ids=["contrastive", "triplet", "multi_similarity", "supcon"],
)
def test_gradients_finite_on_duplicate_embeddings(loss: torch.nn.Module) -> None:
    z = torch.ones(4, 3, requires_grad=True)  # all distances 0: sqrt must not give NaN
    loss(z, torch.tensor([0, 0, 1, 1])).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
