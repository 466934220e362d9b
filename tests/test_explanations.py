"""Explanations of a model trained with known anomalies: the fields a record's typical normal
neighbours differ in, the neighbours found in feature space (the embedding pushes anomalies
away from every normal record, so its nearest references are the same few for most)."""

from __future__ import annotations

import numpy as np
import pytest
from nearwatch.detector import Detector, explanations
from nearwatch.detector.scoring import neighbour_search
from nearwatch.detector.synthetic import generate_records

CHANGES = {"latency_ms": lambda r: r["latency_ms"] * 300,
           "bytes_out": lambda r: r["bytes_out"] * 500,
           "cpu_pct": lambda r: 100.0 if r["cpu_pct"] < 30 else 0.0}


@pytest.fixture(scope="module")
def known_anomaly_model() -> Detector:
    train = generate_records(2_000, 0.0, seed=1)
    anomalies = [r for r in generate_records(800, 0.1, seed=3) if r["is_anomaly"]][:20]
    return Detector(label_fields=("is_anomaly",), random_state=0).fit(train, anomalies=anomalies)


@pytest.fixture(scope="module")
def one_field_changed() -> list[tuple[str, dict]]:
    """60 normal records, each with one numeric field pushed far out of its range."""
    cases = []
    for i, record in enumerate(generate_records(60, 0.0, seed=4)):
        field = list(CHANGES)[i % len(CHANGES)]
        cases.append((field, dict(record, **{field: CHANGES[field](record)})))
    return cases


def test_a_known_anomaly_model_names_the_field_that_changed(
        known_anomaly_model: Detector, one_field_changed: list[tuple[str, dict]]) -> None:
    detector = known_anomaly_model
    records = [record for _, record in one_field_changed]
    explained = detector.explain(records)
    named = np.mean([e["fields"][0]["field"] == field
                     for (field, _), e in zip(one_field_changed, explained, strict=True)])
    # compared with the embedding's nearest references instead: 0.65 of them, and the 60
    # records had 9 distinct nearest references between them
    assert named >= 0.75
    features = detector.feature_encoder_.transform(records)
    _, _, embedding_rows = neighbour_search(detector, features, 3)
    feature_rows = explanations.feature_neighbour_rows(detector, features, detector.n_neighbors)
    assert len(set(feature_rows[:, 0].tolist())) > 3 * len(set(embedding_rows[:, 0].tolist()))


@pytest.mark.parametrize("searched", [None, 500])
def test_feature_space_neighbours_are_the_exact_nearest(
        known_anomaly_model: Detector, one_field_changed: list[tuple[str, dict]],
        monkeypatch: pytest.MonkeyPatch, searched: int | None) -> None:
    """Against a brute-force numpy search over the same references (all of them, or the
    evenly spread sample searched when there are more than ``FEATURE_SEARCH_REFERENCES``)."""
    detector = known_anomaly_model
    if searched is not None:
        monkeypatch.setattr(explanations, "FEATURE_SEARCH_REFERENCES", searched)
    monkeypatch.setattr(explanations, "_feature_samples", type(explanations._feature_samples)())
    n = detector.reference_index_.n_unique_
    candidates = np.arange(n) if searched is None else np.linspace(0, n - 1, searched).astype(int)
    records = [record for _, record in one_field_changed]
    features = detector.feature_encoder_.transform(records)
    standard = detector.embedder_.standardise(features)
    reference_standard = detector.embedder_.standardise(
        explanations.reference_features(detector, candidates))
    expected = np.sort(((standard[:, None, :] - reference_standard[None]) ** 2).sum(-1), axis=1)
    rows = explanations.feature_neighbour_rows(detector, features, 5)
    assert np.isin(rows, candidates).all()
    found = ((standard[:, None, :] - detector.embedder_.standardise(
        explanations.reference_features(detector, rows))) ** 2).sum(-1)
    np.testing.assert_allclose(found, expected[:, :5], rtol=1e-4, atol=1e-4)


def test_an_explanation_shows_the_records_own_values_and_the_typical_category() -> None:
    """Values came back from the float32 features (4367234957 bytes as 4367240000.0, 0 as
    2.8e-07) and a categorical field had a deviation only: on-call read "method 1.0"."""
    detector = Detector(encoder="identity", label_fields=("is_anomaly",)).fit(
        generate_records(1_500, 0.0, seed=1))
    normal = next(r for r in generate_records(50, 0.0, seed=2) if r["service"] == "cache")
    huge = dict(normal, bytes_out=4_367_234_957)
    odd = dict(normal, method="RUN")  # the batch service's method, on the cache (9 in 10 GET)
    explained = detector.explain([huge, odd], n_fields=8)
    top = {f["field"]: f for f in explained[0]["fields"]}
    assert explained[0]["fields"][0]["field"] == "bytes_out"
    assert top["bytes_out"]["value"] == 4_367_234_957 and top["bytes_out"]["typical"] < 1e6
    method = next(f for f in explained[1]["fields"] if f["field"] == "method")
    assert method["value"] == "RUN" and method["typical"] == "GET"
    lacking = detector.explain([{k: v for k, v in huge.items() if k != "load"}], n_fields=12)
    assert next(f for f in lacking[0]["fields"] if f["field"] == "load")["value"] is None
    scored = detector.score_records([huge], explain=1)[0]
    assert scored["fields"][0]["value"] == 4_367_234_957
