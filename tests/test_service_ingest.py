"""The Redis-stream path: XADD → `nearwatch ingest` → nearwatch:scores, with a consumer killed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.service_fixtures import (
    CLI,
    Proc,
    WorkerNode,
    service_env,
    stream_records_for_test,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_ingest_consumer_killed_midway_nothing_lost_or_pending(
    node: WorkerNode, redis_client: Any, tmp_path: Path
) -> None:
    for key in ("nearwatch:records", "nearwatch:scores", "nearwatch:deadletter"):
        redis_client.delete(key)
    records = stream_records_for_test(2000, seed=41, prefix="i")
    pipe = redis_client.pipeline()
    for record in records:
        pipe.xadd("nearwatch:records", {"record": json.dumps(record)})
    pipe.xadd("nearwatch:records", {"record": "{not json"})
    pipe.xadd("nearwatch:records", {"payload": "{}"})
    pipe.xadd("nearwatch:records", {"record": json.dumps({"id": "bad", "load": "x"})})
    entry_ids = [e.decode() for e in pipe.execute()]

    env = service_env(node.settings.model_dir)
    first = Proc([*CLI, "ingest", "--batch", "20", "--consumer", "first"], env,
                 tmp_path / "ingest-first.log")
    try:
        wait_for(lambda: redis_client.xlen("nearwatch:scores") >= 300, 60,
                 "the first consumer to write results")
        os.killpg(first.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.stop()
    assert redis_client.xlen("nearwatch:scores") < len(entry_ids)
    # the dead consumer left entries pending: the second one must reclaim them
    assert redis_client.xpending("nearwatch:records", "nearwatch")["pending"] > 0
    second = Proc([*CLI, "ingest", "--batch", "100", "--consumer", "second",
                   "--claim-idle-ms", "1000", "--stop-when-idle"], env,
                  tmp_path / "ingest-second.log")
    try:
        assert second.process.wait(120) == 0, second.log()[-3000:]
    finally:
        second.stop()

    written = redis_client.xrange("nearwatch:scores")
    sources = [fields[b"entry"].decode() for _, fields in written]
    assert sorted(sources) == sorted(entry_ids)  # every entry answered exactly once
    assert redis_client.xpending("nearwatch:records", "nearwatch")["pending"] == 0
    assert " 0 claimed" not in second.log()
    results = {fields[b"entry"].decode(): json.loads(fields[b"result"]) for _, fields in written}
    assert [results[e]["id"] for e in entry_ids[:2000]] == [r["id"] for r in records]
    assert "not valid JSON" in results[entry_ids[2000]]["error"]
    assert "no 'record' field" in results[entry_ids[2001]]["error"]
    assert "load" in results[entry_ids[2002]]["error"]
    letters = redis_client.xrange("nearwatch:deadletter")
    assert len(letters) == 3
    # the entry without a record is dead-lettered by a worker too: its reason, its fields
    reasons = {f[b"reason"].decode(): f for _, f in letters}
    assert sorted(reasons) == ["invalid_field", "invalid_json", "no_record"]
    assert json.loads(reasons["no_record"][b"record"]) == {"payload": "{}"}
    assert reasons["no_record"][b"entry"].decode() == entry_ids[2001]  # written at its ack
    # a record the workers refuse is named by its id, else by its stream entry
    assert reasons["invalid_json"][b"error"].decode().startswith(f"stream entry {entry_ids[2000]}")
    assert reasons["invalid_field"][b"error"].decode().startswith("id 'bad': field 'load'")
    assert reasons["invalid_json"][b"record"] == b"{not json"
