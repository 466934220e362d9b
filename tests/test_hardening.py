"""Issue 11, in-process: poison records, limits, strict output, linger, metrics, bundle links."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from nearwatch.detector.errors import BundleError
from nearwatch.detector.io import UnreadableRecord, iter_csv, read_records
from nearwatch.detector.store.registry import ModelRegistry
from nearwatch.worker.flow import BrokerUnavailable, Outage, linger_chunks
from nearwatch.worker.records import RecordRefused, dump_result, parse_record, screen_record
from nearwatch.worker.runtime import BatchScorer, LoggedDeadLetters, ModelHolder
from nearwatch.worker.settings import RecordLimits, Settings

from tests.service_fixtures import stream_records_for_test

LIMITS = RecordLimits(max_bytes=16384, max_fields=50, max_depth=4, max_error_chars=200)


def _strict(text: str) -> Any:
    """json.loads that refuses NaN/Infinity literals (strict JSON)."""
    def refuse(literal: str) -> Any:
        raise AssertionError(f"non-strict JSON literal {literal} in {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def _scorer(tmp_path: Path, bundle: Path, limits: RecordLimits = LIMITS) -> BatchScorer:
    registry = ModelRegistry(tmp_path / "models")
    registry.add(bundle, promote=True)
    holder = ModelHolder(registry, check_interval=60)
    holder.load_initial()
    return BatchScorer(holder, LoggedDeadLetters(), limits=limits)


def test_parse_record_refuses_what_would_crash_and_keeps_big_integers_exact() -> None:
    assert parse_record('{"id": 123456789012345678901234567890}', LIMITS) == {
        "id": 123456789012345678901234567890}
    cases = {
        '{"x":' + "[" * 5000 + "]" * 5000 + "}": ("too_large", "nested deeper"),
        '{"x":' + "[" * 900 + "]" * 900 + "}": ("too_large", "nested deeper than 4"),
        '{"x": "' + "a" * 20000 + '"}': ("too_large", "exceeds the limit of 16384 bytes"),
        json.dumps({f"f{i}": i for i in range(60)}): ("too_large", "60 fields"),
        '{"id": NaN}': ("invalid_id", "not a finite number"),
        '{"id": [1]}': ("invalid_id", "must be a string or a number"),
        '{"id": 1': ("invalid_json", "not valid JSON"),
    }
    for text, (reason, message) in cases.items():
        with pytest.raises(RecordRefused, match=message) as caught:
            parse_record(text, LIMITS)
        assert caught.value.reason == reason
    with pytest.raises(RecordRefused, match="not a JSON value"):
        screen_record({"id": 1, "x": {1, 2}}, LIMITS)
    deep: Any = []
    for _ in range(3000):
        deep = [deep]
    with pytest.raises(RecordRefused, match="too deep"):
        screen_record({"id": 1, "x": deep}, LIMITS)
    assert dump_result({"id": 2**70, "score": float("inf")}) == \
        '{"id":1180591620717411303424,"score":null}'


def test_worker_answers_every_poison_line_and_scores_the_good_ones(
        tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    scorer = _scorer(tmp_path, bundles[0])
    good = stream_records_for_test(3)
    crafted = 'x", "error": "unanswered after 3 attempt(s): "'
    lines: list[Any] = [
        json.dumps(good[0]),
        '{"x":' + "[" * 5000 + "]" * 5000 + "}",  # RecursionError in json
        json.dumps(dict(good[1], id=crafted)),
        '{"id": NaN, "load": 1}',
        json.dumps(dict(good[2], id=123456789012345678901234567890)),
        '{"id": "a", "x": "' + "b" * 20_000 + '"}',
        json.dumps(dict(good[0], id="#1")),  # imitates the id stream gives id-less records
        None,  # a producer's stand-in for a line it answered itself
    ]
    texts = scorer.score_json(lines, 1)
    assert len(texts) == len(lines)
    parsed = [_strict(t) for t in texts]
    assert "score" in parsed[0] and parsed[0]["id"] == good[0]["id"]
    assert parsed[1]["error"] == "record #2: record nested deeper than 4 levels"
    assert parsed[2]["id"] == crafted and "score" in parsed[2]
    assert parsed[3] == {"id": None, "error": "record #4: id nan is not a finite number "
                         "(JSON has no NaN/Infinity)"}
    assert parsed[4]["id"] == 123456789012345678901234567890 and "score" in parsed[4]
    assert "exceeds the limit of 16384 bytes" in parsed[5]["error"]
    assert "reserved" in parsed[6]["error"]
    assert parsed[7]["error"] == "record #8: refused by the producer"
    # with the producer's refusal beside the batch: its reason and error in the dead letter;
    # a refusal that does not name a stand-in (entry "0", a real line) is ignored
    written = len(scorer.dead_letters.entries)  # type: ignore[attr-defined]
    scorer.score_json([json.dumps(good[0]), None], 1, producer_refused={
        "1": ["too_large", "record #2: too big", '{"x": "aaa', None],
        "0": ["too_large", "spoof", "", None]})
    assert list(scorer.dead_letters.entries)[written:] == [  # type: ignore[attr-defined]
        {"id": None, "error": "record #2: too big", "reason": "too_large"}]
    # error texts and dead letters are cut to the limit
    long_value = dict(good[1], id="long", latency_ms="z" * 3000)
    (answer,) = scorer.score_batch([long_value])
    assert len(answer["error"]) <= 200 and "chars)" in answer["error"]
    letters = scorer.dead_letters.entries  # type: ignore[attr-defined]
    assert len(letters[-1]["error"]) <= 200


def test_files_with_bad_bytes_ragged_rows_and_deep_lines_are_answered_per_line(
        tmp_path: Path) -> None:
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"id": 1}\n\xf0\x28\x8c\n' + b"[" * 5000 + b"]" * 5000
                      + b'\n\t{"id": 4}\n')
    records = read_records(jsonl).records
    assert records[0] == {"id": 1} and records[3] == {"id": 4}
    assert isinstance(records[1], UnreadableRecord) and "not valid UTF-8" in records[1].reason
    assert isinstance(records[2], UnreadableRecord) and "nested too deep" in records[2].reason
    rows = list(iter_csv(io.StringIO("id,a\n1,2,3\n2,3\n3\n")))
    assert rows[1] == {"id": 2, "a": 3}
    assert [r.reason for r in rows if isinstance(r, UnreadableRecord)] == [
        "line 2 has 3 cells for 2 columns", "line 4 has 1 cells for 2 columns"]


def test_score_command_answers_every_poison_line(tmp_path: Path,
                                                 bundles: tuple[Path, Path]) -> None:
    from nearwatch.worker.cli import main

    good = stream_records_for_test(2)
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"\n".join([
        json.dumps(good[0]).encode(), b"\xf0\x28\x8c", b'{"x":' + b"[" * 5000 + b"]" * 5000
        + b"}", b'{"id": NaN, "load": 1}', json.dumps(dict(good[1], id=2**70)).encode(),
    ]) + b"\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["score", "--model", str(bundles[0]), "--data", str(data),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    answers = [_strict(line) for line in out.read_text().splitlines()]
    assert len(answers) == 5 and "score" in answers[0] and "score" in answers[4]
    assert answers[4]["id"] == 2**70
    assert "not valid UTF-8" in answers[1]["error"]
    assert "nested too deep" in answers[2]["error"]
    assert "not a finite number" in answers[3]["error"]


def test_stream_reader_sniffs_stdin_and_refuses_bad_lines(tmp_path: Path) -> None:
    code = ("import sys; from nearwatch.worker.stream import read_input; "
            "[print(type(x).__name__, str(x)[:60]) for x in read_input('-', "
            "sys.argv[1], lambda t: print('NOTE', t))]")

    def run(data: bytes, fmt: str = "auto") -> list[str]:
        done = subprocess.run([sys.executable, "-c", code, fmt], input=data,
                              capture_output=True, check=True)
        return done.stdout.decode().splitlines()

    three = b'{"id": 1}\n{"id": 2}\n{"id": 3}\n'
    for prefix in (b"\t", b"\xef\xbb\xbf", b"  \n\n"):
        lines = run(prefix + three)
        assert lines[0] == "NOTE stdin read as JSONL (sniffed; --format sets it)"
        assert [x.split()[0] for x in lines[1:]] == ["str"] * 3, lines
    csv = run(b"id,a\n1,2\n1,2,3\n\xff,1\n")
    assert csv[0].startswith("NOTE stdin read as CSV")
    assert csv[1:] == ['str {"id": 1, "a": 2}', "RecordRefused line 3 has 3 cells for 2 columns",
                       "RecordRefused line 4 is not valid UTF-8 (character 0)"]
    assert run(b"id,a\n1,2\n", "jsonl") == ["str id,a", "str 1,2"]  # told: no sniffing


def test_linger_sends_a_partial_batch_promptly() -> None:
    def slow() -> Any:
        for i in range(3):
            yield i
            time.sleep(0.3)

    started = time.monotonic()
    arrivals = []
    for chunk in linger_chunks(slow(), size=100, linger=0.01):
        arrivals.append((chunk, time.monotonic() - started))
    assert [c for c, _ in arrivals] == [[0], [1], [2]]
    assert arrivals[0][1] < 0.2 and arrivals[1][1] < 0.5  # not at end of input (0.9 s)


def test_outage_retries_then_gives_up_with_a_clear_error() -> None:
    import redis

    outage = Outage(deadline=0.5, first_delay=0.05)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("Connection refused")
        return "ok"

    assert outage.call("op", flaky) == "ok" and outage.retries == 2
    with pytest.raises(BrokerUnavailable, match=r"op: broker/Redis unreachable for \d+ s"):
        outage.call("op", lambda: (_ for _ in ()).throw(redis.exceptions.ConnectionError("x")))


def test_models_add_refuses_symlinks_and_devices(tmp_path: Path,
                                                 bundles: tuple[Path, Path]) -> None:
    import shutil

    registry = ModelRegistry(tmp_path / "models")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    for name, target in (("extra.txt", secret), ("zero", Path("/dev/zero"))):
        bundle = tmp_path / f"b-{name}"
        shutil.copytree(bundles[0], bundle)
        os.symlink(target, bundle / name)
        with pytest.raises(BundleError, match="is a symbolic link"):
            registry.add(bundle)
    fifo_bundle = tmp_path / "b-fifo"
    shutil.copytree(bundles[0], fifo_bundle)
    os.mkfifo(fifo_bundle / "pipe")
    with pytest.raises(BundleError, match="is not a regular file"):
        registry.add(fifo_bundle)
    assert registry.versions() == []


def test_full_metrics_directory_degrades_metrics_not_scoring(tmp_path: Path) -> None:
    # A real full filesystem: a 1 MiB tmpfs (needs root); the scoring child must survive.
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code = f"""
import os
from pathlib import Path
from nearwatch.worker.metrics import create_service_metrics, prepare_multiprocess_dir
d = prepare_multiprocess_dir(Path({str(mount / 'm')!r}))
with open(d.parent / 'filler', 'wb') as f:
    try:
        while True:
            f.write(b'x' * 65536)
            f.flush()
    except OSError:
        pass
m = create_service_metrics()
if m is not None:
    for i in range(2000):
        m.batch_scored([{{"score": 1.0}}], ["invalid_field"], 0.01)
        m.record_errors.labels("label-%d" % i)
    print("lost", m.lost_updates)
print("alive")
"""
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]  # SIGBUS would be -7
        assert done.stdout.strip().endswith("alive")
        assert "metrics" in done.stderr  # logged: "metrics disabled" or "metrics degraded"
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_limits_are_settings() -> None:
    settings = Settings.from_env({"NEARWATCH_RECORD_MAX_BYTES": "100",
                                  "NEARWATCH_ERROR_MAX_CHARS": "50",
                                  "NEARWATCH_LINGER_MS": "2", "NEARWATCH_OUTAGE_DEADLINE": "9"})
    assert settings.limits.max_bytes == 100 and settings.limits.max_error_chars == 50
    assert settings.linger_ms == 2 and settings.outage_deadline == 9


def test_records_beyond_a_limit_keep_their_id_in_answer_and_dead_letter(
        tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    """A record refused for its fields or nesting was answered and dead-lettered with id null;
    a valid top-level id is known once it is parsed, so both carry it."""
    scorer = _scorer(tmp_path, bundles[0])
    fields = ", ".join(f'"k{i}": {i}' for i in range(LIMITS.max_fields + 5))
    lines = ['{"id": "manyfields", ' + fields + "}",
             '{"id": 7, "x": ' + "[" * 6 + "]" * 6 + "}",
             '{"id": ' + str(2**70) + ", " + fields + "}",  # orjson reads it as a float
             '{"id": NaN, ' + fields + "}",  # no valid id: null, as before
             '{"id": "#9", "load": 1}']  # a reserved id is still refused under its id
    answers = [_strict(text) for text in scorer.score_json(lines, 1)]
    assert [a["id"] for a in answers] == ["manyfields", 7, 2**70, None, "#9"]
    assert answers[0]["error"] == (f"record #1: record has {LIMITS.max_fields + 6} fields, "
                                   f"more than the limit of {LIMITS.max_fields}")
    assert answers[1]["error"] == "record #2: record nested deeper than 4 levels"
    letters = list(scorer.dead_letters.entries)  # type: ignore[attr-defined]
    assert [e["id"] for e in letters[-5:]] == ["manyfields", 7, 2**70, None, "#9"]
    # the parsed path did so already; the text path now answers alike
    (parsed,) = scorer.score_batch([json.loads(lines[0])])
    assert parsed["id"] == answers[0]["id"]


def test_json_errors_give_the_column_not_a_second_line_number() -> None:
    with pytest.raises(RecordRefused) as caught:
        parse_record("{bad", LIMITS)
    assert str(caught.value) == ("not valid JSON: Expecting property name enclosed in double "
                                 "quotes: column 2")
    with pytest.raises(RecordRefused, match=r"line 2 column 4$"):
        parse_record('{"a":\n 1,}', LIMITS)  # a record text of several lines (ingest)
