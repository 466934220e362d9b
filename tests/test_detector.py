"""Detector API: fit/score/p_value/predict/explain/score_records on seeded data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from nearwatch.detector import CalibrationError, Detector, NotFittedError, SchemaMismatchError
from nearwatch.detector.errors import CalibrationWarning
from nearwatch.detector.synthetic import generate_records


def _auroc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    # Mann-Whitney U statistic: P(score of an anomaly > score of a normal).
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n_pos = int(is_anomaly.sum())
    n_neg = len(scores) - n_pos
    return float((ranks[is_anomaly].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def telemetry() -> tuple[list[dict], list[dict], np.ndarray]:
    train = [r for r in generate_records(2_000, 0.0, seed=1)]
    test = generate_records(1_000, 0.05, seed=2)
    return train, test, np.array([r["is_anomaly"] for r in test])


@pytest.fixture(scope="module")
def fitted(telemetry: tuple) -> Detector:
    train, _, _ = telemetry
    return Detector(encoder="identity", label_fields=("is_anomaly",)).fit(train)


def test_unfitted_detector_raises_clear_error() -> None:
    detector = Detector()
    for method in (detector.score, detector.predict, detector.p_value, detector.explain):
        with pytest.raises(NotFittedError, match="not fitted"):
            method(np.zeros((2, 3)))


def test_fitted_attributes_and_threshold(fitted: Detector) -> None:
    assert fitted.n_reference_ == 2_000
    assert 299 <= fitted.n_calibration_ <= 1_000
    assert fitted.threshold_ > 0
    assert 0 < fitted.fpr_bound_ <= fitted.alpha
    assert fitted.certified_ is True
    assert fitted.training_mode_ == "self_supervised"


def test_scores_rank_injected_anomalies_first(fitted: Detector, telemetry: tuple) -> None:
    _, test, is_anomaly = telemetry
    scores = fitted.score(test)
    assert scores.shape == (len(test),)
    assert _auroc(scores, is_anomaly) > 0.9
    p_values = fitted.p_value(test)
    assert ((p_values > 0) & (p_values <= 1)).all()
    # p-values decrease as scores increase
    order = np.argsort(scores)
    assert (np.diff(p_values[order]) <= 1e-12).all()
    flags = fitted.predict(test)
    assert flags.dtype == bool
    # alpha = 1%: few false alarms; the point anomalies (half of them) are caught
    assert flags[~is_anomaly].mean() < 0.03
    assert flags[is_anomaly].mean() > 0.25


def test_score_records_answers_every_record(fitted: Detector, telemetry: tuple) -> None:
    _, test, _ = telemetry
    good = test[:3]
    bad = [
        dict(test[3], latency_ms="abc"),
        dict(test[4], cpu_pct=float("nan")),
        dict(test[5], bytes_out={"nested": 1}),
        ["not", "a", "record"],
    ]
    results = fitted.score_records(good[:2] + bad + good[2:])
    assert [r["index"] for r in results] == list(range(7))
    assert [("error" in r) for r in results] == [False, False, True, True, True, True, False]
    assert "latency_ms" in results[2]["error"] and results[2]["field"] == "latency_ms"
    assert results[3]["field"] == "cpu_pct"
    assert results[4]["field"] == "bytes_out"
    assert results[5]["id"] is None and "not a JSON object" in results[5]["error"]
    alone = fitted.score_records(good)
    mixed_scores = [results[i]["score"] for i in (0, 1, 6)]
    assert mixed_scores == pytest.approx([r["score"] for r in alone], rel=1e-6)
    first = results[0]
    assert first["id"] == good[0]["id"]
    assert first["threshold"] == fitted.threshold_
    assert first["certified"] is True and first["fpr_bound"] == fitted.fpr_bound_
    assert len(first["neighbours"]) == 3
    assert first["neighbours"][0]["distance"] <= first["neighbours"][2]["distance"]


def test_score_records_refuses_other_schema_version(fitted: Detector, telemetry: tuple) -> None:
    with pytest.raises(SchemaMismatchError, match="schema version"):
        fitted.score_records(telemetry[1][:2], schema_version="0000000000000000")
    assert fitted.score_records(telemetry[1][:1], schema_version=fitted.schema_version_)


def test_explain_names_deviating_field(fitted: Detector, telemetry: tuple) -> None:
    _, test, _ = telemetry
    normal = next(r for r in test if not r["is_anomaly"])
    spiked = dict(normal, latency_ms=float(normal["latency_ms"]) * 500)
    explanation = fitted.explain([spiked])[0]
    assert explanation["id"] == spiked["id"]
    assert explanation["fields"][0]["field"] == "latency_ms"
    assert explanation["fields"][0]["value"] == pytest.approx(spiked["latency_ms"], rel=1e-3)
    assert explanation["fields"][0]["typical"] < spiked["latency_ms"] / 50
    neighbour_ids = {n["id"] for n in explanation["neighbours"]}
    assert all(isinstance(i, str) and i.startswith("r") for i in neighbour_ids)
    assert explanation["is_anomaly"] is True


def test_duplicates_and_zero_distances() -> None:
    rows = np.repeat(np.arange(10, dtype=np.float32)[:, None], 80, axis=0)  # 800 rows, 10 values
    data = np.hstack([rows, rows * 2])
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(data)
    scores = detector.score(data[:5])
    assert np.isfinite(scores).all() and (scores == 0).all()
    assert not detector.predict(data[:50]).any()
    assert detector.predict(np.array([[100.0, -100.0]], dtype=np.float32))[0]


def test_too_few_calibration_records_says_how_many() -> None:
    data = np.random.default_rng(0).normal(size=(300, 4))
    with pytest.raises(CalibrationError, match="at least 299 calibration records"):
        Detector(encoder="identity", alpha=0.01, delta=0.05, strict=True).fit(data)
    with pytest.warns(CalibrationWarning, match="needs at least 598 normal records"):
        loose = Detector(encoder="identity", alpha=0.01, delta=0.05).fit(data)
    assert loose.certified_ is False and loose.fpr_bound_ > 0.01
    # Without a threshold, scores and p-values still work.
    detector = Detector(encoder="identity", alpha=None).fit(data)
    assert detector.threshold_ is None
    assert detector.p_value(data[:3]).shape == (3,)
    with pytest.raises(NotFittedError, match="alpha=None"):
        detector.predict(data[:3])


def test_supervision_seam_validates_indices() -> None:
    data = np.random.default_rng(0).normal(size=(700, 3))
    with pytest.raises(ValueError, match="labels has 3 entries"):
        Detector(encoder="identity").fit(data, labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        Detector(encoder="identity").fit(data, pairs=[(0, 1, 1), (0, 9_999, 0)])
    detector = Detector(encoder="identity").fit(data, labels=[i % 2 for i in range(700)])
    assert detector.training_mode_ == "supervised"


def test_invalid_parameters_are_refused() -> None:
    data = np.zeros((10, 2))
    for kwargs, message in (({"n_neighbors": 0}, "n_neighbors must be a positive integer"),
                            ({"metric": "manhattan"}, "metric must be"),
                            ({"alpha": 1.5}, "alpha must be a number in"),
                            ({"encoder": "magic"}, "encoder must be one of")):
        with pytest.raises(ValueError, match=message):
            Detector(**kwargs).fit(data)


@pytest.mark.parametrize("density_power", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_scores_equal_brute_force_numpy(metric: str, density_power: float) -> None:
    """faiss against numpy: mean distance to the 4 nearest of R and C, divided by
    (mean radius of the 4 nearest references in R + floor) ** power, a radius being a
    reference's mean distance to its 4 nearest other references."""
    rng = np.random.default_rng(5)
    train = rng.normal(size=(900, 6)) * rng.uniform(0.1, 10, size=6)
    queries = rng.normal(size=(50, 6)) * 3
    detector = Detector(encoder="identity", metric=metric, n_neighbors=4, alpha=None,
                        density_power=density_power).fit(train[:600], calibration=train[600:])

    def features(data: np.ndarray) -> np.ndarray:
        matrix = detector.feature_encoder_.transform(data).astype(np.float64)
        if metric == "cosine":
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix

    def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    to_all = distances(features(queries), features(train))  # served: R and C
    expected = np.sort(to_all, axis=1)[:, :4].mean(axis=1)
    if density_power:
        references = features(train[:600])
        among = distances(references, references)
        np.fill_diagonal(among, np.inf)
        radii = np.sort(among, axis=1)[:, :4].mean(axis=1)
        nearest = np.argsort(distances(features(queries), references), axis=1)[:, :4]
        floor = 1e-3 * radii.mean() + 1e-12
        expected = expected / (radii[nearest].mean(axis=1) + floor) ** density_power
    np.testing.assert_allclose(detector.score(queries), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("position", [0, 10, 49, 70])
def test_a_bad_training_record_is_named_by_its_position_in_the_input(position: int) -> None:
    # The split shuffles records into references and calibration records: the error must
    # still name the record where the caller put it.
    records = generate_records(80, anomaly_rate=0.0, seed=3)
    records[position] = {**records[position], "latency_ms": "fast"}
    with pytest.raises(ValueError, match=rf"^record {position} id '{records[position]['id']}'"):
        Detector(encoder="identity", alpha=None, random_state=0).fit(records)


def test_a_bad_known_anomaly_is_named_by_its_position_in_x() -> None:
    records = generate_records(80, anomaly_rate=0.0, seed=3)
    records[45] = {**records[45], "latency_ms": "fast"}
    flags = [0] * 40 + [1] * 10 + [0] * 30
    with pytest.raises(ValueError, match=r"^record 45 id 'r0000045'"):
        Detector(encoder="identity", alpha=None, random_state=0).fit(records, y=flags)


def test_a_bad_explicit_calibration_record_is_numbered_after_x() -> None:
    # Its number continues after X's rows, flagged ones included (never an X row's number).
    records = generate_records(80, anomaly_rate=0.0, seed=3)
    calibration = generate_records(40, anomaly_rate=0.0, seed=4)
    calibration[2] = {**calibration[2], "latency_ms": "fast"}
    with pytest.raises(ValueError, match=r"^record 82 id 'r0000002'"):
        Detector(encoder="identity", alpha=None, random_state=0).fit(
            records, y=[0] * 70 + [1] * 10, calibration=calibration)


def test_explaining_a_clipped_value_says_so() -> None:
    records = generate_records(800, anomaly_rate=0.0, seed=5)
    detector = Detector(encoder="identity", alpha=None, random_state=0).fit(records)
    huge = {**records[0], "cpu_pct": 1e25}  # finite in float32 once scaled, beyond the clip
    (explanation,) = detector.explain([huge], n_fields=1)
    (top,) = explanation["fields"]
    assert top["field"] == "cpu_pct" and top["clipped"] is True and top["value"] > 1e15
    (plain,) = detector.explain([records[1]], n_fields=3)
    assert all("clipped" not in field for field in plain["fields"])


@pytest.mark.parametrize("told", ["anomalies", "labels"])
def test_the_identity_encoder_says_it_cannot_learn_from_what_it_is_told(told: str) -> None:
    train = generate_records(700, 0.0, seed=1)
    anomalies = [r for r in generate_records(300, 0.2, seed=2) if r["is_anomaly"]]
    given = ({"anomalies": anomalies} if told == "anomalies"
             else {"labels": [r["service"] for r in train]})
    with pytest.warns(UserWarning, match="encoder='identity' learns nothing.*use encoder="):
        detector = Detector(encoder="identity", label_fields=("is_anomaly",)).fit(train, **given)
    plain = Detector(encoder="identity", label_fields=("is_anomaly",)).fit(train)
    np.testing.assert_array_equal(detector.score(anomalies), plain.score(anomalies))


def test_a_category_no_training_record_had_is_flagged(fitted: Detector) -> None:
    """A one-hot field's unseen value costs 3, a change between known values 1: a new region
    is news, a record moved to another known region is not."""
    normals = [r for r in generate_records(300, 0.0, seed=7)]
    regions = ("eu-west", "us-east", "ap-south")
    moved = [dict(r, region=regions[(regions.index(r["region"]) + 1) % 3]) for r in normals]
    unseen = [dict(r, region="mars-north") for r in normals]
    assert fitted.predict(moved).mean() <= 0.05
    assert fitted.predict(unseen).mean() >= 0.9
    explained = fitted.explain(unseen[:20], n_fields=1)
    assert all(e["fields"][0]["field"] == "region" for e in explained)


def test_scoring_records_that_lack_a_field_training_always_had_warns(fitted: Detector) -> None:
    """Scored as if the field held a typical value: a ×1000 latency is flagged, the same
    record without latency is not, and the Python API said nothing."""
    from nearwatch.detector.errors import MissingFieldsWarning

    normal = next(r for r in generate_records(50, 0.0, seed=9))
    spiked = dict(normal, latency_ms=normal["latency_ms"] * 1000)
    lacking = {k: v for k, v in spiked.items() if k != "latency_ms"}
    with pytest.warns(MissingFieldsWarning, match="records lack 'latency_ms', which every"):
        scores = fitted.score([lacking, spiked])
    assert scores[0] < scores[1]  # the spike is gone with the field
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingFieldsWarning)
        fitted.score([normal])


def test_an_array_scored_by_a_model_of_named_fields_says_its_column_order() -> None:
    """An array is read in the model's field order (natural order of the names), not the
    order of the user's file: said, naming the order."""
    rows = np.random.default_rng(0).normal(size=(700, 3))
    records = [{"hour": a, "amount": b, "age": c} for a, b, c in rows]
    detector = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(records)
    with pytest.warns(UserWarning, match=r"in this order: \['age', 'amount', 'hour'\]"):
        detector.score(rows[:3, [2, 1, 0]])
    plain = Detector(encoder="identity", alpha=0.05, delta=0.1).fit(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.score(rows[:3])
