"""Numeric batches (``worker/matrix.py``): a matrix in, answer columns out.

The scores must be exactly ``Detector.score``'s for the same rows; a bad row is an error
naming the row and the field and is dead-lettered; an unreadable batch answers every row;
through a real worker node the answers, alert events and dead letters all arrive.
Redis DB 6 is this module's (its worker node must not share a queue with another model's).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from nearwatch.detector import Detector
from nearwatch.detector.store.registry import ModelRegistry
from nearwatch.detector.synthetic import telemetry_matrix
from nearwatch.worker.answer_checks import accept_answer
from nearwatch.worker.matrix import MatrixAnswer, MatrixPayloadError, encode_matrix
from nearwatch.worker.records import dump_result
from nearwatch.worker.runtime import BatchScorer, LoggedDeadLetters, ModelHolder

from .service_fixtures import (
    flushed_redis,
    http_get,
    metric_value,
    scoring_client,
    start_worker_node,
    wait_for,
)

MATRIX_REDIS = "redis://127.0.0.1:6379/6"


@pytest.fixture(scope="module")
def numeric_model(tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Detector, ModelRegistry, np.ndarray, list[str]]:
    """A model of the telemetry's numeric fields (named records), its registry, live rows."""
    matrix, fields, labels = telemetry_matrix(2600, anomaly_rate=0.05, seed=3)
    train = matrix[:2000][~labels[:2000]]
    detector = Detector(encoder="identity", alpha=0.05, random_state=0).fit(
        [dict(zip(fields, row, strict=True)) for row in train.tolist()])
    root = tmp_path_factory.mktemp("matrix")
    detector.save(root / "bundle")
    registry = ModelRegistry(root / "models")
    registry.add(root / "bundle", promote=True)
    return detector, registry, matrix[2000:], fields


def _scorer(registry: ModelRegistry) -> tuple[BatchScorer, LoggedDeadLetters]:
    holder = ModelHolder(registry, 60.0)
    assert holder.load_initial()
    letters = LoggedDeadLetters()
    return BatchScorer(holder, letters), letters


def _over_the_wire(scorer: BatchScorer, payload: dict[str, Any], rows: int) -> MatrixAnswer:
    """Payload and answer through JSON, as a worker receives and pushes them."""
    answer = scorer.score_matrix(orjson.loads(orjson.dumps(payload)))
    return MatrixAnswer.from_wire(json.loads(dump_result(answer)), rows)


def test_matrix_scores_are_the_detectors_and_bad_rows_name_their_field(
        numeric_model: Any) -> None:
    detector, registry, live, fields = numeric_model
    scorer, letters = _scorer(registry)
    rows = live[:300].copy()
    rows[3, fields.index("bytes_out")] = np.nan
    rows[7, fields.index("cpu_pct")] = np.inf
    ids = [f"q{i}" for i in range(len(rows))]
    # columns in another order, plus one the model does not read: both are fine
    extra = np.column_stack([rows[:, ::-1], np.ones(len(rows))])
    answer = _over_the_wire(scorer, encode_matrix(extra, [*fields[::-1], "unused"], ids),
                            len(rows))

    good = [i for i in range(len(rows)) if i not in (3, 7)]
    records = [dict(zip(fields, rows[i], strict=True)) for i in good]
    assert np.array_equal(answer.score[good], detector.score(records))
    assert np.array_equal(answer.p_value[good], detector.p_value(records))
    assert np.array_equal(answer.is_anomaly[good], detector.predict(records))
    assert 0 < answer.is_anomaly.sum() < len(good)  # the data has anomalies, not only them
    assert answer.errors == {
        3: "record 'q3': field 'bytes_out': nan is not a finite number",
        7: "record 'q7': field 'cpu_pct': inf is not a finite number"}
    assert np.isnan(answer.score[[3, 7]]).all() and not answer.is_anomaly[[3, 7]].any()
    assert (answer.model_version, answer.threshold, answer.certified) == (
        registry.current_version(), detector.threshold_, detector.certified_)
    # neighbours for exactly the flagged rows, as score_records gives them
    flagged = np.flatnonzero(answer.is_anomaly).tolist()
    assert sorted(answer.neighbours) == flagged
    by_records = detector.score_records([dict(zip(fields, rows[i], strict=True))
                                         for i in flagged])
    assert [answer.neighbours[i] for i in flagged] == [r["neighbours"] for r in by_records]
    # each bad row is a dead letter carrying its record, named by its id
    assert [(e["id"], e["reason"]) for e in letters.entries] == [
        ("q3", "invalid_field"), ("q7", "invalid_field")]


def test_float32_rows_keep_their_digits_and_rows_without_ids_are_named_by_position(
        numeric_model: Any) -> None:
    detector, registry, live, fields = numeric_model
    scorer, letters = _scorer(registry)
    rows = np.round(live[:20], 1).astype(np.float32)
    rows[5, 0] = np.nan
    answer = _over_the_wire(scorer, encode_matrix(rows, fields, first_position=41), len(rows))
    assert answer.errors == {5: f"record #46: field {fields[0]!r}: nan is not a finite number"}
    good = [i for i in range(20) if i != 5]
    assert np.array_equal(answer.score[good], detector.score(
        [dict(zip(fields, rows[i].astype(np.float64), strict=True)) for i in good]))
    from nearwatch.worker.matrix import RowRecords, decode_matrix

    batch = decode_matrix(encode_matrix(rows, fields, first_position=41), fields)
    record = RowRecords(batch, fields, "id")[0]
    assert record == {"id": "#41", **{name: float(str(value))
                                      for name, value in zip(fields, rows[0], strict=True)}}
    assert all(len(repr(value)) <= 12 for value in record.values() if isinstance(value, float))


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.update(fields=p["fields"][1:], data=encode_matrix(
        np.zeros((p["rows"], len(p["fields"]) - 1)), p["fields"][1:])["data"]),
     "no column for the model's field(s) 'latency_ms'"),
    (lambda p: p.update(data="not base64!"), "'data' is not base64"),
    (lambda p: p.update(data=p["data"][:-8]), "'data' holds"),
    (lambda p: p.update(dtype="int8"), "'dtype' must be float32 or float64"),
    (lambda p: p.update(ids=["a"]), "'ids' must be a list of 4 ids or null"),
    (lambda p: p.update(ids=[1.5, 2, 3, 4]), "'ids' must be strings, whole numbers or null"),
    (lambda p: p.update(ids=["a", "#12", "b", "c"]), "id '#12' is reserved"),
    (lambda p: p.update(dtype=["float64"]), "'dtype' must be float32 or float64"),
    (lambda p: p.update(first_position=0), "'first_position' must be a whole number from 1"),
    (lambda p: p.update(fields=["x"] * len(p["fields"])), "'fields' names a field twice"),
])
def test_an_unreadable_numeric_batch_answers_every_row_with_why(
        numeric_model: Any, change: Any, message: str) -> None:
    _, registry, live, fields = numeric_model
    scorer, letters = _scorer(registry)
    payload = encode_matrix(live[:4], fields)
    change(payload)
    answer = _over_the_wire(scorer, payload, 4)
    assert sorted(answer.errors) == [0, 1, 2, 3]
    assert all(message in error and error.startswith("numeric batch of 4 rows: ")
               for error in answer.errors.values()), answer.errors
    assert np.isnan(answer.score).all()
    assert [e["reason"] for e in letters.entries] == ["invalid_batch"]  # one for the batch
    wire = scorer.score_matrix(orjson.loads(orjson.dumps(payload)))
    assert wire["error"] == answer.batch_error and "errors" not in wire  # said once, not per row
    assert repr(answer).startswith("MatrixAnswer(rows=4, start=0, batch_error=")


def test_a_payload_without_a_row_count_fails_and_a_wrong_answer_is_refused(
        numeric_model: Any) -> None:
    _, registry, live, fields = numeric_model
    scorer, _ = _scorer(registry)
    with pytest.raises(MatrixPayloadError, match="JSON object"):
        scorer.score_matrix(["not", "a", "batch"])
    huge = {**encode_matrix(live[:4], fields), "rows": 10**9}  # no row count to answer
    with pytest.raises(MatrixPayloadError, match="'rows' must be a whole number"):
        scorer.score_matrix(huge)
    good = scorer.score_matrix(encode_matrix(live[:4], fields))

    class Batch:
        task, records = "nearwatch.score_matrix_batch", [None] * 5

    accepted, problem = accept_answer(Batch(), good, "id")
    assert accepted is None and problem == "undecodable answer: answer has 4 rows for 5"
    with pytest.raises(ValueError, match="needs shape"):
        encode_matrix(live[:4], fields[1:])
    with pytest.raises(ValueError, match="numeric"):
        encode_matrix(np.array([["a"] * len(fields)]), fields)


def test_ids_none_ids_numpy_ids_a_failing_model_and_no_threshold(
        numeric_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    detector, registry, live, fields = numeric_model
    scorer, letters = _scorer(registry)
    rows = live[:6].copy()
    rows[1, 0] = rows[4, 0] = np.nan
    payload = encode_matrix(rows, fields, np.array([10, 11, 12, 13, 14, 15]), first_position=7)
    assert payload["ids"] == [10, 11, 12, 13, 14, 15]  # numpy ids travel as JSON numbers
    payload["ids"][4] = None  # a row without an id is named by its position
    answer = _over_the_wire(scorer, payload, 6)
    assert answer.errors == {1: f"record 11: field {fields[0]!r}: nan is not a finite number",
                             4: f"record #11: field {fields[0]!r}: nan is not a finite number"}
    # an unexpected failure of the model answers every row (and is dead-lettered once)
    import nearwatch.worker.matrix_scorer as matrix_scorer

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("index gone")

    monkeypatch.setattr(matrix_scorer, "score_matrix", broken)
    answer = _over_the_wire(scorer, encode_matrix(rows, fields), 6)
    assert set(answer.errors.values()) == {
        "internal error while scoring this numeric batch (see worker log)"}
    assert letters.entries[-1]["reason"] == "scoring_failed"
    monkeypatch.undo()
    # a model without a threshold (alpha=None) scores, flags nothing and says so
    train = [dict(zip(fields, row, strict=True)) for row in live[:700].tolist()]
    Detector(encoder="identity", alpha=None, random_state=0).fit(train).save(tmp_path / "b")
    plain = ModelRegistry(tmp_path / "models")
    plain.add(tmp_path / "b", promote=True)
    answer = _over_the_wire(_scorer(plain)[0], encode_matrix(live[:50] * 100, fields), 50)
    assert answer.threshold is None and not answer.is_anomaly.any() and not answer.errors
    assert np.isfinite(answer.score).all()


def test_a_redelivered_numeric_batch_writes_no_second_dead_letter_event_or_buffer_entry(
        numeric_model: Any, matrix_redis: Any) -> None:
    from nearwatch.worker.alerts import RedisAlertWriter
    from nearwatch.worker.reference_buffer import BufferWriter
    from nearwatch.worker.runtime import RedisDeadLetters
    from nearwatch.worker.settings_sections import BufferSettings

    _, registry, live, fields = numeric_model
    holder = ModelHolder(registry, 60.0)
    holder.load_initial()
    version = holder.current()[0]
    scorer = BatchScorer(holder, RedisDeadLetters(matrix_redis), None,
                         RedisAlertWriter(matrix_redis, 1000, 20), None,
                         BufferWriter(matrix_redis, BufferSettings()))
    rows = live[:200].copy()
    rows[5, 1] = np.nan
    payload = encode_matrix(rows, fields, [f"d{i}" for i in range(200)])
    for delivery in ("client@m:tag-1", "client@m:tag-1", "client@m:tag-2"):
        scorer.score_matrix(payload, delivery)
    assert matrix_redis.xlen("nearwatch:deadletter") == 2  # tag-1 once, tag-2 once
    # the buffer and the drift monitor count tag-1 once, tag-2 once
    assert int(matrix_redis.hget(f"nearwatch:drift:counts:{version}", "scored")) == 2 * 199
    seen = [int(matrix_redis.hget(key, "seen"))
            for key in matrix_redis.keys("nearwatch:buffer:*:meta")]
    assert seen == [2 * 199]
    event_ids = [json.loads(f[b"event"])["event_id"]
                 for _, f in matrix_redis.xrange("nearwatch:alerts")]
    per_delivery = len(event_ids) // 3
    assert per_delivery > 0 and event_ids[:per_delivery] == event_ids[per_delivery:2 * per_delivery]
    assert not set(event_ids[:per_delivery]) & set(event_ids[2 * per_delivery:])
    # dead letters hold strict JSON: the bad value as text, an unreadable batch's own fields
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} in a dead letter")}
    record = json.loads(matrix_redis.xrange("nearwatch:deadletter")[0][1][b"record"], **strict)
    assert record["id"] == "d5" and record[fields[1]] == "nan"
    scorer.score_matrix({**payload, "fields": ["x", *fields[1:]]}, "client@m:tag-3")
    letter = matrix_redis.xrange("nearwatch:deadletter")[-1][1]
    assert letter[b"reason"] == b"invalid_batch"
    assert json.loads(letter[b"record"], **strict)["fields"] == ["x", *fields[1:]]


def test_a_model_with_categorical_fields_answers_a_matrix_with_why(tmp_path: Path) -> None:
    from nearwatch.detector.synthetic import LABEL_FIELD, generate_records

    Detector(encoder="identity", label_fields=(LABEL_FIELD,), random_state=0).fit(
        generate_records(700, anomaly_rate=0.0, seed=1)).save(tmp_path / "bundle")
    registry = ModelRegistry(tmp_path / "models")
    registry.add(tmp_path / "bundle", promote=True)
    scorer, letters = _scorer(registry)
    answer = _over_the_wire(scorer, encode_matrix(np.zeros((3, 2)), ["latency_ms", "cpu_pct"]),
                            3)
    assert set(answer.errors.values()) == {
        "numeric batch of 3 rows: the model's field(s) 'cache_hit', 'client', 'method', "
        "'region', 'service' ... are not numeric: send these records as JSON objects"}


@pytest.fixture(scope="module")
def matrix_redis() -> Iterator[Any]:
    yield from flushed_redis(MATRIX_REDIS)


@pytest.mark.slow
def test_numeric_batches_through_a_worker_node(
        numeric_model: Any, matrix_redis: Any, tmp_path: Path) -> None:
    detector, registry, live, fields = numeric_model
    matrix_redis.flushdb()  # this module's other tests wrote alerts and dead letters
    rows = live.copy()
    rows[11, 2] = np.nan
    ids = [f"n{i}" for i in range(len(rows))]
    node = start_worker_node(tmp_path, registry.root, "matrix", NEARWATCH_BROKER_URL=MATRIX_REDIS,
                             NEARWATCH_REDIS_URL=MATRIX_REDIS)
    try:
        client = scoring_client(node, batch_size=128)
        with pytest.raises(ValueError, match=f"{len(rows) - 1} ids for a matrix of {len(rows)}"):
            client.score_matrix(rows, fields, ids[:-1])  # refused before any batch is sent
        assert matrix_redis.llen("scoring") == 0
        answers = list(client.score_matrix(rows, fields, ids))
        assert [(a.start, len(a)) for a in answers] == [
            (0, 128), (128, 128), (256, 128), (384, 128), (512, 88)]
        score = np.concatenate([a.score for a in answers])
        flags = np.concatenate([a.is_anomaly for a in answers])
        errors = {a.start + row: error for a in answers for row, error in a.errors.items()}
        good = [i for i in range(len(rows)) if i != 11]
        assert np.array_equal(score[good], detector.score(
            [dict(zip(fields, rows[i], strict=True)) for i in good]))
        assert errors == {11: f"record 'n11': field {fields[2]!r}: nan is not a finite number"}
        # one alert event per flagged row, carrying the row's record and neighbours
        events = [json.loads(fields_[b"event"]) for _, fields_ in
                  wait_for(lambda: _complete(matrix_redis, int(flags.sum())), 30, "alerts")]
        flagged = np.flatnonzero(flags)
        assert sorted(e["id"] for e in events) == sorted(ids[i] for i in flagged)
        first = next(e for e in events if e["id"] == ids[flagged[0]])
        assert first["record"] == {"id": ids[flagged[0]],
                                   **dict(zip(fields, rows[flagged[0]].tolist(), strict=True))}
        assert len(first["neighbours"]) == 3  # and the fields explain gives, from one search
        assert first["fields"] == detector.explain([first["record"]], n_neighbours=1)[0]["fields"]
        letters = matrix_redis.xrange("nearwatch:deadletter")
        assert [json.loads(f[b"id"]) for _, f in letters] == ["n11"]
        text = http_get(node.metrics_url) or ""
        assert metric_value(text, "nearwatch_records_scored_total") == len(good)
    finally:
        node.proc.stop()


def _complete(client: Any, expected: int) -> list[Any] | None:
    entries = client.xrange("nearwatch:alerts")
    return entries if len(entries) == expected else None
