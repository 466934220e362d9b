"""Service configuration: the one place that reads the environment, and every default.

Every ``NEARWATCH_*`` variable is read here, once, into a frozen ``Settings`` that the
commands pass down; nothing else in the service reads ``os.environ`` (``command_settings.py``
warns of names that are no setting). The dataclasses
below hold the only copy of each default value: ``from_env``, the CLI options, the producer
(``ClientOptions``) and the ingest loop (``IngestOptions``) all take theirs from here.

>>> s = Settings.from_env({"NEARWATCH_METRICS_PORT": "9100"})
>>> s.broker_url, s.metrics_port, s.redis_url, s.broker_configured
('redis://127.0.0.1:6379/0', 9100, 'redis://127.0.0.1:6379/0', False)
>>> Settings.from_env({"NEARWATCH_BROKER_URL": "memory://"}).redis_url is None
True
>>> ClientOptions().batch_size == Settings().batch_size == IngestOptions().batch_size
True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .names import DEADLETTER_MAXLEN, DEADLETTER_STREAM, INGEST_GROUP, RECORDS_STREAM, SCORES_STREAM
from .setting_values import (
    DEFAULT_BROKER_URL,
    bounded,
    parse_broker_url,
    parse_flag,
    parse_http_url,
    parse_log_level,
    parse_names,
    parse_redis_url,
    parse_result_backend,
    redacted,
)
from .settings_sections import (
    AlertSettings,
    BufferSettings,
    RecordLimits,
    RetrainSettings,
    SettingsError,
)

T = TypeVar("T")


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
    # NEARWATCH_MODEL_DIR=redis://...: the registry lives in Redis (worker/remote_store.py),
    # cached per node in model_cache (NEARWATCH_MODEL_CACHE; None: a fresh temp dir per node).
    model_store: str | None = None
    model_cache: Path | None = None
    # NEARWATCH_BUNDLE_KEY: bundles are HMAC-signed by `train` and must be signed to be added
    # or served. None: checksums only (they catch corruption, not deliberate tampering).
    bundle_key: bytes | None = field(default=None, repr=False)
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
    # A producer sends a partial batch once its first record has waited this long.
    linger_ms: float = 5.0
    # Producers and `ingest` retry Redis/broker operations (backoff) for this many seconds
    # of an outage, then answer what they could not deliver (or exit, entries kept pending).
    outage_deadline: float = 120.0
    limits: RecordLimits = field(default_factory=RecordLimits)
    log_level: str = "INFO"
    alerts: AlertSettings = field(default_factory=AlertSettings)
    buffer: BufferSettings = field(default_factory=BufferSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        default = cls()  # unset variables keep the dataclass defaults above
        alert, buffer, retrain = default.alerts, default.buffer, default.retrain

        def get(name: str, parse: Callable[[str], T], fallback: T) -> T:
            raw = env.get(f"NEARWATCH_{name}")
            if raw is None or raw.strip() == "":
                return fallback
            try:
                return bounded(parse(raw.strip()))
            except ValueError as exc:
                raise SettingsError(f"NEARWATCH_{name}={redacted(raw)!r}: {exc}") from exc

        broker_url = get("BROKER_URL", parse_broker_url, default.broker_url)
        broker_is_redis = broker_url.startswith(("redis://", "rediss://"))
        redis_url = get("REDIS_URL", parse_redis_url, broker_url if broker_is_redis else "")
        backend_default = redis_url or ("cache+memory://" if broker_url == "memory://" else "")
        backend = get("RESULT_BACKEND", parse_result_backend, backend_default)
        metrics_dir = get("METRICS_DIR", str, "")
        model_location = get("MODEL_DIR", str, str(default.model_dir))
        remote_models = model_location.startswith(("redis://", "rediss://", "unix://"))
        model_cache = get("MODEL_CACHE", str, "")
        settings = cls(
            broker_url=broker_url,
            broker_configured="NEARWATCH_BROKER_URL" in env,
            result_backend=backend or None,
            redis_url=redis_url or None,
            model_dir=default.model_dir if remote_models else Path(model_location),
            model_store=model_location if remote_models else None,
            model_cache=Path(model_cache) if model_cache else None,
            bundle_key=get("BUNDLE_KEY", str, "").encode() or None,
            metrics_port=get("METRICS_PORT", int, default.metrics_port),
            metrics_host=get("METRICS_HOST", str, default.metrics_host),
            metrics_dir=Path(metrics_dir) if metrics_dir else None,
            visibility_timeout=get("VISIBILITY_TIMEOUT", float, default.visibility_timeout),
            reload_interval=get("RELOAD_INTERVAL", float, default.reload_interval),
            result_expires=get("RESULT_EXPIRES", int, default.result_expires),
            threads_per_process=get("THREADS", int, default.threads_per_process),
            batch_size=get("BATCH_SIZE", int, default.batch_size),
            max_in_flight=get("MAX_IN_FLIGHT", int, default.max_in_flight),
            batch_timeout=get("BATCH_TIMEOUT", float, default.batch_timeout),
            max_attempts=get("MAX_ATTEMPTS", int, default.max_attempts),
            linger_ms=get("LINGER_MS", float, default.linger_ms),
            outage_deadline=get("OUTAGE_DEADLINE", float, default.outage_deadline),
            limits=RecordLimits(
                max_bytes=get("RECORD_MAX_BYTES", int, default.limits.max_bytes),
                max_fields=get("RECORD_MAX_FIELDS", int, default.limits.max_fields),
                max_depth=get("RECORD_MAX_DEPTH", int, default.limits.max_depth),
                max_error_chars=get("ERROR_MAX_CHARS", int, default.limits.max_error_chars),
            ),
            log_level=get("LOG_LEVEL", parse_log_level, default.log_level),
            alerts=AlertSettings(
                enabled=get("ALERTS", parse_flag, alert.enabled),
                maxlen=get("ALERT_MAXLEN", int, alert.maxlen),
                explain_max=get("ALERT_EXPLAIN_MAX", int, alert.explain_max),
                webhook_url=get("ALERT_WEBHOOK_URL", parse_http_url,
                                alert.webhook_url or "") or None,
                alertmanager_url=get("ALERTMANAGER_URL", parse_http_url,
                                     alert.alertmanager_url or "") or None,
                jsonl=get("ALERT_JSONL", str, alert.jsonl or "") or None,
                window_s=get("ALERT_WINDOW_S", float, alert.window_s),
                key=get("ALERT_KEY", parse_names, alert.key),
                rate_limit=get("ALERT_RATE_LIMIT", float, alert.rate_limit),
                timeout_s=get("ALERT_TIMEOUT_S", float, alert.timeout_s),
                retries=get("ALERT_RETRIES", int, alert.retries),
                backoff_s=get("ALERT_BACKOFF_S", float, alert.backoff_s),
                severity=get("ALERT_SEVERITY", str, alert.severity),
                resolve_s=get("ALERT_RESOLVE_S", float, alert.resolve_s),
                redeliver_s=get("ALERT_REDELIVER_S", float, alert.redeliver_s),
                metrics_port=get("ALERT_METRICS_PORT", int, alert.metrics_port),
            ),
            buffer=BufferSettings(
                enabled=get("BUFFER", parse_flag, buffer.enabled),
                capacity=get("BUFFER_RECORDS", int, buffer.capacity),
                max_bytes=get("BUFFER_BYTES", int, buffer.max_bytes),
                max_record_bytes=get("BUFFER_RECORD_BYTES", int, buffer.max_record_bytes),
                window_s=get("BUFFER_WINDOW_S", float, buffer.window_s),
                buckets=get("BUFFER_BUCKETS", int, buffer.buckets),
                min_p=get("BUFFER_MIN_P", float, buffer.min_p),
                golden_records=get("GOLDEN_RECORDS", int, buffer.golden_records),
                golden_fraction=get("GOLDEN_FRACTION", float, buffer.golden_fraction),
            ),
            retrain=RetrainSettings(
                schedule=get("RETRAIN_SCHEDULE", str, retrain.schedule or "") or None,
                expires_s=get("RETRAIN_EXPIRES_S", float, 0.0) or retrain.expires_s,
                lock_ttl_s=get("RETRAIN_LOCK_TTL_S", float, retrain.lock_ttl_s),
                beat_lease_ttl_s=get("BEAT_LEASE_TTL_S", float, retrain.beat_lease_ttl_s),
                min_records=get("RETRAIN_MIN_RECORDS", int, retrain.min_records),
                holdout_fraction=get("RETRAIN_HOLDOUT", float, retrain.holdout_fraction),
                max_flag_rate=get("RETRAIN_MAX_FLAG_RATE", float, retrain.max_flag_rate),
                auroc_margin=get("RETRAIN_AUROC_MARGIN", float, retrain.auroc_margin),
                recall_margin=get("RETRAIN_RECALL_MARGIN", float, retrain.recall_margin),
                feedback_max=get("FEEDBACK_MAX", int, retrain.feedback_max),
                keep_versions=get("RETRAIN_KEEP_VERSIONS", int, retrain.keep_versions),
                drift_threshold=get("DRIFT_THRESHOLD", float, retrain.drift_threshold),
                drift_window=get("DRIFT_WINDOW", int, retrain.drift_window),
                drift_check_s=get("DRIFT_CHECK_S", float, retrain.drift_check_s),
                drift_min_interval_s=get("DRIFT_MIN_INTERVAL_S", float,
                                         retrain.drift_min_interval_s),
                drift_baseline_windows=get("DRIFT_BASELINE_WINDOWS", int,
                                           retrain.drift_baseline_windows),
                metrics_port=get("BEAT_METRICS_PORT", int, retrain.metrics_port),
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = {
            "VISIBILITY_TIMEOUT": self.visibility_timeout,
            # answer lists expire after it: 0 (Celery's "never") would delete each at once
            "RESULT_EXPIRES": self.result_expires,
            "RELOAD_INTERVAL": self.reload_interval + 1e-9,
            "THREADS": self.threads_per_process,
            "BATCH_SIZE": self.batch_size,
            "MAX_IN_FLIGHT": self.max_in_flight,
            "BATCH_TIMEOUT": self.batch_timeout,
            "MAX_ATTEMPTS": self.max_attempts,
            "OUTAGE_DEADLINE": self.outage_deadline,
            "RECORD_MAX_BYTES": self.limits.max_bytes,
            "RECORD_MAX_FIELDS": self.limits.max_fields,
            "RECORD_MAX_DEPTH": self.limits.max_depth,
            "ERROR_MAX_CHARS": self.limits.max_error_chars,
        }
        if self.linger_ms < 0:
            raise SettingsError("NEARWATCH_LINGER_MS must not be negative")
        for name, value in positive.items():
            if value <= 0:
                raise SettingsError(f"NEARWATCH_{name} must be positive")
        if not 0 <= self.metrics_port <= 65535:  # 0: pick a free port
            raise SettingsError("NEARWATCH_METRICS_PORT must be in 0..65535")
        self.alerts.validate()
        self.buffer.validate()
        self.retrain.validate()
        if self.result_backend is None:
            raise SettingsError(
                "no result backend: set NEARWATCH_RESULT_BACKEND or NEARWATCH_REDIS_URL "
                f"(the broker {self.broker_url!r} is not Redis)"
            )


# The defaults as values, for the CLI's option defaults and help texts.
DEFAULTS = Settings()


@dataclass(frozen=True)
class ClientOptions:
    """How a producer (``ScoringClient``) batches, bounds and resubmits its work."""

    batch_size: int = DEFAULTS.batch_size
    max_in_flight: int = DEFAULTS.max_in_flight
    batch_timeout: float = DEFAULTS.batch_timeout
    max_attempts: int = DEFAULTS.max_attempts
    # Longest single wait on a result; result backends with push (Redis) return earlier.
    poll_interval: float = 0.2
    # The record field the model reads ids from; answers are checked against it.
    id_field: str = "id"
    linger: float = DEFAULTS.linger_ms / 1000  # seconds before a partial batch is sent
    outage_deadline: float = DEFAULTS.outage_deadline
    limits: RecordLimits = DEFAULTS.limits
    # Answers come back on this client's own Redis list (worker/answers.py); False: through
    # Celery's result backend, as without Redis (kept to measure the two in one benchmark).
    answer_list: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ClientOptions:
        """The settings' values; an override that is None (an option not given) is ignored."""
        values: dict[str, Any] = {
            "batch_size": settings.batch_size, "max_in_flight": settings.max_in_flight,
            "batch_timeout": settings.batch_timeout, "max_attempts": settings.max_attempts,
            "linger": settings.linger_ms / 1000, "outage_deadline": settings.outage_deadline,
            "limits": settings.limits,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class IngestOptions:
    """The Redis streams and pacing of `nearwatch ingest` (``StreamIngest``)."""

    records_stream: str = RECORDS_STREAM
    scores_stream: str = SCORES_STREAM
    deadletter_stream: str = DEADLETTER_STREAM
    group: str = INGEST_GROUP
    consumer: str = ""  # default: <hostname>-<pid>
    batch_size: int = DEFAULTS.batch_size
    block_ms: int = 200
    claim_idle_ms: int = 30_000
    scores_maxlen: int = 1_000_000
    deadletter_maxlen: int = DEADLETTER_MAXLEN
    stop_when_idle: bool = False  # exit once nothing is new, pending or claimable (tests, jobs)
    outage_deadline: float = DEFAULTS.outage_deadline  # s of Redis outage ridden out
    limits: RecordLimits = DEFAULTS.limits
