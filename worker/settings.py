"""Service configuration: the one place that reads the environment.

Every ``NEARWATCH_*`` variable is read here, once, into a frozen ``Settings`` that the
commands pass down; nothing else in the service looks at ``os.environ``.

>>> s = Settings.from_env({"NEARWATCH_METRICS_PORT": "9100"})
>>> s.broker_url, s.metrics_port, s.redis_url, s.broker_configured
('redis://127.0.0.1:6379/0', 9100, 'redis://127.0.0.1:6379/0', False)
>>> Settings.from_env({"NEARWATCH_BROKER_URL": "memory://"}).redis_url is None
True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything the worker, the producers and the ingest loop need to know."""

    broker_url: str = DEFAULT_BROKER_URL
    # True when NEARWATCH_BROKER_URL was set: `nearwatch demo` then uses the real broker.
    broker_configured: bool = False
    result_backend: str | None = DEFAULT_BROKER_URL
    # Redis for the dead-letter and ingest streams; None: no Redis (dead letters are logged).
    redis_url: str | None = DEFAULT_BROKER_URL
    model_dir: Path = Path("models")
    metrics_port: int = 9808
    metrics_host: str = "0.0.0.0"
    # prometheus_client multiprocess directory; None: a fresh temporary one per worker node.
    metrics_dir: Path | None = None
    # Unacknowledged broker messages of a dead worker node come back after this many seconds
    # (Redis transport); it must exceed the longest batch.
    visibility_timeout: float = 300.0
    # How often a worker process looks at the registry pointer (CURRENT) for a new model.
    reload_interval: float = 2.0
    result_expires: int = 3600
    # torch/faiss threads per worker process: the pool gives the parallelism.
    threads_per_process: int = 1
    batch_size: int = 500
    max_in_flight: int = 8
    # A batch with no answer after this long is submitted again (the client dedupes).
    batch_timeout: float = 60.0
    max_attempts: int = 3
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(f"NEARWATCH_{name}")
            if raw is None or raw.strip() == "":
                return default
            try:
                return parse(raw.strip())
            except ValueError as exc:
                raise SettingsError(f"NEARWATCH_{name}={raw!r}: {exc}") from exc

        broker_url = get("BROKER_URL", str, DEFAULT_BROKER_URL)
        broker_is_redis = broker_url.startswith(("redis://", "rediss://"))
        redis_url = get("REDIS_URL", str, broker_url if broker_is_redis else "")
        backend_default = redis_url or ("cache+memory://" if broker_url == "memory://" else "")
        backend = get("RESULT_BACKEND", str, backend_default)
        metrics_dir = get("METRICS_DIR", str, "")
        settings = cls(
            broker_url=broker_url,
            broker_configured="NEARWATCH_BROKER_URL" in env,
            result_backend=backend or None,
            redis_url=redis_url or None,
            model_dir=Path(get("MODEL_DIR", str, "models")),
            metrics_port=get("METRICS_PORT", int, 9808),
            metrics_host=get("METRICS_HOST", str, "0.0.0.0"),
            metrics_dir=Path(metrics_dir) if metrics_dir else None,
            visibility_timeout=get("VISIBILITY_TIMEOUT", float, 300.0),
            reload_interval=get("RELOAD_INTERVAL", float, 2.0),
            result_expires=get("RESULT_EXPIRES", int, 3600),
            threads_per_process=get("THREADS", int, 1),
            batch_size=get("BATCH_SIZE", int, 500),
            max_in_flight=get("MAX_IN_FLIGHT", int, 8),
            batch_timeout=get("BATCH_TIMEOUT", float, 60.0),
            max_attempts=get("MAX_ATTEMPTS", int, 3),
            log_level=get("LOG_LEVEL", str, "INFO").upper(),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = {
            "VISIBILITY_TIMEOUT": self.visibility_timeout,
            "RELOAD_INTERVAL": self.reload_interval + 1e-9,
            "THREADS": self.threads_per_process,
            "BATCH_SIZE": self.batch_size,
            "MAX_IN_FLIGHT": self.max_in_flight,
            "BATCH_TIMEOUT": self.batch_timeout,
            "MAX_ATTEMPTS": self.max_attempts,
        }
        for name, value in positive.items():
            if value <= 0:
                raise SettingsError(f"NEARWATCH_{name} must be positive")
        if not 0 <= self.metrics_port <= 65535:  # 0: pick a free port
            raise SettingsError("NEARWATCH_METRICS_PORT must be in 0..65535")
        if self.result_backend is None:
            raise SettingsError(
                "no result backend: set NEARWATCH_RESULT_BACKEND or NEARWATCH_REDIS_URL "
                f"(the broker {self.broker_url!r} is not Redis)"
            )
