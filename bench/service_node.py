"""The worker node of the service benchmark: ``nearwatch worker`` in a subprocess, and the
CPU seconds used by the client, the node and Redis (from /proc and Redis INFO)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/12"
ROOT = Path(__file__).resolve().parents[1]


def _cpu_seconds(node: Any) -> dict[str, float]:
    """CPU seconds used so far by this process (the client), the worker node, and Redis."""
    import redis

    own = os.times()
    ticks = 0
    for pid in node.pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return {"client": own.user + own.system,
            "worker_node": ticks / os.sysconf("SC_CLK_TCK"),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"])}



class _worker_node:  # noqa: N801  (used as a context manager, reads like one)
    """``nearwatch worker`` in a subprocess on Redis DB 12; yields a client app."""

    def __init__(self, model_dir: Path, concurrency: int, work: Path,
                 loglevel: str = "WARNING", extra_env: dict[str, str] | None = None,
                 pool: str = "prefork") -> None:
        self.model_dir, self.concurrency, self.work = model_dir, concurrency, work
        self.pool = pool
        self.loglevel = loglevel
        self.extra_env = dict(extra_env or {})

    def __enter__(self) -> Any:
        import redis
        from nearwatch.worker.app import create_app
        from nearwatch.worker.settings import Settings

        redis.Redis.from_url(REDIS_URL).flushdb()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEARWATCH_")}
        env.update(NEARWATCH_BROKER_URL=REDIS_URL, NEARWATCH_MODEL_DIR=str(self.model_dir),
                   NEARWATCH_METRICS_PORT=str(port), NEARWATCH_LOG_LEVEL=self.loglevel,
                   NEARWATCH_METRICS_HOST="127.0.0.1",
                   OMP_NUM_THREADS="1")
        env.update(self.extra_env)
        self.log = (self.work / "worker.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from nearwatch.worker.cli import main; main()", "worker",
             "--concurrency", str(self.concurrency), "--pool", self.pool],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        app = create_app(Settings.from_env(env))
        from nearwatch.worker.client import ClientOptions, ScoringClient

        probe = ScoringClient(app, ClientOptions(batch_size=1, batch_timeout=120))
        list(probe.score([{"id": "probe"}]))  # answered (with an error) once a worker is up
        time.sleep(1.0)  # let every pool process finish loading
        return app

    def pids(self) -> list[int]:
        """The node's process and its children (prefork pool or scoring processes)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [self.process.pid, *map(int, path.read_text().split())]
        except OSError:
            return [self.process.pid]

    def __exit__(self, *_: Any) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()
