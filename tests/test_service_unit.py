"""Service pieces in-process: settings, batch scoring, hot reload, client, input reading."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nearwatch.detector import BundleError
from nearwatch.detector.store.registry import ModelRegistry
from nearwatch.worker.client import ClientOptions, ScoringClient
from nearwatch.worker.runtime import BatchScorer, LoggedDeadLetters, ModelHolder, RedisDeadLetters
from nearwatch.worker.settings import Settings, SettingsError

from tests.service_fixtures import stream_records_for_test


def test_settings_from_env() -> None:
    default = Settings.from_env({})
    assert default.broker_url == "redis://127.0.0.1:6379/0" and not default.broker_configured
    memory = Settings.from_env({"NEARWATCH_BROKER_URL": "memory://"})
    assert memory.result_backend == "cache+memory://" and memory.redis_url is None
    assert memory.broker_configured
    with pytest.raises(SettingsError, match="NEARWATCH_BATCH_SIZE='many'"):
        Settings.from_env({"NEARWATCH_BATCH_SIZE": "many"})
    with pytest.raises(SettingsError, match="NEARWATCH_MAX_IN_FLIGHT must be positive"):
        Settings.from_env({"NEARWATCH_MAX_IN_FLIGHT": "0"})


def test_defaults_are_written_once() -> None:
    # An empty environment gives the dataclass defaults, which the producers share.
    from nearwatch.worker.ingest import IngestOptions

    assert Settings.from_env({}) == Settings()
    assert ClientOptions() == ClientOptions.from_settings(Settings())
    assert IngestOptions().batch_size == Settings().batch_size


def test_tasks_do_not_import_the_app() -> None:
    # Imports run one way: app -> tasks/pool/names; a fresh interpreter shows what tasks pulls.
    code = ("import sys, nearwatch.worker.tasks as t; "
            "assert 'nearwatch.worker.app' not in sys.modules; "
            "print(t.score_batch.name, t.score_json_batch.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["nearwatch.score_batch", "nearwatch.score_json_batch"]


@pytest.fixture()
def registry(tmp_path: Path, bundles: tuple[Path, Path]) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    registry.add(bundles[0], promote=True)
    return registry


def _scorer(registry: ModelRegistry, interval: float = 0.0) -> BatchScorer:
    holder = ModelHolder(registry, check_interval=interval)
    holder.load_initial()
    return BatchScorer(holder, LoggedDeadLetters())


def test_bad_records_never_fail_their_batch(registry: ModelRegistry) -> None:
    scorer = _scorer(registry)
    good = stream_records_for_test(3)
    bad_value = dict(good[1], id="bad-value", latency_ms="fast")
    nested = dict(good[1], id="nested", bytes_out={"a": 1})
    batch: list[Any] = [good[0], bad_value, ["not", "an", "object"], nested, good[2], None]
    results = scorer.score_batch(batch)
    assert len(results) == len(batch)
    assert [r["id"] for r in results] == [good[0]["id"], "bad-value", None, "nested",
                                          good[2]["id"], None]
    for i in (0, 4):
        assert "error" not in results[i] and results[i]["model_version"] == "v0001"
        assert {"score", "p_value", "is_anomaly", "threshold", "neighbours"} <= set(results[i])
    assert "latency_ms" in results[1]["error"] and "'fast'" in results[1]["error"]
    assert "bytes_out" in results[3]["error"]
    assert "not a JSON object" in results[2]["error"] and "NoneType" in results[5]["error"]
    letters = scorer.dead_letters.entries  # type: ignore[attr-defined]
    assert [e["id"] for e in letters] == ["bad-value", None, "nested", None]


def test_json_path_matches_the_parsed_path_and_keeps_json_edge_cases(
        registry: ModelRegistry) -> None:
    # The text path parses with orjson and falls back to json for what orjson cannot read
    # exactly (NaN literals, integers beyond 64 bits): answers must equal the parsed path's.
    scorer = _scorer(registry)
    good = stream_records_for_test(2)
    lines = [json.dumps(good[0]), '{"id": NaN, "load": NaN}', json.dumps(dict(good[1], id=2**70)),
             "{oops"]
    texts = scorer.score_json(lines, 1)
    parsed = [json.loads(t) for t in texts]
    expected = scorer.score_batch([good[0]])[0]
    assert parsed[0] == expected and texts[0].startswith('{"id":')
    # strict JSON out (issue 11): a NaN id is refused, never echoed as a NaN literal
    assert texts[1].startswith('{"id":null') and "not a finite" in parsed[1]["error"]
    assert parsed[2]["id"] == 2**70 and "score" in parsed[2]
    assert parsed[3]["error"].startswith("record #4: not valid JSON")


class _FragileDetector:
    """Raises on the whole batch when it contains the record ``boom``."""

    def score_records(self, records: list[dict[str, Any]], n: int, explain: int = 0
                      ) -> list[dict[str, Any]]:
        if any(r.get("id") == "boom" for r in records):
            raise RuntimeError("unexpected")
        return [{"index": i, "id": r["id"], "score": 1.0, "p_value": 0.5, "is_anomaly": False,
                 "threshold": 2.0, "neighbours": []} for i, r in enumerate(records)]


def test_unexpected_failure_is_isolated_to_its_record(registry: ModelRegistry) -> None:
    holder = ModelHolder(registry, check_interval=3600)
    holder.version, holder.detector = "v0001", _FragileDetector()
    scorer = BatchScorer(holder, LoggedDeadLetters())
    results = scorer.score_batch([{"id": i} for i in range(5)] + [{"id": "boom"}, {"id": 9}])
    assert [r.get("score") for r in results] == [1.0] * 5 + [None, 1.0]
    assert "internal error" in results[5]["error"]


def test_hot_reload_and_refusal(registry: ModelRegistry, bundles: tuple[Path, Path]) -> None:
    holder = ModelHolder(registry, check_interval=0.0)
    holder.load_initial()
    first = holder.detector
    assert holder.current()[0] == "v0001"
    registry.add(bundles[1], promote=True)
    version, detector = holder.current()
    assert version == "v0002" and detector is not first
    # a version that fails verification is refused: the old model keeps serving
    bad = registry.add(bundles[0])
    (registry.path(bad) / "reference_ids.json").write_text("[]")
    (registry.root / "CURRENT").write_text(bad + "\n")
    assert holder.current() == ("v0002", detector)
    assert holder.current() == ("v0002", detector)  # refused once, not retried every batch


def test_a_worker_started_on_a_refused_model_serves_the_one_promoted_before(
        tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    """A running worker keeps its model when the promoted one fails verification; one
    started then had no model at all and failed every batch it took (a trial tampered with
    the current bundle and restarted a worker)."""
    registry = ModelRegistry(tmp_path / "registry")
    registry.add(bundles[0], promote=True)
    bad = registry.add(bundles[1], promote=True)
    (registry.path(bad) / "reference_ids.json").write_text("[]")
    holder = ModelHolder(registry, check_interval=0.0)
    assert holder.load_initial() and holder.current()[0] == "v0001"
    assert holder.current()[0] == "v0001"  # the pointer still names the refused one
    fixed = registry.add(bundles[1], promote=True)
    assert holder.current()[0] == fixed


def test_an_empty_registry_is_waited_for_a_bad_model_is_refused_once(
        tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    """`nearwatch_model_reloads_total{outcome="refused"}` (NearwatchModelRefused) counted a
    worker started before any model was promoted; only a model that fails to load counts."""
    class Counts:
        refused = loaded = 0

        def model_refused(self) -> None:
            self.refused += 1

        def model_loaded(self, version: str, detector: Any) -> None:
            self.loaded += 1

    empty = ModelRegistry(tmp_path / "empty")
    counts = Counts()
    holder = ModelHolder(empty, check_interval=0.0, metrics=counts)  # type: ignore[arg-type]
    assert holder.load_initial() is False and counts.refused == 0
    bad = empty.add(bundles[0])
    (empty.path(bad) / "reference_ids.json").write_text("[]")
    (empty.root / "CURRENT").write_text(bad + "\n")
    restarted = ModelHolder(empty, check_interval=0.0, metrics=counts)  # type: ignore[arg-type]
    assert restarted.load_initial() is False and counts.refused == 1
    with pytest.raises(BundleError, match="no model to serve"):
        restarted.current()
    assert counts.refused == 1  # not counted again at every pointer check
    good = empty.add(bundles[1], promote=True)
    assert restarted.current()[0] == good and counts.loaded == 1


def test_redis_dead_letters_are_written_once(redis_client: Any) -> None:
    redis_client.delete("nearwatch:deadletter")
    letters = RedisDeadLetters(redis_client)
    result = {"id": "x1", "error": "field 'a': bad"}
    record = {"id": "x1", "a": "?"}
    assert letters.write(record, result, "invalid_field", "v0001", "task:1#0")
    assert not letters.write(record, result, "invalid_field", "v0001", "task:1#0")  # redelivery
    assert letters.write(record, result, "invalid_field", "v0001", "task:2#0")  # sent again
    entries = redis_client.xrange("nearwatch:deadletter")
    assert len(entries) == 2
    fields = entries[0][1]
    assert fields[b"error"] == b"field 'a': bad" and fields[b"reason"] == b"invalid_field"


def test_redelivery_writes_nothing_twice_a_record_sent_again_alerts_again(
        registry: ModelRegistry, redis_client: Any) -> None:
    """The helper's repro: the same anomalous record in two batches must alert twice (it
    was one event for 24 h); the same batch redelivered (same delivery) must not, nor be
    counted twice by the reference buffer and the drift monitor."""
    from types import SimpleNamespace

    from nearwatch.worker.alerts import ALERTS_STREAM, RedisAlertWriter
    from nearwatch.worker.reference_buffer import BufferWriter
    from nearwatch.worker.settings_sections import BufferSettings
    from nearwatch.worker.tasks import delivery_key

    for key in (ALERTS_STREAM, "nearwatch:deadletter"):
        redis_client.delete(key)
    holder = ModelHolder(registry, check_interval=0.0)
    holder.load_initial()
    prefix = "nearwatch:test-redelivery"
    for key in redis_client.keys(f"{prefix}:*"):
        redis_client.delete(key)
    scorer = BatchScorer(holder, RedisDeadLetters(redis_client),
                         alerts=RedisAlertWriter(redis_client, maxlen=1000, explain_max=0),
                         buffer=BufferWriter(redis_client, BufferSettings(), prefix=prefix,
                                             drift_prefix=f"{prefix}:drift"))
    counts = f"{prefix}:drift:counts:{holder.current()[0]}"
    spiked = dict(stream_records_for_test(1)[0], id="spike", latency_ms=1e7, cpu_pct=100.0)
    batch = [spiked, dict(spiked, id="bad", latency_ms="slow")]
    task = SimpleNamespace(request=SimpleNamespace(id="t-1"))
    answer_key = "nearwatch:answers:" + "0" * 32
    assert delivery_key(task, None) == delivery_key(task, answer_key) == "task:t-1"
    positioned = delivery_key(task, answer_key, 41)
    assert positioned == delivery_key(SimpleNamespace(request=SimpleNamespace(id="t-2")),
                                      answer_key, 41)  # a resubmission is the same delivery
    results = scorer.score_batch(batch, delivery="task:t-1")
    assert results[0]["is_anomaly"] and "latency_ms" in results[1]["error"]
    scorer.score_batch(batch, delivery="task:t-1")  # a redelivery

    def event_ids() -> list[str]:  # the alert consumer counts an event id once
        return [json.loads(f[b"event"])["event_id"]
                for _, f in redis_client.xrange(ALERTS_STREAM)]

    assert len(set(event_ids())) == 1 and redis_client.xlen("nearwatch:deadletter") == 1
    assert int(redis_client.hget(counts, "scored")) == 1  # the bad record is not scored
    scorer.score_batch(batch, delivery="task:t-2")  # the same records, sent again
    scorer.score_batch(batch)  # called directly: a new delivery each time
    assert len(set(event_ids())) == 3 and redis_client.xlen("nearwatch:deadletter") == 3
    assert int(redis_client.hget(counts, "scored")) == 3


def test_a_resubmitted_batch_keeps_its_tag_and_so_its_delivery(memory_app: Any) -> None:
    """A batch the producer submits again is a new task (a new id): the tag it carries, the
    same at every submission, names the delivery, for object batches and text batches
    (`ingest`'s labelled ones too); a numeric batch carries its own in its payload."""
    from types import SimpleNamespace

    from nearwatch.worker.client import _Batch, _text_batch
    from nearwatch.worker.tasks import delivery_key

    client = ScoringClient(memory_app, ClientOptions(batch_size=10))
    answer_key = "nearwatch:answers:" + "1" * 32
    for batch in (_Batch([{"id": 1}]), _text_batch(['{"id": 1}'], 7),
                  _text_batch(['{"id": 1}'], ["stream entry 1-0"])):
        first, again = (client._arguments(batch)[1]["batch"] for _ in range(2))
        other = client._arguments(_Batch([{"id": 1}]))[1]["batch"]
        assert first == again != other and len(first) == 32
        deliveries = {delivery_key(SimpleNamespace(request=SimpleNamespace(id=task_id)),
                                   answer_key, batch.first_position, first)
                      for task_id in ("t-1", "t-2")}  # submitted twice: two task ids
        assert deliveries == {f"{answer_key}@b:{first}"}
    matrix = _Batch([None], matrix={"batch": "m1"})
    assert "batch" not in client._arguments(matrix)[1]
    task = SimpleNamespace(request=SimpleNamespace(id="t-3"))
    assert delivery_key(task, answer_key, 3, "x" * 65) == f"{answer_key}@3"  # not a tag


@pytest.fixture()
def memory_app(registry: ModelRegistry) -> Any:
    from nearwatch.worker.app import create_app

    settings = replace(Settings.from_env({"NEARWATCH_BROKER_URL": "memory://"}),
                       model_dir=registry.root)
    return create_app(settings)


def test_client_through_embedded_worker_keeps_order(memory_app: Any) -> None:
    from nearwatch.worker.demo import embedded_worker

    records: list[Any] = stream_records_for_test(230)
    records[17] = dict(records[17], cpu_pct="hot")
    client = ScoringClient(memory_app, ClientOptions(batch_size=40, max_in_flight=3))
    with embedded_worker(memory_app):
        results = list(client.score(records))
    assert [r["id"] for r in results] == [r["id"] for r in records]
    assert "cpu_pct" in results[17]["error"]
    assert sum("error" in r for r in results) == 1 and client.stats.unanswered == 0


def test_client_answers_every_record_when_no_worker_answers(memory_app: Any) -> None:
    client = ScoringClient(memory_app, ClientOptions(batch_size=4, batch_timeout=0.2,
                                                     max_attempts=2, poll_interval=0.05))
    results = list(client.score([{"id": i} for i in range(6)]))
    assert [r["id"] for r in results] == list(range(6))
    assert all("unanswered after 2 attempt(s)" in r["error"] for r in results)
    assert client.stats.unanswered == 6 and client.stats.resubmissions == 2


def test_unanswered_record_texts_keep_the_ids_a_worker_would_give(memory_app: Any) -> None:
    client = ScoringClient(memory_app, ClientOptions(batch_size=4, batch_timeout=0.2,
                                                     max_attempts=1, poll_interval=0.05))
    texts = ['{"id": "a"}', '{"x": 1}', "not json", '{"id": "#9"}', '{"id": 7.5}']
    (answers,) = list(client.score_json_batches([(texts, 5)]))
    assert [json.loads(answer)["id"] for answer in answers] == ["a", "#6", None, None, 7.5]
    assert all("unanswered after 1 attempt(s)" in answer for answer in answers)
    assert json.loads(answers[1])["error"].startswith("record #6: ")


class _LocalClient:
    """The worker's text path for `stream_records`, without a broker."""

    def __init__(self, scorer: BatchScorer, batch_size: int) -> None:
        self.scorer = scorer
        self.options = ClientOptions(batch_size=batch_size)
        self.stats = type("S", (), {"unanswered": 0})()

    def score_json_batches(self, batches: Any) -> Any:
        for batch, first in batches:
            yield self.scorer.score_json(batch, first)


def test_stream_path_assigns_ids_and_answers_bad_lines(registry: ModelRegistry,
                                                        tmp_path: Path) -> None:
    from nearwatch.worker.stream import read_input, stream_records

    path = tmp_path / "in.jsonl"
    good = stream_records_for_test(2)
    del good[1]["id"]
    path.write_text(f'{json.dumps(good[0])}\n\n{json.dumps(good[1])}\nnot json\n[1, 2]\n')
    lines = list(read_input(str(path)))
    assert len(lines) == 4  # blank lines skipped, nothing parsed yet
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("id,x\n,3\nb,\n")
    assert [json.loads(t)["id"] for t in read_input(str(csv_path))] == [None, "b"]

    scorer = _scorer(registry)


    out = io.StringIO()
    summary = stream_records(_LocalClient(scorer, 3), lines, out)  # type: ignore[arg-type]
    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in results] == [good[0]["id"], "#2", None, None]
    assert "score" in results[1]
    assert results[2]["error"].startswith("record #3: not valid JSON")
    assert results[3]["error"] == "record #4: not a JSON object (got list)"
    assert (summary.records, summary.errors) == (4, 2)


def test_stream_errors_name_the_line_and_lines_split_as_score_splits_them(
        registry: ModelRegistry, tmp_path: Path) -> None:
    """`stream` said `record #1: not valid JSON` where `score` said `record 1 (line 3)`; and a
    file with CR line endings was one record to `stream`, two to `score`."""
    from nearwatch.detector.io import read_records
    from nearwatch.worker.stream import LineNumbers, read_input, stream_records

    scorer = _scorer(registry)


    def streamed(data: bytes) -> list[dict[str, Any]]:
        path = tmp_path / "in.jsonl"
        path.write_bytes(data)
        numbers, out = LineNumbers(), io.StringIO()
        stream_records(_LocalClient(scorer, 2), read_input(str(path), line_numbers=numbers), out,  # type: ignore[arg-type]
                       line_numbers=numbers)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    (bad,) = streamed(b"\n\n{bad\n")
    assert bad["error"] == ("record #1 (line 3): not valid JSON: Expecting property name "
                            "enclosed in double quotes: column 2")
    good = json.dumps(stream_records_for_test(1)[0]).encode()
    results = streamed(b"\n".join([b"{bad", b"", good, b"", b"", b"[1]", b"\xff{}", good]))
    assert [r.get("error", "")[:20] for r in results] == [
        "record #1 (line 1): ", "", "record #3 (line 6): ", "record #4 (line 7): ", ""]
    refused = list(read_input(str(tmp_path / "in.jsonl")))[3]  # the producer answers it
    assert str(refused) == "not valid UTF-8 (character 0)" and refused.text == b"\xff{}"
    # one reader of lines: LF, CRLF and a lone CR end a line for `stream` as for `score`
    for data in (b'{"a": 1}\r{"a": 2}\r', b'{"a": 1}\r\n\r\n{"a": 2}', b'{"a": 1}\n{"a": 2}\n'):
        path = tmp_path / "endings.jsonl"
        path.write_bytes(data)
        assert list(read_input(str(path))) == ['{"a": 1}', '{"a": 2}'], data
        assert read_records(path).records == [{"a": 1}, {"a": 2}], data
    assert [r.get("error", "")[:19] for r in streamed(b"{bad\r\r" + good + b"\r[1]\r")] == [
        "record #1 (line 1):", "", "record #3 (line 4):"]


def test_ingest_leaves_unanswered_entries_pending_then_reclaims(redis_client: Any) -> None:
    from nearwatch.worker.client import Unanswered
    from nearwatch.worker.ingest import IngestOptions, StreamIngest

    for key in ("nearwatch:records", "nearwatch:scores"):
        redis_client.delete(key)
    for i in range(3):
        redis_client.xadd("nearwatch:records", {"record": json.dumps({"id": i})})
    calls: list[int] = []

    def scorer(batches: Any) -> Any:  # no worker answers the first batch
        for lines, _ in batches:
            if lines:
                calls.append(len(lines))
            if lines and len(calls) == 1:
                # told apart by type (a crafted text cannot imitate it): see test_hardening
                yield [Unanswered(json.dumps({"id": None, "error": "unanswered after 3: x"}))
                       for _ in lines]
            else:
                yield [json.dumps({"id": json.loads(line)["id"], "score": 1.0})
                       for line in lines]

    ingest = StreamIngest(redis_client, scorer, IngestOptions(
        consumer="u", claim_idle_ms=50, block_ms=20, stop_when_idle=True))
    stats = ingest.run()
    assert (stats.unanswered, stats.claimed, stats.written) == (3, 3, 3)
    results = [json.loads(f[b"result"]) for _, f in redis_client.xrange("nearwatch:scores")]
    assert [r["id"] for r in results] == [0, 1, 2]
    assert redis_client.xpending("nearwatch:records", "nearwatch")["pending"] == 0


def test_errors_name_the_batch_position_or_the_stream_entry(registry: ModelRegistry,
                                                            redis_client: Any) -> None:
    """An id-less record's field error named its index among the batch's objects ("record
    0" for the third record); through ingest it said "record 2 of the batch", not its entry."""
    from nearwatch.worker.ingest import IngestOptions, StreamIngest

    scorer = _scorer(registry)
    good = stream_records_for_test(1)[0]
    bad = {k: v for k, v in good.items() if k != "id"} | {"latency_ms": "fast"}
    results = scorer.score_batch([good, [1], bad])
    assert results[2]["error"].startswith("record 2 of the batch: field 'latency_ms'"), results
    texts = [json.dumps(good), "[1]", json.dumps(bad)]
    assert json.loads(scorer.score_json(texts, 10)[2])["error"].startswith(
        "id '#12': field 'latency_ms'")  # the stream path's id for an id-less record

    for key in ("nearwatch:records", "nearwatch:scores", "nearwatch:deadletter"):
        redis_client.delete(key)
    entries = [redis_client.xadd("nearwatch:records", {"record": text}).decode()
               for text in texts]
    entries.append(redis_client.xadd("nearwatch:records", {"other": "x" * 5000}).decode())
    ingest = StreamIngest(redis_client, lambda batches: (  # as the client sends them
        scorer.score_json(lines, None, labels=labels) for lines, labels in batches),
        IngestOptions(consumer="e", block_ms=20, stop_when_idle=True))
    assert ingest.run().written == 4
    errors = {f[b"entry"].decode(): json.loads(f[b"result"]).get("error")
              for _, f in redis_client.xrange("nearwatch:scores")}
    assert errors[entries[0]] is None
    assert errors[entries[1]] == f"stream entry {entries[1]}: not a JSON object (got list)"
    assert errors[entries[2]].startswith(f"stream entry {entries[2]}: field 'latency_ms'")
    assert errors[entries[3]] == f"stream entry {entries[3]}: no 'record' field"
    # an entry without a record is dead-lettered by ingest itself, with its ack: no worker
    # took part here (the scorer's dead letters are in memory), and it is in Redis once
    (letter,) = [f for _, f in redis_client.xrange("nearwatch:deadletter")]
    assert letter[b"entry"].decode() == entries[3] and letter[b"reason"] == b"no_record"
    assert 200 <= len(json.loads(letter[b"record"])["other"]) <= 201  # an excerpt


def test_ingest_never_claims_its_own_entries_waiting_for_their_answer(redis_client: Any
                                                                      ) -> None:
    """A batch a killed node held waits for its answer (the client resubmits it after
    BATCH_TIMEOUT) while its entries sit idle: ingest claimed them from itself ("claimed 100
    entries of a stalled consumer", a trial) and sent them again, to be scored twice."""
    from nearwatch.worker.ingest import IngestOptions, StreamIngest

    for key in ("nearwatch:records", "nearwatch:scores"):
        redis_client.delete(key)
    for i in range(3):
        redis_client.xadd("nearwatch:records", {"record": json.dumps({"id": i})})
    seen: list[int] = []

    def answers(lines: list[str]) -> list[str]:
        return [json.dumps({"id": json.loads(line)["id"], "score": 1.0}) for line in lines]

    def scorer(batches: Any) -> Any:  # reads the next batch before the first is answered
        held = []
        for lines, _ in batches:
            seen.extend(json.loads(line)["id"] for line in lines)
            held.append(lines)
            if len(held) == 1:
                time.sleep(0.3)  # the first answer is late: its entries idle past 50 ms
                continue
            yield from (answers(batch) for batch in held)
            held = []
        yield from (answers(batch) for batch in held)

    ingest = StreamIngest(redis_client, scorer, IngestOptions(
        consumer="own", claim_idle_ms=50, block_ms=20, stop_when_idle=True))
    stats = ingest.run()
    assert seen == [0, 1, 2] and stats.claimed == 0 and stats.written == 3
    assert redis_client.xpending("nearwatch:records", "nearwatch")["pending"] == 0


def test_ingest_recreates_its_group_when_the_stream_is_deleted(redis_client: Any) -> None:
    """`DEL nearwatch:records` while ingest blocks on it (or Redis restarted empty) crashed
    it with "UNBLOCKED the stream key no longer exists"; it now creates the group again and
    scores what arrives next."""
    import threading

    from nearwatch.worker.ingest import IngestOptions, StreamIngest

    for key in ("nearwatch:records", "nearwatch:scores"):
        redis_client.delete(key)

    def scorer(batches: Any) -> Any:
        for lines, _ in batches:
            yield [json.dumps({"id": json.loads(line)["id"], "score": 1.0}) for line in lines]

    ingest = StreamIngest(redis_client, scorer, IngestOptions(consumer="d", block_ms=2000))
    runner = threading.Thread(target=ingest.run, daemon=True)
    runner.start()

    def written() -> list[Any]:
        deadline = time.monotonic() + 10
        while runner.is_alive() and time.monotonic() < deadline:
            scores = redis_client.xrange("nearwatch:scores")
            if len(scores) == 2:
                return [json.loads(f[b"result"])["id"] for _, f in scores]
            time.sleep(0.05)
        return []

    try:
        redis_client.xadd("nearwatch:records", {"record": json.dumps({"id": "before"})})
        time.sleep(0.3)  # scored; ingest blocks again on the stream
        redis_client.delete("nearwatch:records")
        time.sleep(0.3)
        redis_client.xadd("nearwatch:records", {"record": json.dumps({"id": "after"})})
        assert written() == ["before", "after"]
        assert runner.is_alive()
    finally:
        ingest.stop.set()
        runner.join(10)
