"""Issue 11 fuzz suite: a seeded corpus of >= 10,000 poison records mixed with good ones, run
through `score`, `stream`, the Python client and `ingest` against real Redis and a real
worker node. Every record is answered exactly once (a score or an error), in order, no
process crashes, the good records are scored and odd ids come back exactly."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service_fixtures import (
    CLI,
    Proc,
    WorkerNode,
    scoring_client,
    service_env,
    stream_records_for_test,
)

pytestmark = pytest.mark.slow
N_BAD, N_GOOD, SEED = 10_000, 2_000, 20_11
MAX_BYTES = 65_536  # producers' NEARWATCH_RECORD_MAX_BYTES in this suite
CRAFTED = ['x", "error": "unanswered after 3 attempt(s): ', '"is_anomaly":true', "#7",
           "unanswered after", '{"error": 1}', "\\u0000", "ü→𝄞", ""]
NUMERIC = ("latency_ms", "bytes_out", "load")


def _corpus() -> list[tuple[bytes, str, Any]]:
    """(line, expected 'score' | 'error' | 'any', expected id or None), seeded, shuffled."""
    rng = random.Random(SEED)
    good = stream_records_for_test(N_GOOD + N_BAD, seed=SEED, prefix="f")
    out: list[tuple[bytes, str, Any]] = [(json.dumps(r).encode(), "score", r["id"])
                                         for r in good[:N_GOOD]]
    spare = iter(good[N_GOOD:])
    kinds = ["utf8", "deep", "truncated", "not_object", "nan_id", "infinity", "big_id",
             "crafted_id", "wrong_type", "garbage", "bom", "empty", "fields", "huge"]
    weights = [14, 12, 12, 10, 8, 6, 8, 8, 12, 6, 2, 2, 0.3, 0.05]
    for i in range(N_BAD):
        record = dict(next(spare), id=f"b{i}")
        kind = rng.choices(kinds, weights)[0]
        text = json.dumps(record).encode()
        if kind == "utf8":
            at = rng.randrange(len(text))
            out.append((text[:at] + rng.choice([b"\xff", b"\xf0\x28\x8c", b"\xc3"]) + text[at:],
                        "error", None))
        elif kind == "deep":
            depth = rng.choice([17, 100, 999, 1025, 3000, 20_000])
            out.append((b'{"id":"d","x":' + b"[" * depth + b"]" * depth + b"}", "error", None))
        elif kind == "truncated":
            out.append((text[: rng.randrange(1, len(text) - 1)], "error", None))
        elif kind == "not_object":
            out.append((rng.choice([b"1", b'"s"', b"[1,2]", b"null", b"true", b"[]"]), "error",
                        None))
        elif kind == "nan_id":
            out.append((text.replace(f'"id": "b{i}"'.encode(), b'"id": NaN'), "error", None))
        elif kind == "infinity":
            out.append((text.replace(b'"load": ', b'"load": Infinity, "x": ', 1), "error",
                        record["id"]))
        elif kind == "big_id":
            big = 10**25 + i
            out.append((json.dumps(dict(record, id=big)).encode(), "score", big))
        elif kind == "crafted_id":
            crafted = rng.choice(CRAFTED) + f"-{i}"
            out.append((json.dumps(dict(record, id=crafted)).encode(), "score", crafted))
        elif kind == "wrong_type":
            value = rng.choice(["abc", [1, 2], {"a": 1}, "1e999x"])
            out.append((json.dumps(dict(record, **{rng.choice(NUMERIC): value})).encode(),
                        "error", record["id"]))
        elif kind == "garbage":
            size = rng.randrange(1, 80)
            out.append((bytes(rng.choice(b"abc{}[]:,\"' 0123456789\\") for _ in range(size))
                        .strip() or b"{", "any", None))
        elif kind == "bom":
            out.append((b"\t " + text, "any", None))
        elif kind == "empty":
            out.append((b"{}", "any", None))
        elif kind == "fields":
            many = {"id": f"b{i}", **{f"k{j}": j for j in range(1_100)}}
            out.append((json.dumps(many).encode(), "error", None))
        else:  # huge: beyond the producers' size limit
            out.append((b'{"id":"h","x":"' + b"a" * (MAX_BYTES + 10) + b'"}', "error", None))
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[bytes, str, Any]], Path]:
    lines = _corpus()
    assert len(lines) == N_BAD + N_GOOD  # odd ids (big, crafted) must score: 1,600 of them
    assert sum(1 for _, e, _ in lines if e != "score") >= 8_000
    assert not [line for line, _, _ in lines if b"\n" in line or b"\r" in line]
    path = tmp_path_factory.mktemp("fuzz") / "corpus.jsonl"
    path.write_bytes(b"\n".join(line for line, _, _ in lines) + b"\n")
    return lines, path


def _check(answers: list[Any], lines: list[tuple[bytes, str, Any]], path: str,
           check_ids: bool = True) -> None:
    assert len(answers) == len(lines), f"{path}: {len(answers)} answers for {len(lines)}"
    for answer, (line, expected, rid) in zip(answers, lines, strict=True):
        assert isinstance(answer, dict) and ("score" in answer) != ("error" in answer), \
            f"{path}: {answer!r} for {line[:100]!r}"
        if expected == "error":
            assert "error" in answer and 0 < len(answer["error"]) <= 1_000, \
                f"{path}: {line[:100]!r} -> {answer!r}"
            assert "unanswered" not in answer["error"], answer
        elif expected == "score":
            assert "score" in answer, f"{path}: {line[:100]!r} -> {answer!r}"
            if check_ids:
                assert answer["id"] == rid and type(answer["id"]) is type(rid), answer


def _strict_lines(text: str) -> list[Any]:
    def refuse(literal: str) -> Any:
        raise AssertionError(f"non-strict literal {literal}")

    return [json.loads(line, parse_constant=refuse) for line in text.split("\n") if line]


def test_fuzz_score_and_stream(node: WorkerNode, corpus: Any, tmp_path: Path) -> None:
    lines, path = corpus
    env = service_env(node.settings.model_dir, NEARWATCH_RECORD_MAX_BYTES=str(MAX_BYTES))
    bundle = node.settings.model_dir / "v0001"
    score_out, stream_out = tmp_path / "score.jsonl", tmp_path / "stream.jsonl"
    score = Proc([*CLI, "score", "--model", str(bundle), "--data", str(path), "--out",
                  str(score_out)], env, tmp_path / "score.log")
    stream = Proc([*CLI, "stream", "--data", str(path), "--batch", "200", "--out",
                   str(stream_out)], env, tmp_path / "stream.log")
    try:
        assert score.process.wait(240) == 0, score.log()[-3000:]
        assert stream.process.wait(240) == 0, stream.log()[-3000:]
    finally:
        score.stop()
        stream.stop()
    for proc in (score, stream):
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
    _check(_strict_lines(score_out.read_text()), lines, "score")
    _check(_strict_lines(stream_out.read_text()), lines, "stream")
    assert " 0 unanswered" in stream.log()


def test_fuzz_python_client(node: WorkerNode, corpus: Any) -> None:
    from nearwatch.worker.settings import RecordLimits

    lines, _ = corpus
    records: list[Any] = []
    for line, _expected, _ in lines:
        try:
            records.append(json.loads(line))
        except (ValueError, RecursionError):
            records.append(line.decode("utf-8", "replace"))  # a string: not an object
    deep: Any = []
    for _ in range(5_000):
        deep = [deep]
    extra = [({"id": "set", "x": {1, 2}}, "error"), ({"id": "deep", "x": deep}, "error"),
             ({"id": float("nan"), "load": 1.0}, "error"), ({"id": b"bytes"}, "error")]
    client = scoring_client(node, batch_size=250, limits=RecordLimits(max_bytes=MAX_BYTES))
    answers = list(client.score(records + [r for r, _ in extra]))
    expected = [(line, e if not (e == "score" and not isinstance(r, dict)) else "error", rid)
                for (line, e, rid), r in zip(lines, records, strict=True)]
    _check(answers[: len(lines)], expected, "client")
    tail = answers[len(lines):]
    assert [a.get("error", "") != "" for a in tail] == [True] * len(extra), tail
    assert "not a JSON value" in tail[0]["error"] and "too deep" in tail[1]["error"]
    assert tail[2] == {"id": None, "error": "id nan is not a finite number (JSON has no "
                       "NaN/Infinity)"}
    assert client.stats.unanswered == 0


def test_fuzz_ingest(node: WorkerNode, redis_client: Any, corpus: Any, tmp_path: Path) -> None:
    lines, _ = corpus
    for key in ("nearwatch:records", "nearwatch:scores"):
        redis_client.delete(key)
    pipe = redis_client.pipeline()
    for line, _, _ in lines:
        pipe.xadd("nearwatch:records", {"record": line})
    entry_ids = [e.decode() for e in pipe.execute()]
    env = service_env(node.settings.model_dir, NEARWATCH_RECORD_MAX_BYTES=str(MAX_BYTES))
    ingest = Proc([*CLI, "ingest", "--batch", "200", "--stop-when-idle"], env,
                  tmp_path / "ingest.log")
    try:
        assert ingest.process.wait(240) == 0, ingest.log()[-3000:]
    finally:
        ingest.stop()
    assert "Traceback" not in ingest.log()
    written = redis_client.xrange("nearwatch:scores")
    by_entry: dict[str, Any] = {}
    for _, fields in written:
        entry = fields[b"entry"].decode()
        assert entry not in by_entry, f"entry {entry} answered twice"
        by_entry[entry] = json.loads(fields[b"result"])
    assert sorted(by_entry) == sorted(entry_ids)
    for entry, answer in by_entry.items():  # named by its entry, never by ingest's batch
        assert "of the batch" not in answer.get("error", ""), (entry, answer)
    assert redis_client.xpending("nearwatch:records", "nearwatch")["pending"] == 0
    _check([by_entry[e] for e in entry_ids], lines, "ingest")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _idle_rss_mb(pids: list[int], settle_s: float = 0.5) -> dict[int, float]:
    """RSS of ``pids`` once none of them has been running (state R) for ``settle_s``."""
    def state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    quiet_since = time.monotonic()
    deadline = quiet_since + 30
    while time.monotonic() < deadline:
        if any(state(pid) == "R" for pid in pids):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle_s:
            break
        time.sleep(0.02)
    return {pid: _rss_mb(pid) for pid in pids}


def test_memory_stays_bounded_under_oversized_records(node: WorkerNode) -> None:
    """Records far over the limit, sent straight to the task (no producer screening them):
    refused before they are parsed, and the pool processes' memory stays bounded (issue 11,
    item 10: three 10 MB records used to leave a child at +330-470 MB, growing with each).

    A 30 MB task message leaves a high-water mark (its decoded copies; glibc keeps freed
    arenas): measured +152 MB after the first six batches and +0 MB over the next twelve
    with the prefork pool. (A `--pool processes` scoring process, worker/node.py, decodes the
    message itself and trims its heap once an oversized batch is done, else +270-320 MB:
    measured +95 MB, then +0 MB.) A process answers before it releases the message, so
    memory is read once the processes are idle again. Bound: < 250 MB, and < 20 MB more
    after the first four rounds. Each round sends two batches at once, so that both pool
    processes take one (the pool gives a task to an idle process): sent one at a time, one
    process could take every early batch and reach its high-water mark only later (CI saw
    +95 MB "still growing" in a process that had taken none of the first six)."""
    from nearwatch.worker.app import create_app
    from nearwatch.worker.names import SCORE_JSON_BATCH

    app = create_app(node.settings)
    good = [json.dumps(r) for r in stream_records_for_test(20, seed=4, prefix="m")]
    warm = app.send_task(SCORE_JSON_BATCH, args=[good * 10]).get(timeout=60)
    assert len(warm) == 200
    children = node.proc.children()
    before = _idle_rss_mb(children)
    huge = json.dumps({"id": "huge", "note": "x" * 10_000_000})
    high_water: dict[int, float] = {}
    for round_ in range(10):  # 60 records of 10 MB in all
        if round_ == 4:
            high_water = _idle_rss_mb(children)
        sent = [app.send_task(SCORE_JSON_BATCH, args=[[huge, *good, huge, huge]])
                for _ in range(2)]
        for task in sent:
            results = [json.loads(a) for a in task.get(timeout=120)]
            assert [("error" in r) for r in results] == [True] + [False] * 20 + [True, True]
            assert "exceeds the limit" in results[0]["error"]
            assert len(results[0]["error"]) < 1_000
    after = _idle_rss_mb(children)
    grown = {pid: after[pid] - before[pid] for pid in children}
    assert max(grown.values()) < 250, f"pool processes grew by {grown} MB"
    still_growing = {pid: after[pid] - high_water[pid] for pid in children}
    print(f"grown {grown} MB; after the first four rounds {still_growing} MB")
    assert max(still_growing.values()) < 20, f"still growing: {still_growing} MB"
