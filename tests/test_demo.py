"""README command 1: `nearwatch demo`, the first thing a user sees, run as a user runs it:
a fresh process, no broker configured (an in-process Celery worker on the in-memory broker).
A subprocess also keeps the demo's worker out of the test process's Celery state."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.service_fixtures import CLI, REPO, service_env


def test_demo_answers_every_record_and_known_anomalies_raise_recall(tmp_path: Path) -> None:
    env = {k: v for k, v in service_env(tmp_path / "models").items()
           if k not in ("NEARWATCH_BROKER_URL", "NEARWATCH_REDIS_URL", "NEARWATCH_MODEL_DIR")}
    done = subprocess.run([*CLI, "demo"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    text = done.stdout
    assert done.returncode == 0, text + done.stderr[-3000:]
    summaries = re.findall(r"(\d+)/40 true anomalies found, false-alarm rate ([\d.]+)%\), "
                           r"2 errors, 0 unanswered", text)
    assert len(summaries) == 2, text
    (plain_hits, plain_fpr), (informed_hits, informed_fpr) = summaries
    # the certified threshold holds on the stream's normals (alpha = 1 %)
    assert float(plain_fpr) < 1.0 and float(informed_fpr) < 1.0
    # unlabelled, the local-density score finds most of them (measured 25 of 40; 9 before it)
    assert int(plain_hits) >= 20
    # the hard-negative mode finds nearly all of the injected anomalies (measured 37 of 40)
    assert int(informed_hits) >= 30 and int(informed_hits) > int(plain_hits)
    assert "field 'latency_ms': cannot convert 'fast' to a number" in text
    assert "model v0002" in text  # the worker hot-reloaded the retrained model


def test_waiting_for_absent_workers_ends_with_what_to_do() -> None:
    from nearwatch.worker.demo import _wait_for_version

    class NoWorkers:  # what ScoringClient answers when no worker takes the batch
        def score_batches(self, batches: list) -> Any:
            yield [{"id": None, "error": "record 0: unanswered after 3 attempt(s)"}]

    with pytest.raises(RuntimeError, match=r"no worker served model v0001 within \d+ s \(last "
                       r"answer: record 0: unanswered.*is `nearwatch worker` running"):
        _wait_for_version(NoWorkers(), "v0001", {"id": 1}, timeout=0.2)  # type: ignore[arg-type]
