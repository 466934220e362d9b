"""FeatureEncoder: inference, scaling, categorical switch, missing values, bad records, state."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from nearwatch.detector.errors import NotFittedError, RecordError, SchemaMismatchError
from nearwatch.detector.features.fields import (
    IQR_PER_SD,
    ONEHOT_WEIGHT,
    UNSEEN_CATEGORY_COST,
    stable_bucket,
)
from nearwatch.detector.features.schema import FeatureEncoder


def _kinds(encoder: FeatureEncoder) -> dict[str, str]:
    return {field["name"]: field["kind"] for field in encoder.fields_}


def _spec(encoder: FeatureEncoder, name: str) -> dict:
    return next(field for field in encoder.fields_ if field["name"] == name)


def _column(encoder: FeatureEncoder, features: np.ndarray, name: str) -> np.ndarray:
    return features[:, encoder.field_columns_[name][0]]


def _assert_json_only(value: object) -> None:
    if isinstance(value, dict):
        assert all(type(key) is str for key in value)
        for item in value.values():
            _assert_json_only(item)
    elif isinstance(value, list):
        for item in value:
            _assert_json_only(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)


TRAIN = [
    {"id": f"r{i}", "bytes": 10 * (i + 1), "ratio": [f"{i / 10:.1f}", i / 10][i % 2],
     "service": ["http", "dns"][i % 2], "tls": i % 3 == 0, "port": [80, 443, "http-alt"][i % 3],
     "note": None, "is_anomaly": False}
    for i in range(12)
]


def test_infers_kinds_and_excludes_id_labels_and_all_null_fields() -> None:
    encoder = FeatureEncoder(label_fields=("is_anomaly",)).fit(TRAIN)
    assert _kinds(encoder) == {"bytes": "numeric", "port": "categorical", "ratio": "numeric",
                               "service": "categorical", "tls": "boolean"}
    assert encoder.dropped_fields_ == ["note"]
    assert not any(name.startswith(("id", "is_anomaly", "note")) for name in encoder.feature_names_)
    assert sorted(encoder.field_columns_) == sorted(_kinds(encoder))
    columns = sorted(c for cols in encoder.field_columns_.values() for c in cols)
    assert columns == list(range(encoder.n_features_)) == list(range(len(encoder.feature_names_)))
    assert encoder.record_ids(TRAIN[:2] + [[1]]) == ["r0", "r1", None]
    # numbers, bools and numeric strings all coerce for a numeric field
    probe = encoder.transform([{"bytes": v} for v in (30, 30.0, "30", " 3e1 ", True)])
    column = _column(encoder, probe, "bytes")
    assert (column[:4] == column[0]).all() and column[4] < column[0]


def test_robust_scaling_matches_hand_computation() -> None:
    records = [{"x": float(v), "flat": 7, "tail": 1000 if v == 20 else v} for v in range(1, 21)]
    encoder = FeatureEncoder().fit(records)
    x = _spec(encoder, "x")  # 1..20: median 10.5, q25 5.75, q75 15.25 (linear interpolation)
    # scale: the robust sd IQR / 1.349 (9.5 / 1.349)
    assert (x["log"], x["center"], x["scale"]) == (False, 10.5, 9.5 / IQR_PER_SD)
    features = encoder.transform([{"x": 20.0, "flat": 7, "tail": 0}, {"x": 1, "flat": 9,
                                                                     "tail": 10}])
    assert _column(encoder, features, "x").tolist() == pytest.approx([1.349, -1.349])
    assert _spec(encoder, "flat")["scale"] == 1.0  # constant field: fallback scale 1.0
    assert _column(encoder, features, "flat").tolist() == [0.0, 2.0]
    # 1..19 and 1000: q99 - median = 803 > 5 * IQR (9.5), so log1p before scaling
    tail = _spec(encoder, "tail")
    assert tail["log"] is True and tail["median"] == 10.5
    assert tail["center"] == pytest.approx((math.log(11) + math.log(12)) / 2)
    q25, q75 = np.log1p(5) + 0.75 * (np.log1p(6) - np.log1p(5)), np.log1p(15) + 0.25 * (
        np.log1p(16) - np.log1p(15))
    assert tail["scale"] == pytest.approx((q75 - q25) / IQR_PER_SD)
    assert _column(encoder, features, "tail")[1] == pytest.approx(
        (np.log1p(10) - tail["center"]) / (q75 - q25) * IQR_PER_SD, rel=1e-6)


def test_zero_iqr_counter_falls_back_to_std_and_stays_finite() -> None:
    records = [{"errors": 0} for _ in range(95)] + [{"errors": 3} for _ in range(5)]
    encoder = FeatureEncoder().fit(records)
    spec = _spec(encoder, "errors")
    expected_std = np.log1p(np.array([0.0] * 95 + [3.0] * 5)).std()
    assert spec["log"] is True and spec["scale"] == pytest.approx(expected_std)
    features = encoder.transform([{"errors": 0}, {"errors": 3}, {"errors": 3e9}])
    # log1p, centred on the median (0) and divided by the std fallback: no inf from a 0 scale
    expected = np.log1p([0.0, 3.0, 3e9]) / expected_std
    np.testing.assert_allclose(features[:, 0], expected, rtol=1e-6)
    assert features[0, 0] == 0.0 and 0 < features[1, 0] < features[2, 0] < 100


@pytest.mark.parametrize(("center", "spread"), [(0.0, 1e-13), (1e7, 1e-6), (0.0, 1e-30)])
def test_a_small_spread_is_scaled_by_itself_not_treated_as_constant(center: float,
                                                                   spread: float) -> None:
    """Spreads below 1e-12 * max(1, |centre|) were scaled by 1.0: a 1000-sd deviation of a
    field measured in small units (or far from 0) moved its feature by ~0."""
    values = center + spread * np.random.default_rng(0).normal(size=2000)
    encoder = FeatureEncoder().fit(values.reshape(-1, 1))
    assert encoder.fields_[0]["scale"] == pytest.approx(spread, rel=0.1)
    features = encoder.transform(np.array([[center], [center + 1000 * spread]]))
    assert abs(features[1, 0] - features[0, 0]) > 500
    constant = FeatureEncoder().fit(np.full((50, 1), 5.0))
    assert constant.fields_[0]["scale"] == 1.0  # a constant field still scales by 1


def test_heavy_tailed_field_does_not_dominate_but_is_not_clipped() -> None:
    rng = np.random.default_rng(0)
    records = [{"bytes": float(b), "latency": float(t)}
               for b, t in zip(rng.lognormal(8, 2, 2000), rng.normal(50, 5, 2000), strict=True)]
    encoder = FeatureEncoder().fit(records)
    assert _spec(encoder, "bytes")["log"] is True and _spec(encoder, "latency")["log"] is False
    features = encoder.transform(records)
    spread = features.std(axis=0)
    assert 0.5 < spread[0] / spread[1] < 2.0
    # the same field without the log dominates: the rule is what keeps it comparable
    linear = FeatureEncoder(declared_schema={"fields": [
        {"name": "bytes", "kind": "numeric", "log": False},
        {"name": "latency", "kind": "numeric"}]}).fit(records)
    assert np.abs(features).max() < 10 < np.abs(linear.transform(records)[:, 0]).max()
    extreme = encoder.transform([{"bytes": 1e9, "latency": 50}, {"bytes": 1e12, "latency": 50}])
    assert extreme[1, 0] > extreme[0, 0] > features[:, 0].max()
    assert encoder.inverse_numeric("bytes", float(extreme[1, 0])) == pytest.approx(1e12, rel=1e-4)
    assert encoder.numeric_value_column("latency") == 1
    assert encoder.inverse_numeric("latency", 0.0) == pytest.approx(_spec(encoder, "latency")
                                                                    ["center"])


@pytest.mark.parametrize(("distinct", "encoding", "width"), [(3, "onehot", 4), (4, "hash", 5)])
def test_onehot_switches_to_hashing_above_max_onehot(distinct: int, encoding: str,
                                                     width: int) -> None:
    records = [{"proto": f"p{i % distinct}", "n": i} for i in range(20)]
    encoder = FeatureEncoder(max_onehot=3, hash_buckets=5).fit(records)
    assert _spec(encoder, "proto")["encoding"] == encoding
    assert len(encoder.field_columns_["proto"]) == width
    features = encoder.transform(records + [{"proto": "never-seen", "n": 1}])
    block = features[:, encoder.field_columns_["proto"]]
    # every record hits one column, at the field's column weight (4 values in 5 buckets:
    # sqrt(5 / 4) > 1, so the hashed weight is the one-hot one); a one-hot field's unseen
    # value is 3 from every known one, a hashed one's shares a bucket
    assert (block[:-1].sum(axis=1) == np.float32(ONEHOT_WEIGHT)).all()
    assert _spec(encoder, "proto")["weight"] == ONEHOT_WEIGHT
    if encoding == "onehot":
        assert encoder.feature_names_[encoder.field_columns_["proto"][-1]] == "proto=<other>"
        assert block[-1].tolist()[:3] == [0.0, 0.0, 0.0]
        assert np.linalg.norm(block[-1] - block[0]) == pytest.approx(UNSEEN_CATEGORY_COST)
        assert np.linalg.norm(block[1] - block[0]) == pytest.approx(1.0)
    else:
        assert int(np.argmax(block[-1])) == stable_bucket("never-seen", 5)
        assert block[-1].sum() == np.float32(ONEHOT_WEIGHT)


def test_a_missing_category_is_not_an_unseen_one_and_old_states_keep_their_weights() -> None:
    """A field never missing in training: a missing value costs 1 (as ``score`` imputes a
    typical value), not the unseen cost. A state from before the unseen weight encodes an
    unseen value as it did (its bundles score as they did)."""
    records = [{"proto": f"p{i % 3}", "n": i} for i in range(20)]
    encoder = FeatureEncoder().fit(records)
    known, missing, unseen = encoder.transform(
        [{"proto": "p0", "n": 1}, {"n": 1}, {"proto": "zz", "n": 1}])
    assert np.linalg.norm(missing - known) == pytest.approx(1.0)
    assert np.linalg.norm(unseen - known) == pytest.approx(UNSEEN_CATEGORY_COST)
    fields = encoder.to_state()["fields"]
    assert fields[1]["name"] == "proto"
    del fields[1]["unseen_weight"]
    old = FeatureEncoder()
    old._set_schema(fields, [])
    known, unseen = old.transform([{"proto": "p0", "n": 1}, {"proto": "zz", "n": 1}])
    assert np.linalg.norm(unseen - known) == pytest.approx(1.0)


def test_hash_buckets_are_stable_across_processes() -> None:
    # blake2b, not Python's per-process salted hash(): these numbers must never change
    assert [stable_bucket(value, 16) for value in ("http", "10.0.0.1", "")] == [
        int.from_bytes(__import__("hashlib").blake2b(v.encode(), digest_size=8).digest(),
                       "little") % 16 for v in ("http", "10.0.0.1", "")]
    assert stable_bucket("http", 1_000_003) == stable_bucket("http", 1_000_003)


def test_category_values_are_stringified_consistently() -> None:
    encoder = FeatureEncoder().fit([{"code": 3}, {"code": "3"}, {"code": 3.0}, {"code": True},
                                    {"code": "x"}])
    assert _spec(encoder, "code")["categories"] == ["3", "true", "x"]
    features = encoder.transform([{"code": 3}, {"code": "3"}, {"code": 3.0}, {"code": "true"}])
    assert (features[:3] == features[0]).all() and (features[3] == features[0]).sum() < 4


def test_boolean_accepts_lenient_values() -> None:
    encoder = FeatureEncoder().fit([{"tls": True}, {"tls": False}])
    values = [True, False, 1, 0, "true", " FALSE ", "1", "0", 1.0]
    assert encoder.transform([{"tls": v} for v in values])[:, 0].tolist() == [1, 0, 1, 0, 1, 0,
                                                                              1, 0, 1]
    with pytest.raises(RecordError, match="cannot interpret 2 as a boolean"):
        encoder.transform([{"tls": 2}])


def test_missing_values_are_imputed_with_indicator_columns() -> None:
    records = [{"a": float(i), "b": float(i), "c": ["x", "y"][i % 2], "d": i % 2 == 0}
               for i in range(10)]
    records[3] = {"a": None, "b": 3.0, "d": None}  # a, c and d missing once in training
    encoder = FeatureEncoder().fit(records)
    assert encoder.feature_names_ == ["a", "a__missing", "b", "c=<missing>", "c=x", "c=y",
                                      "c=<other>", "d", "d__missing"]
    missing = encoder.transform([{"b": 4.5}])[0].tolist()  # b at its median: all else missing
    onehot = pytest.approx(ONEHOT_WEIGHT)  # a category change costs 1, like a boolean flip
    assert missing == [0.0, 1.0, 0.0, onehot, 0.0, 0.0, 0.0, pytest.approx(5 / 9), 1.0]
    # medians: a (3 missing) 5.0, b 4.5
    present = encoder.transform([{"a": 5.0, "b": 4.5, "c": "x", "d": True}])[0].tolist()
    assert present == [0.0, 0.0, 0.0, 0.0, onehot, 0.0, 0.0, 1.0, 0.0]
    # b was never missing: no indicator, imputed to the median, the record is still scored
    matrix, errors = encoder.transform_records([{"a": 1.0, "c": "y", "d": False}])
    assert errors == [None] and matrix[0, 2] == 0.0
    nullable = FeatureEncoder(declared_schema={"fields": [
        {"name": "b", "kind": "numeric", "nullable": True}]}).fit(records)
    assert nullable.feature_names_ == ["b", "b__missing"]
    assert [encoder.numeric_value_column(f) for f in "abcdz"] == [0, 2, None, None, None]
    with pytest.raises(ValueError, match="'c' is not a numeric field of this schema"):
        encoder.inverse_numeric("c", 0.0)


def test_unseen_missing_category_goes_to_other() -> None:
    encoder = FeatureEncoder().fit([{"c": "x", "n": 1}, {"c": "y", "n": 2}])
    assert encoder.transform([{"c": None, "n": 1.5}])[:, :3].tolist() == [
        [0.0, 0.0, pytest.approx(ONEHOT_WEIGHT)]]


def test_unknown_fields_are_ignored_and_counted() -> None:
    encoder = FeatureEncoder(label_fields=("is_anomaly",)).fit(TRAIN)
    base = {k: v for k, v in TRAIN[0].items()}
    plain = encoder.transform([base])
    extra = encoder.transform([{**base, "zzz": 1, "yyy": {"nested": 1}}, {**base, "new": "v"}])
    assert encoder.unknown_fields_seen_ == 3
    assert (extra == plain).all()
    encoder.transform([{**base, "note": 5, "is_anomaly": True}])  # dropped/label: known fields
    assert encoder.unknown_fields_seen_ == 3
    nulls = {spec["name"]: None for spec in encoder.fields_}
    _, errors = encoder.transform_records(
        [{"other": 1}, {}, {"id": 7}, {"other": 1, "bytes": None}, nulls,
         {**nulls, "bytes": 5}])
    assert encoder.unknown_fields_seen_ == 5
    # No value for any of the model's fields (absent or null): nothing to score, a renamed
    # feed must not read as normal (an all-null record was scored as all-imputed before);
    # one value is enough: the other missing ones are imputed
    assert [error is not None for error in errors] == [True, True, True, True, True, False]
    assert "no value for any of the model's fields" in str(errors[0])
    assert errors[2].record_id == 7


BAD_VALUES = [
    ("bytes", "abc", "cannot convert 'abc' to a number"),
    ("bytes", math.nan, "nan is not a finite number"),
    ("bytes", math.inf, "inf is not a finite number"),
    ("bytes", -math.inf, "-inf is not a finite number"),
    ("bytes", {"a": 1}, "nested value is not allowed (got dict)"),
    ("bytes", [1, 2], "nested value is not allowed (got list)"),
    ("bytes", "1e400", "'1e400' is not a finite number"),
    ("service", {"a": 1}, "nested value is not allowed (got dict)"),
    ("service", math.nan, "nan is not a finite value"),
    ("tls", [True], "nested value is not allowed (got list)"),
    ("tls", "maybe", "cannot interpret 'maybe' as a boolean"),
]


@pytest.mark.parametrize(("field", "value", "reason"), BAD_VALUES)
def test_bad_value_is_a_per_record_error(field: str, value: object, reason: str) -> None:
    encoder = FeatureEncoder(label_fields=("is_anomaly",)).fit(TRAIN)
    good = [dict(record) for record in TRAIN[:4]]
    batch = [good[0], good[1], {**TRAIN[5], field: value}, good[2], good[3]]
    matrix, errors = encoder.transform_records(batch)
    assert [e is None for e in errors] == [True, True, False, True, True]
    error = errors[2]
    assert (error.field, error.record_index, error.record_id) == (field, 2, "r5")
    assert reason in error.reason and field in str(error)
    assert (matrix[2] == 0.0).all()
    np.testing.assert_array_equal(matrix[[0, 1, 3, 4]], encoder.transform(good))
    expected = re.escape(f"record 2 id 'r5': field {field!r}: ") + ".*" + re.escape(reason)
    with pytest.raises(RecordError, match=expected) as raised:
        encoder.transform(batch)
    assert raised.value.record_index == 2 and raised.value.field == field


def test_non_object_record_is_an_error_without_a_field() -> None:
    encoder = FeatureEncoder(label_fields=("is_anomaly",)).fit(TRAIN)
    matrix, errors = encoder.transform_records([TRAIN[0], [1, 2], "text", TRAIN[1]])
    assert errors[0] is None and errors[3] is None
    assert (errors[1].field, errors[1].reason) == (None, "record is not a JSON object (got list)")
    assert errors[2].reason == "record is not a JSON object (got str)"
    np.testing.assert_array_equal(matrix[[0, 3]], encoder.transform([TRAIN[0], TRAIN[1]]))
    assert not matrix[[1, 2]].any()
    with pytest.raises(RecordError, match="record 0: record is not a JSON object"):
        FeatureEncoder().fit([[1, 2]])


def test_fit_rejects_bad_training_values_with_the_record() -> None:
    with pytest.raises(RecordError, match=r"record 2 id 'c': field 'x': nan is not a finite"):
        FeatureEncoder().fit([{"id": "a", "x": 1.0}, {"id": "b", "x": 2.0},
                              {"id": "c", "x": math.nan}])


def test_state_round_trip_is_json_and_transforms_identically() -> None:
    records = [{**r, "bytes": r["bytes"] ** 3, "host": f"h{i}"} for i, r in enumerate(TRAIN)]
    records[4]["bytes"] = None
    encoder = FeatureEncoder(max_onehot=4, hash_buckets=8, label_fields=("is_anomaly",))
    encoder.fit(records)
    state = encoder.to_state()
    _assert_json_only(state)
    restored = FeatureEncoder.from_state(json.loads(json.dumps(state)))
    assert restored.version_ == encoder.version_ and len(encoder.version_) == 16
    assert restored.to_state() == state and restored.feature_names_ == encoder.feature_names_
    probe = records + [{"bytes": 1e15, "host": "unseen", "service": "new", "tls": "true"}]
    np.testing.assert_array_equal(restored.transform(probe), encoder.transform(probe))
    tampered = json.loads(json.dumps(state))
    tampered["fields"][0]["scale"] = 2.0
    with pytest.raises(SchemaMismatchError,
                       match=f"encoder state version '{state['version']}' does not match its"):
        FeatureEncoder.from_state(tampered)


def test_version_changes_with_the_schema() -> None:
    a = FeatureEncoder().fit([{"x": 1}, {"x": 2}])
    b = FeatureEncoder().fit([{"x": 1}, {"x": 3}])
    assert a.version_ != b.version_


def test_key_order_does_not_change_the_encoder() -> None:
    shuffled = [dict(reversed(list(record.items()))) for record in TRAIN]
    a = FeatureEncoder(label_fields=("is_anomaly",)).fit(TRAIN)
    b = FeatureEncoder(label_fields=("is_anomaly",)).fit(shuffled)
    assert a.to_state() == b.to_state() and a.version_ == b.version_
    np.testing.assert_array_equal(a.transform(shuffled), b.transform(TRAIN))


def _array_data() -> np.ndarray:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(300, 12))
    data[:, 3] = rng.lognormal(5, 2, 300)  # heavy-tailed: log1p
    data[:, 7] = 4.0  # constant: fallback scale
    data[:, 10] = (rng.random(300) < 0.03) * 50.0  # mostly zero: zero IQR
    return data


def test_ndarray_path_equals_dict_path() -> None:
    data = _array_data()
    records = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in data]
    from_array = FeatureEncoder().fit(data)
    from_dicts = FeatureEncoder().fit(records)
    assert from_array.to_state() == from_dicts.to_state()  # includes natural order f2 < f10
    assert [f["name"] for f in from_array.fields_] == [f"f{j}" for j in range(12)]
    expected = from_dicts.transform(records)
    assert expected.dtype == np.float32 and expected.shape == (300, 12)
    np.testing.assert_array_equal(from_array.transform(data), expected)
    np.testing.assert_array_equal(from_dicts.transform(data), expected)
    np.testing.assert_array_equal(from_array.transform(iter(records)), expected)  # any iterable


def test_ndarray_bad_rows_and_width_mismatch() -> None:
    data = _array_data()
    encoder = FeatureEncoder().fit(data)
    probe = data[:4].copy()
    probe[1, 5], probe[2, 0] = np.nan, -np.inf
    matrix, errors = encoder.transform_records(probe)
    assert errors[0] is None and errors[3] is None
    assert (errors[1].field, errors[1].record_index) == ("f5", 1)
    assert errors[2].reason == "-inf is not a finite number"
    assert not matrix[[1, 2]].any()
    np.testing.assert_array_equal(matrix[[0, 3]], encoder.transform(data[[0, 3]]))
    with pytest.raises(ValueError, match="array has 11 columns, the encoder expects 12"):
        encoder.transform(data[:, :11])
    with pytest.raises(ValueError, match=r"a 2-D array \(records x fields\), got shape \(12,\)"):
        encoder.transform(data[0])
    with pytest.raises(RecordError, match="record 0: field 'f0'"):
        FeatureEncoder().fit(np.array([[np.nan, 1.0], [2.0, 3.0]]))
    categorical = FeatureEncoder().fit([{"c": "x"}])
    with pytest.raises(ValueError, match="this encoder has non-numeric fields: pass records"):
        categorical.transform(data)


def test_declared_schema_forces_kinds_and_order() -> None:
    schema = {"fields": [{"name": "port", "kind": "categorical"},
                         {"name": "bytes", "kind": "numeric"}]}
    records = [{"bytes": i, "port": [80, 443][i % 2], "extra": "ignored"} for i in range(10)]
    encoder = FeatureEncoder(declared_schema=schema).fit(records)
    assert encoder.feature_names_ == ["port=443", "port=80", "port=<other>", "bytes"]
    for bad_schema, message in (
        ({"fields": [{"name": "x", "kind": "text"}]}, "declared field 'x': kind must be one of"),
        ({"columns": []}, 'declared_schema must look like {"fields"'),
        ({"fields": [{"name": "x", "kind": "numeric", "nulable": True}]},
         "declared field 'x': allowed keys are"),
        ({"fields": [{"name": "id", "kind": "numeric"}]},
         "declared field 'id' is duplicated or is the id/label"),
        ({"fields": [{"kind": "numeric"}]}, "needs a non-empty string 'name'"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            FeatureEncoder(declared_schema=bad_schema).fit(records)
    with pytest.raises(ValueError, match="field 'gone' has no non-null values"):
        FeatureEncoder(declared_schema={"fields": [{"name": "gone", "kind": "numeric"}]}).fit(
            records)


def test_unfitted_encoder_raises() -> None:
    with pytest.raises(NotFittedError, match="FeatureEncoder is not fitted: call fit"):
        FeatureEncoder().transform([{"x": 1}])
    with pytest.raises(NotFittedError, match="FeatureEncoder is not fitted: call fit"):
        FeatureEncoder().to_state()


def test_a_few_bad_strings_do_not_turn_a_numeric_field_into_a_category() -> None:
    records = [{"id": i, "cpu": float(i)} for i in range(50)] + [{"id": 50, "cpu": "n/a"}]
    with pytest.raises(RecordError, match="field 'cpu'") as caught:
        FeatureEncoder().fit(records)
    assert caught.value.record_index == 50
    encoder = FeatureEncoder().fit(records[:50])
    assert encoder.fields_[0]["kind"] == "numeric"
    _, errors = encoder.transform_records(records[48:])
    assert errors[:2] == [None, None] and errors[2].field == "cpu"
    # a field of mostly words is a category
    words = [{"cpu": "high"}] * 10 + [{"cpu": 3}]
    assert FeatureEncoder().fit(words).fields_[0]["kind"] == "categorical"


def test_categorical_fields_weigh_like_one_field() -> None:
    # A category change costs a distance of 1 (two columns at 1/sqrt(2)), like a boolean flip;
    # a hashed identifier weighs less the more values share a bucket.
    records = [{"kind": ["a", "b"][i % 2], "client": f"c{i}", "ok": i % 2 == 0}
               for i in range(64)]
    encoder = FeatureEncoder(max_onehot=8, hash_buckets=16).fit(records)
    rows = encoder.transform([{"kind": "a", "client": "c1", "ok": True},
                              {"kind": "b", "client": "c1", "ok": False}])
    kind, ok = encoder.field_columns_["kind"], encoder.field_columns_["ok"]
    assert np.linalg.norm(rows[0, kind] - rows[1, kind]) == pytest.approx(1.0)
    assert np.linalg.norm(rows[0, ok] - rows[1, ok]) == pytest.approx(1.0)
    assert _spec(encoder, "client")["weight"] == pytest.approx(ONEHOT_WEIGHT * 0.5)  # 16 / 64
    restored = FeatureEncoder.from_state(encoder.to_state())
    np.testing.assert_array_equal(restored.transform(records), encoder.transform(records))


def test_values_beyond_float32_once_scaled_are_errors_and_huge_ones_are_clipped() -> None:
    encoder = FeatureEncoder(label_fields=("is_anomaly",)).fit(TRAIN)
    base = dict(TRAIN[0])
    matrix, errors = encoder.transform_records(
        [{**base, "bytes": 1e300}, {**base, "bytes": -1e41}, {**base, "bytes": 1e30}, base])
    assert [error.field if error else None for error in errors] == ["bytes", "bytes", None, None]
    assert "-1e+41 is out of range" in str(errors[1])
    assert np.isfinite(matrix).all() and matrix[2].max() == pytest.approx(1e15)  # clipped
    arrays = FeatureEncoder().fit(np.arange(20.0).reshape(10, 2))
    features, array_errors = arrays.transform_records(np.array([[1e40, 0.0], [1e30, 1.0]]))
    assert array_errors[0] is not None and array_errors[0].field == "f0"
    assert array_errors[1] is None and np.isfinite(features).all()


def test_a_field_training_always_had_is_counted_when_missing() -> None:
    """Imputed without an indicator (nothing in the features says it was missing): counted,
    per field, null and absent alike; a field training had missing is not counted."""
    encoder = FeatureEncoder().fit([{"a": 1.0, "b": None, "c": "x"}, {"a": 2.0, "b": 1, "c": "y"},
                                    {"a": 3.0, "b": 2, "c": "x"}])
    encoder.transform([{"a": 1.0, "b": None, "c": "x"}])
    assert encoder.missing_fields_seen_ == {}
    encoder.transform([{"b": 1}, {"a": None, "b": 2, "c": None}, {"a": 1.0, "c": "x"}])
    assert encoder.missing_fields_seen_ == {"a": 2, "c": 2}
    encoder.transform([{"b": 3}])
    assert encoder.missing_fields_seen_ == {"a": 3, "c": 3}


def test_a_field_of_nested_values_only_is_not_a_feature_and_says_so() -> None:
    """Dropped with a warning, as scoring ignores an unknown nested field; a field that mixes
    nested values with plain ones still names the record with the nested one."""
    rows = [{"bytes": 10 + i, "billing": {"zip": "28"} if i % 2 else None} for i in range(6)]
    with pytest.warns(UserWarning, match="field 'billing' holds only nested objects or arrays"):
        encoder = FeatureEncoder().fit(rows)
    assert encoder.dropped_fields_ == ["billing"] and list(encoder.field_columns_) == ["bytes"]
    encoder.transform([{"bytes": 3, "billing": {"zip": "99"}}])
    assert encoder.unknown_fields_seen_ == 0
    rows[2]["billing"] = 5.0
    with pytest.raises(RecordError, match="record 1: field 'billing': nested value"):
        FeatureEncoder().fit(rows)


def test_a_hashed_field_training_always_had_is_counted_when_missing() -> None:
    """A hashed field's missing value shares a bucket with real values: counted as missing
    when training never lacked it, not when it did; states from before are not counted."""
    always = FeatureEncoder(max_onehot=3).fit([{"merchant": f"m{i}", "n": i} for i in range(40)])
    assert _spec(always, "merchant")["encoding"] == "hash"
    always.transform([{"n": 1}, {"merchant": None, "n": 2}, {"merchant": "m1", "n": 3}])
    assert always.missing_fields_seen_ == {"merchant": 2}
    sometimes = FeatureEncoder(max_onehot=3).fit(
        [{"merchant": f"m{i}" if i % 5 else None, "n": i} for i in range(40)])
    sometimes.transform([{"n": 1}])
    assert sometimes.missing_fields_seen_ == {}
    fields = always.to_state()["fields"]
    del next(f for f in fields if f["name"] == "merchant")["missing_seen"]
    old = FeatureEncoder()
    old._set_schema(fields, [])
    old.transform([{"n": 1}])
    assert old.missing_fields_seen_ == {}


def test_an_unseen_category_of_a_record_that_is_an_error_is_not_counted() -> None:
    """The record is answered with its error, not scored: its new value is not counted (the
    rule divides by the records scored)."""
    encoder = FeatureEncoder().fit([{"a": i, "s": "x" if i % 2 else "y"} for i in range(20)])
    _, errors = encoder.transform_records([{"a": "n/a", "s": "zzz"}, {"a": 1, "s": "qq"}])
    assert errors[0] is not None and errors[1] is None
    assert encoder.unseen_categories_seen_ == {"s": 1}
