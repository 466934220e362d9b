"""The MLP encoder, the embedder wrapper and their saved state."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from nearwatch.detector.embedding import encoder as encoder_module
from nearwatch.detector.embedding.encoder import (
    IdentityEmbedder,
    MetricEmbedder,
    MLPEncoder,
    build_embedder,
)


def _embedder(normalize: bool = True) -> MetricEmbedder:
    torch.manual_seed(0)
    mlp = MLPEncoder(5, hidden=(16, 8), embedding_dim=3, normalize=normalize)
    mlp.set_standardisation(torch.randn(50, 5) * 3 + 1)
    return MetricEmbedder(mlp, raw_weight=1.0, embedding_weight=2.0)


def _round_trip(embedder: Any) -> Any:
    """Through JSON and the bundle's numpy weights file (no torch to load it back)."""
    from nearwatch.detector.embedding.weights import arrays_from_bytes, arrays_to_bytes

    arrays = {name: np.asarray(getattr(value, "numpy", lambda v=value: v)())
              for name, value in embedder.tensors().items()}
    weights = arrays_from_bytes(arrays_to_bytes(arrays))
    return build_embedder(json.loads(json.dumps(embedder.to_state())), weights)


@pytest.mark.parametrize("normalize", [True, False])
def test_round_trip_reproduces_embeddings(normalize: bool) -> None:
    embedder = _embedder(normalize)
    x = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
    frozen = embedder.freeze()  # what a fitted Detector embeds with, and what a bundle loads
    np.testing.assert_allclose(frozen.embed(x), embedder.embed(x), rtol=1e-5, atol=1e-6)
    clone = _round_trip(frozen)
    assert np.array_equal(clone.embed(x), frozen.embed(x))  # bit for bit after a reload
    legacy = _round_trip(embedder)  # older bundles: torch tensors, also served in numpy
    assert np.array_equal(legacy.embed(x), frozen.embed(x))


def test_embedding_layout_raw_then_learned() -> None:
    embedder = _embedder()
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    out = embedder.embed(x)
    assert out.dtype == np.float32 and out.shape == (7, 5 + 3)
    mlp = embedder.encoder
    z = (x - mlp.center.numpy()) / mlp.scale.numpy()
    assert np.allclose(out[:, :5], z, atol=1e-5)
    # the learned part is L2-normalised, then weighted
    assert np.allclose(np.linalg.norm(out[:, 5:], axis=1), 2.0, atol=1e-5)
    # ... and is the MLP applied to the standardised features (numpy forward pass)
    (w1, b1), (w2, b2), (w3, b3) = [
        (layer.weight.detach().numpy(), layer.bias.detach().numpy())
        for layer in mlp.net if isinstance(layer, torch.nn.Linear)]
    h = np.maximum(z @ w1.T + b1, 0.0)
    h = np.maximum(h @ w2.T + b2, 0.0)
    f = h @ w3.T + b3
    np.testing.assert_allclose(out[:, 5:], 2.0 * f / np.linalg.norm(f, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)


def test_embed_is_batchwise_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = _embedder()
    x = np.random.default_rng(2).normal(size=(25, 5)).astype(np.float32)
    whole = embedder.embed(x)
    monkeypatch.setattr(encoder_module, "EMBED_BATCH", 4)
    assert np.allclose(embedder.embed(x), whole, atol=1e-6)


def test_embed_runs_in_eval_mode_without_gradients() -> None:
    embedder = _embedder()
    x = np.random.default_rng(3).normal(size=(3, 5)).astype(np.float32)
    expected = embedder.embed(x)
    embedder.encoder.train()
    out = embedder.embed(x)
    assert not embedder.encoder.training and isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, expected)
    assert all(p.grad is None for p in embedder.encoder.parameters())


def test_embed_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"expected features of shape \(n, 5\), got \(2, 4\)"):
        _embedder().embed(np.zeros((2, 4)))


def test_standardisation_handles_constant_columns() -> None:
    mlp = MLPEncoder(2, hidden=(4,), embedding_dim=2)
    mlp.set_standardisation(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert mlp.scale.tolist()[1] == 1.0 and mlp.center.tolist()[1] == 5.0


def test_identity_embedder() -> None:
    identity = IdentityEmbedder()
    x = np.arange(6, dtype=np.float64).reshape(2, 3) - 2.5
    out = identity.embed(x)
    assert out.dtype == np.float32 and identity.tensors() == {}
    np.testing.assert_array_equal(out, x.astype(np.float32))  # the scaled features as they are
    clone = _round_trip(identity)
    assert isinstance(clone, IdentityEmbedder)
    np.testing.assert_array_equal(clone.embed(x), out)


def test_build_embedder_rejects_bad_state() -> None:
    embedder = _embedder()
    with pytest.raises(ValueError, match="unsupported embedder state version 99"):
        build_embedder({**embedder.to_state(), "version": 99}, embedder.tensors())
    with pytest.raises(ValueError, match="unknown embedder kind 'transformer'"):
        build_embedder({**embedder.to_state(), "kind": "transformer"}, embedder.tensors())
    with pytest.raises(ValueError, match="encoder tensors do not match the architecture"):
        build_embedder({**embedder.to_state(), "embedding_dim": 4}, embedder.tensors())
    with pytest.raises(ValueError, match="identity embedder has no weights, but tensors"):
        build_embedder(IdentityEmbedder().to_state(), embedder.tensors())
    with pytest.raises(ValueError, match="embedder state must be an object, got list"):
        build_embedder([], {})


def test_encoder_is_small_enough_for_fast_inference() -> None:
    mlp = MLPEncoder(40)  # default widths
    assert sum(p.numel() for p in mlp.parameters()) < 30_000


def test_mlp_state_versions_keep_their_arithmetic() -> None:
    """Version 2 multiplies in float64, so a record embeds the same alone or in any batch
    (float32 BLAS sums differed by ~1e-7 with the batch); a version-1 state (older bundles)
    keeps float32 products, the function its references and threshold were computed with."""
    from nearwatch.detector.embedding.frozen import FrozenMLPEmbedder

    rng = np.random.default_rng(0)
    arrays = {"center": np.zeros(6), "scale": np.ones(6),
              "net.0.weight": rng.normal(size=(16, 6)), "net.0.bias": rng.normal(size=16),
              "net.2.weight": rng.normal(size=(4, 16)), "net.2.bias": rng.normal(size=4)}
    state = {"kind": "metric_mlp", "version": 1, "n_features": 6, "hidden": [16],
             "embedding_dim": 4, "normalize": False, "raw_weight": 1.0,
             "embedding_weight": 1.0}
    rows = rng.normal(size=(500, 6)).astype(np.float32)
    weights = {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}
    hidden = np.maximum(rows @ weights["net.0.weight"].T.copy() + weights["net.0.bias"], 0.0)
    float32_products = hidden @ weights["net.2.weight"].T.copy() + weights["net.2.bias"]
    older = FrozenMLPEmbedder(state, arrays).embed(rows)
    np.testing.assert_array_equal(older[:, 6:], float32_products)
    current = FrozenMLPEmbedder({**state, "version": 2}, arrays)
    batch = current.embed(rows)
    alone = np.vstack([current.embed(rows[i:i + 1]) for i in range(len(rows))])
    np.testing.assert_array_equal(alone, batch)
    np.testing.assert_allclose(batch, older, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="version 3"):
        FrozenMLPEmbedder({**state, "version": 3}, arrays)
