"""``train_embedder``: the training loop for the metric-learned encoder (kept apart from it).

A fixed number of optimisation steps on random batches (not epochs): the cost does not grow
with the number of records, so 100 k records train as fast as 10 k. Early stopping watches the
same objective on a held-out part of the training normals; the best weights are kept.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
>>> config = TrainingConfig(max_steps=20, hidden=(16,), embedding_dim=4, seed=1)
>>> a = train_embedder(x, config=config).embed(x)
>>> b = train_embedder(x, config=config).embed(x)
>>> a.shape, bool(np.array_equal(a, b))
((200, 8), True)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .encoder import MetricEmbedder, MLPEncoder
from .objectives import Objective, Supervision
from .runtime import apply_torch_threads


@dataclass(frozen=True)
class TrainingConfig:
    """Every knob of encoder training. The defaults are the one benchmarked configuration.

    ``embedding_weight`` / ``anomaly_embedding_weight``: weight of the learned embedding next to
    the standardised features (``raw_weight``), see ``_embedding_weight``; the larger one applies
    when known anomalies were given, because then the embedding carries information that the
    features alone do not (benchmark: 0.3 vs 10 measured best of {0.3, 0.5, 1, 3, 10, 30}).
    """

    mode: str = "auto"  # auto | supervised | weakly_supervised | self_supervised
    hidden: Sequence[int] = (128, 128)
    embedding_dim: int = 16
    batch_size: int = 256
    max_steps: int = 300
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    supervised_loss: str = "supcon"  # supcon | triplet | triplet_semihard | multi_similarity
    temperature: float = 0.2
    margin: float = 0.5  # contrastive / triplet losses (embeddings on the unit sphere)
    corruption_rate: float = 0.6  # SCARF's default; measured 0.3 vs 0.6: 94.48 vs 94.51
    anomaly_margin: float = 1.0
    anomaly_views: int = 128
    anomaly_noise: float = 0.1
    anomaly_loss_weight: float = 1.0
    view_loss_weight_with_anomalies: float = 0.0
    raw_weight: float = 1.0
    embedding_weight: float = 0.3
    embedding_reference_dim: float = 16.0
    anomaly_embedding_weight: float = 10.0
    validation_fraction: float = 0.1
    eval_every: int = 25
    patience: int = 4
    time_budget_s: float = 50.0
    seed: int = 0


def train_embedder(
    features: np.ndarray,
    *,
    config: TrainingConfig,
    labels: Sequence[Any] | np.ndarray | None = None,
    pairs: Sequence[Sequence[int]] | np.ndarray | None = None,
    triplets: Sequence[Sequence[int]] | np.ndarray | None = None,
    anomalies: np.ndarray | None = None,
    standardise_columns: np.ndarray | None = None,
    column_groups: np.ndarray | None = None,
    invariant_fields: np.ndarray | None = None,
    progress: bool = False,
) -> MetricEmbedder:
    """Train the encoder on normal ``features`` (already scaled float32 rows).

    labels: integer class per row; pairs: ``(i, j, similar)`` rows; triplets:
    ``(anchor, positive, negative)`` rows (indices into ``features``); anomalies: feature rows
    of known anomalies; standardise_columns: bool mask of the columns to z-score (numeric
    values; default all); column_groups: field index of each column (a field's columns are
    corrupted together; default one field per column); invariant_fields: bool per field,
    fields corrupted in every view (hashed ids). Deterministic for a given ``config.seed``
    (and thread count).
    """
    data = _supervision(features, labels, pairs, triplets, anomalies)
    mode = data.mode(config.mode)
    apply_torch_threads()  # configure_threads may have run before torch was imported
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # weight initialisation
    encoder = MLPEncoder(
        data.features.shape[1], config.hidden, config.embedding_dim,
        normalize=data.anomalies is None,
    )
    train_rows, validation_rows = _holdout(len(data.features), config, generator)
    encoder.set_standardisation(
        data.features[train_rows],
        None if standardise_columns is None else torch.from_numpy(
            np.asarray(standardise_columns, dtype=bool)
        ),
    )
    objective = Objective(
        mode,
        supervised_loss=config.supervised_loss,
        temperature=config.temperature,
        corruption_rate=config.corruption_rate,
        margin=config.margin,
        anomaly_margin=config.anomaly_margin,
        anomaly_views=config.anomaly_views,
        anomaly_noise=config.anomaly_noise,
        anomaly_loss_weight=config.anomaly_loss_weight,
        view_loss_weight_with_anomalies=config.view_loss_weight_with_anomalies,
        column_groups=None if column_groups is None else torch.from_numpy(
            np.asarray(column_groups, dtype=np.int64)
        ),
        invariant_fields=None if invariant_fields is None else torch.from_numpy(
            np.asarray(invariant_fields, dtype=bool)
        ),
    )
    optimiser = torch.optim.Adam(
        encoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    best_state, best_loss, evals_without_gain = copy.deepcopy(encoder.state_dict()), math.inf, 0
    steps_run, started = 0, time.perf_counter()
    # disable=None: no bar when stderr is no terminal (a log file got one carriage-return line)
    steps = tqdm(range(config.max_steps), desc=f"training ({mode})",
                 disable=None if progress else True)
    for step in steps:
        encoder.train()
        loss = objective(encoder, data, train_rows, config.batch_size, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps_run = step + 1
        last = step + 1 == config.max_steps
        if (step + 1) % config.eval_every == 0 or last:
            validation_loss = _validation_loss(encoder, objective, data, validation_rows, config)
            steps.set_postfix(loss=f"{loss.item():.3f}", val=f"{validation_loss:.3f}")
            if validation_loss < best_loss:
                best_state, best_loss = copy.deepcopy(encoder.state_dict()), validation_loss
                evals_without_gain = 0
            else:
                evals_without_gain += 1
            if evals_without_gain >= config.patience:
                break
        if time.perf_counter() - started > config.time_budget_s:
            break
    encoder.load_state_dict(best_state)
    embedder = MetricEmbedder(
        encoder.eval(), config.raw_weight, _embedding_weight(config, data)
    )
    embedder.history = {
        "mode": mode,
        "steps": steps_run,
        "best_validation_loss": best_loss,
        "seconds": round(time.perf_counter() - started, 3),
        "stopped_early": steps_run < config.max_steps,
    }
    return embedder


def _embedding_weight(config: TrainingConfig, data: Supervision) -> float:
    """Absolute weight of the learned part next to the standardised features.

    Standardised-feature distances grow like ``sqrt(d)``, hence the ``sqrt(d)`` factor. Without
    known anomalies the weight grows by a further ``sqrt(d / embedding_reference_dim)``: raw
    distances concentrate as ``d`` grows, so the learned embedding matters more in wide data
    (benchmark: +1 AUROC on 64-field optdigits, ±0.3 on the 6-field sets).
    """
    d = data.features.shape[1]
    if data.anomalies is not None:
        return config.anomaly_embedding_weight * math.sqrt(d)
    return config.embedding_weight * math.sqrt(d) * math.sqrt(d / config.embedding_reference_dim)


def _validation_loss(
    encoder: MLPEncoder,
    objective: Objective,
    data: Supervision,
    rows: torch.Tensor,
    config: TrainingConfig,
) -> float:
    # A fixed generator: every evaluation sees the same views, so the losses are comparable.
    g = torch.Generator().manual_seed(config.seed + 1)
    encoder.eval()
    with torch.no_grad():
        return float(objective(encoder, data, rows, config.batch_size, g))


def _holdout(
    n: int, config: TrainingConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training / validation rows; tiny sets validate on (all of) the training rows."""
    order = torch.randperm(n, generator=g)
    n_validation = int(config.validation_fraction * n)
    if n_validation < 8 or n - n_validation < 8:
        return order, order
    return order[n_validation:], order[:n_validation]


def _supervision(
    features: np.ndarray,
    labels: Sequence[Any] | np.ndarray | None,
    pairs: Sequence[Sequence[int]] | np.ndarray | None,
    triplets: Sequence[Sequence[int]] | np.ndarray | None,
    anomalies: np.ndarray | None,
) -> Supervision:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be a 2-D array with at least 2 rows, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    n = len(x)
    label_tensor = None
    if labels is not None:
        codes = np.unique(np.asarray(labels), return_inverse=True)[1]
        if len(codes) != n:
            raise ValueError(f"labels has {len(codes)} entries for {n} feature rows")
        label_tensor = torch.from_numpy(codes.astype(np.int64))
    anomaly_tensor = None
    if anomalies is not None and len(anomalies):
        a = np.asarray(anomalies, dtype=np.float32).reshape(-1, x.shape[1])
        anomaly_tensor = torch.from_numpy(a)
    return Supervision(
        torch.from_numpy(np.ascontiguousarray(x)), label_tensor,
        _index_rows(pairs, "pairs", n), _index_rows(triplets, "triplets", n), anomaly_tensor,
    )


def _index_rows(
    rows: Sequence[Sequence[int]] | np.ndarray | None, name: str, n: int
) -> torch.Tensor | None:
    if rows is None:
        return None
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    if len(table) == 0:
        return None
    indices = table[:, :2] if name == "pairs" else table
    if (indices < 0).any() or (indices >= n).any():
        raise ValueError(f"{name} refer to rows outside 0..{n - 1}")
    return torch.from_numpy(table)
