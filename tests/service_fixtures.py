"""Fixtures and helpers for the service tests: real Redis, real worker processes.

Imported by the ``test_service_*`` modules (not a conftest, so other suites are unaffected).
Redis DB 11 is reserved for these tests; every subprocess is killed with its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/11"
CLI = [sys.executable, "-c", "from nearwatch.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def http_get(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except OSError:
        return None


def service_env(model_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEARWATCH_")}
    env.update({
        "NEARWATCH_BROKER_URL": REDIS_URL, "NEARWATCH_REDIS_URL": REDIS_URL,
        "NEARWATCH_MODEL_DIR": str(model_dir), "NEARWATCH_RELOAD_INTERVAL": "0.3",
        "NEARWATCH_VISIBILITY_TIMEOUT": "8", "NEARWATCH_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        "NEARWATCH_METRICS_HOST": "127.0.0.1",  # tests listen on loopback only
    })
    env.update(extra)
    return env


@dataclass
class Proc:
    """A subprocess in its own session (so the whole group can be killed) logging to a file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, then SIGKILL what is left; the exit status after SIGTERM."""
        status = self.process.poll()
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group, e.g. pool children
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        return status


@dataclass
class WorkerNode:
    proc: Proc
    metrics_port: int
    metrics_dir: Path
    settings: Any

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@pytest.fixture(scope="session")
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1",
                        "--port", "6379", "--save", ""], check=False)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: _pings(client), 5, "redis")
    if not _pings(client):
        pytest.skip("no Redis at 127.0.0.1:6379 (make services)")
    client.flushdb()
    yield client
    client.flushdb()


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def train_bundle(path: Path, seed: int, n: int = 1500) -> Path:
    from nearwatch.detector import Detector
    from nearwatch.detector.synthetic import LABEL_FIELD, generate_records

    records = generate_records(n, anomaly_rate=0.0, seed=seed)
    detector = Detector(label_fields=(LABEL_FIELD,), encoder="identity", random_state=seed)
    detector.fit(records).save(path)
    return path


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small models that differ (training data seed), trained once per session."""
    root = tmp_path_factory.mktemp("bundles")
    return train_bundle(root / "a", seed=1), train_bundle(root / "b", seed=2)


def stream_records_for_test(n: int, seed: int = 5, prefix: str = "t") -> list[dict[str, Any]]:
    from nearwatch.detector.synthetic import generate_records

    records = generate_records(n, anomaly_rate=0.05, seed=seed)
    for record in records:
        record["id"] = f"{prefix}{record['id']}"
    return records


def start_worker_node(tmp: Path, model_dir: Path, name: str, concurrency: int = 2,
                      ready_timeout: float = 90.0, pool: str = "prefork", **env: str
                      ) -> WorkerNode:
    from nearwatch.worker.settings import Settings

    port = free_port()
    metrics_dir = tmp / f"metrics-{name}"
    full_env = service_env(model_dir, NEARWATCH_METRICS_PORT=str(port),
                           NEARWATCH_METRICS_DIR=str(metrics_dir), **env)
    proc = Proc([*CLI, "worker", "--concurrency", str(concurrency), "--pool", pool], full_env,
                tmp / f"worker-{name}.log")
    node = WorkerNode(proc, port, metrics_dir, Settings.from_env(full_env))
    try:
        # Ready when every pool process has loaded the model (it sets the model-info gauge).
        wait_for(lambda: _children_ready(node, concurrency), ready_timeout,
                 f"worker {name} pool processes to load the model (log: {proc.log_path})",
                 interval=0.25)
    except BaseException:
        proc.stop()
        raise
    return node


def _children_ready(node: WorkerNode, concurrency: int) -> bool:
    if node.proc.process.poll() is not None:
        raise AssertionError(f"worker exited early:\n{node.proc.log()[-3000:]}")
    if http_get(node.metrics_url) is None:
        return False
    loaded = [f for f in os.listdir(node.metrics_dir) if f.startswith("gauge_livemax_")]
    return len(loaded) >= concurrency


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts real worker/Redis/Prometheus processes")


@pytest.fixture(scope="session")
def node_registry(tmp_path_factory: pytest.TempPathFactory, bundles: tuple[Path, Path]) -> Any:
    from nearwatch.detector.store.registry import ModelRegistry

    registry = ModelRegistry(tmp_path_factory.mktemp("node") / "models")
    registry.add(bundles[0], promote=True)
    return registry


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, redis_client: Any,
         node_registry: Any) -> Iterator[WorkerNode]:
    """One worker node (2 pool processes) shared by the service tests."""
    worker = start_worker_node(tmp_path_factory.mktemp("node-run"), node_registry.root, "main")
    yield worker
    status = worker.proc.stop()
    assert status == 0, f"worker did not shut down cleanly on SIGTERM:\n{worker.proc.log()[-2000:]}"


def scoring_client(node: WorkerNode, **options: Any) -> Any:
    from nearwatch.worker.app import create_app
    from nearwatch.worker.client import ClientOptions, ScoringClient

    defaults: dict[str, Any] = {"batch_size": 50, "max_in_flight": 4, "batch_timeout": 30.0}
    defaults.update(options)
    return ScoringClient(create_app(node.settings), ClientOptions(**defaults))


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` (with ``labels`` in their label set) in an exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if labels and labels not in line:
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_broker_idle(redis_client: Any, timeout: float = 60.0) -> None:
    """Wait until no batch is queued or unacknowledged (kombu's Redis keys), e.g. until a
    killed node's batch has come back after the visibility timeout and been scored."""
    wait_for(lambda: redis_client.llen("scoring") == 0 and redis_client.hlen("unacked") == 0,
             timeout, "the broker to have no queued or unacknowledged batch", interval=0.2)


def flushed_redis(url: str) -> Iterator[Any]:
    """A Redis client on ``url``'s database, flushed before and after (skip without Redis)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379 (make services)")
    client.flushdb()
    yield client
    client.flushdb()
