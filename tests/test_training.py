"""train_embedder: modes, determinism, early stopping, known anomalies, input checks."""

from __future__ import annotations

import numpy as np
import pytest
from nearwatch.detector.embedding.training import TrainingConfig, train_embedder

FAST = TrainingConfig(max_steps=40, hidden=(32,), embedding_dim=8, batch_size=64, eval_every=10)


def _one_step(config: TrainingConfig) -> TrainingConfig:
    """The same run stopped after one optimisation step: the baseline that training must beat."""
    return TrainingConfig(**{**config.__dict__, "max_steps": 1})


def _clusters(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    return (centres[labels] + rng.normal(size=(n, 4))).astype(np.float32), labels


def test_deterministic_with_a_seed() -> None:
    x, _ = _clusters()
    first = train_embedder(x, config=FAST).embed(x)
    second = train_embedder(x, config=FAST).embed(x)
    other = train_embedder(x, config=TrainingConfig(**{**FAST.__dict__, "seed": 1})).embed(x)
    assert np.array_equal(first, second) and not np.array_equal(first, other)


@pytest.mark.parametrize(
    ("supervision", "mode"),
    [
        ({}, "self_supervised"),
        ({"labels": "labels"}, "supervised"),
        ({"pairs": [(0, 1, 1), (0, 2, 0)]}, "weakly_supervised"),
        ({"triplets": [(0, 1, 2)]}, "weakly_supervised"),
    ],
)
def test_mode_follows_supervision(supervision: dict, mode: str) -> None:
    x, labels = _clusters()
    if "labels" in supervision:
        supervision = {"labels": labels}
    embedder = train_embedder(x, config=FAST, **supervision)
    assert embedder.history["mode"] == mode and embedder.history["steps"] == 40
    # training lowered the objective on the held-out rows (fixed views: comparable losses)
    baseline = train_embedder(x, config=_one_step(FAST), **supervision)
    assert embedder.history["best_validation_loss"] < baseline.history["best_validation_loss"]
    out = embedder.embed(x)
    # layout [z(x), w · f(x)]: f on the unit sphere, w = 0.3 · sqrt(d) · sqrt(d / 16) = 0.3
    assert embedder.embedding_weight == pytest.approx(0.3)
    np.testing.assert_allclose(np.linalg.norm(out[:, 4:], axis=1), 0.3, rtol=1e-5)


@pytest.mark.parametrize("loss", ["supcon", "triplet", "triplet_semihard", "multi_similarity",
                                  "contrastive"])
def test_every_supervised_loss_trains(loss: str) -> None:
    x, labels = _clusters()
    config = TrainingConfig(**{**FAST.__dict__, "supervised_loss": loss})
    trained = train_embedder(x, config=config, labels=labels)
    assert trained.history["mode"] == "supervised" and trained.history["steps"] == 40
    baseline = train_embedder(x, config=_one_step(config), labels=labels)
    assert trained.history["best_validation_loss"] < baseline.history["best_validation_loss"]


def test_supervised_embedding_separates_classes() -> None:
    x, labels = _clusters(400)
    embedder = train_embedder(x, config=FAST, labels=labels)
    learned = embedder.embed(x)[:, 4:]
    centroids = np.stack([learned[labels == c].mean(0) for c in range(3)])
    within = np.mean([np.linalg.norm(learned[labels == c] - centroids[c], axis=1).mean()
                      for c in range(3)])
    between = np.mean([np.linalg.norm(centroids[a] - centroids[b])
                       for a in range(3) for b in range(a + 1, 3)])
    assert between > within


def test_known_anomalies_are_pushed_away_from_normals() -> None:
    x, _ = _clusters(400)
    anomalies = x[:5] + np.array([0.0, 0.0, 2.5, 2.5], dtype=np.float32)  # off the normal plane
    normals = x[5:]
    plain = train_embedder(normals, config=FAST)
    taught = train_embedder(normals, config=FAST, anomalies=anomalies)
    assert taught.history["mode"] == "self_supervised" and not taught.encoder.normalize

    def margin(embedder: object) -> float:
        ref = embedder.embed(normals)
        a = embedder.embed(anomalies)
        d_anomaly = np.sort(np.linalg.norm(a[:, None] - ref[None], axis=2), axis=1)[:, 0].mean()
        n = embedder.embed(normals[:50])
        d_normal = np.sort(np.linalg.norm(n[:, None] - ref[None], axis=2), axis=1)[:, 1].mean()
        return d_anomaly / d_normal

    assert margin(taught) > 1.25 * margin(plain)


def test_early_stopping_and_time_budget() -> None:
    x, _ = _clusters()
    patient = TrainingConfig(**{**FAST.__dict__, "max_steps": 5000, "patience": 1,
                                "learning_rate": 0.05})
    assert train_embedder(x, config=patient).history["stopped_early"]
    rushed = TrainingConfig(**{**FAST.__dict__, "time_budget_s": 0.0})
    assert train_embedder(x, config=rushed).history["steps"] == 1


def test_tiny_training_sets_still_train() -> None:
    x, _ = _clusters(12)
    out = train_embedder(x, config=FAST).embed(x)
    assert out.shape == (12, 12)
    # too few rows to hold any out: all 12 train, so z(x) is the z-score over all of them
    np.testing.assert_allclose(out[:, :4], (x - x.mean(0)) / x.std(0, ddof=1), atol=1e-5)


def test_input_errors_name_the_problem() -> None:
    x, labels = _clusters(50)
    with pytest.raises(ValueError, match="labels has 3 entries for 50 feature rows"):
        train_embedder(x, config=FAST, labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"pairs refer to rows outside 0\.\.49"):
        train_embedder(x, config=FAST, pairs=[(0, 50, 1)])
    with pytest.raises(ValueError, match="features contain NaN or infinite values"):
        train_embedder(np.full((5, 2), np.nan, dtype=np.float32), config=FAST)
    with pytest.raises(ValueError, match="mode 'supervised' needs labels"):
        train_embedder(x, config=TrainingConfig(mode="supervised"))
    with pytest.raises(ValueError, match="mode must be one of .*got 'psychic'"):
        train_embedder(x, config=TrainingConfig(mode="psychic"))
    with pytest.raises(ValueError, match="mode 'weakly_supervised' needs pairs or triplets"):
        train_embedder(x, config=TrainingConfig(mode="weakly_supervised"), labels=labels)
    with pytest.raises(ValueError, match=r"a 2-D array with at least 2 rows, got \(1, 4\)"):
        train_embedder(x[:1], config=FAST)
    with pytest.raises(ValueError, match="supervised_loss must be one of .*got 'magic'"):
        train_embedder(x, config=TrainingConfig(supervised_loss="magic"), labels=labels)


def test_corruption_keeps_fields_whole_and_always_corrupts_invariant_fields() -> None:
    import torch
    from nearwatch.detector.embedding.augment import MarginalCorruption

    # columns 0-2: one one-hot field; column 3: a hashed id field, corrupted in every view
    pool = torch.tensor([[1, 0, 0, 5], [0, 1, 0, 6], [0, 0, 1, 7]], dtype=torch.float32)
    x = pool.repeat(100, 1)
    groups, always = torch.tensor([0, 0, 0, 1]), torch.tensor([False, True])
    view = MarginalCorruption(0.6, groups, always)(x, pool, torch.Generator().manual_seed(0))
    assert (view[:, :3].sum(1) == 1).all()  # still a valid one-hot vector
    assert (view[:, :3] != x[:, :3]).any()
    kept = MarginalCorruption(0.0, groups, always)(x, pool, torch.Generator().manual_seed(0))
    assert torch.equal(kept[:, :3], x[:, :3])
    assert (kept[:, 3] != x[:, 3]).float().mean() > 0.5  # a fresh donor in every view
