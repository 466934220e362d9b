"""The Redis model registry with real `nearwatch worker` processes: two nodes, each with its
own cache directory, sharing only Redis (models in DB 13, their broker in DB 14)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nearwatch.worker.remote_store import RedisModelStore

from tests.test_remote_registry import KEY, URL, _flip_chunk, client, signed  # noqa: F401, F811


@pytest.mark.slow
def test_two_worker_nodes_share_only_redis(tmp_path: Path, client: Any,  # noqa: F811
                                           signed: tuple[Path, Path]) -> None:  # noqa: F811
    """Real `nearwatch worker` processes, each with its own cache directory; their own
    broker (DB 14: no other test's workers answer these batches)."""
    import redis

    from tests.service_fixtures import (
        WorkerNode,
        scoring_client,
        start_worker_node,
        stream_records_for_test,
        wait_for,
    )

    store = RedisModelStore(client, KEY, location=URL)
    store.add(signed[0], promote=True)
    broker = "redis://127.0.0.1:6379/14"
    redis.Redis.from_url(broker).flushdb()
    env = {"NEARWATCH_BUNDLE_KEY": KEY.decode(), "NEARWATCH_BROKER_URL": broker,
           "NEARWATCH_REDIS_URL": broker}
    nodes: list[WorkerNode] = []
    try:
        for name in ("n1", "n2"):
            nodes.append(start_worker_node(tmp_path, URL, name, concurrency=1,
                                           NEARWATCH_MODEL_CACHE=str(tmp_path / f"cache-{name}"),
                                           **env))
        probe = scoring_client(nodes[0], batch_size=2, max_in_flight=4)
        records = stream_records_for_test(16, seed=3, prefix="r")

        def every_node_logged(text: str) -> bool:
            versions = {r.get("model_version") for r in probe.score(records)}
            assert None not in versions, versions  # every record answered by a model
            return all(text in node.proc.log() for node in nodes)

        store.add(signed[1], promote=True)
        wait_for(lambda: every_node_logged("serving model v0002 (was v0001)"), 60,
                 "both nodes to load v0002", interval=0.2)
        bad = store.add(signed[0])
        _flip_chunk(client, store, bad, "calibration.npy")
        store.set_current(bad)
        wait_for(lambda: every_node_logged(f"refusing model {bad}, keeping v0002"), 60,
                 "both nodes to refuse the tampered version", interval=0.2)
        assert {r["model_version"] for r in probe.score(records)} == {"v0002"}
        for name in ("n1", "n2"):
            cached = sorted(p.name for p in (tmp_path / f"cache-{name}").iterdir())
            assert cached == [".download.lock", "CURRENT", "v0001", "v0002"], cached
    finally:
        for node in nodes:
            node.proc.stop()
        redis.Redis.from_url(broker).flushdb()
