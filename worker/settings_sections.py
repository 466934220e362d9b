"""The settings of the service's subsystems: alerts, the reference buffer, retraining.

Part of ``worker/settings.py`` (which builds them from the environment, once): each
dataclass holds the only copy of its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class RecordLimits:
    """Per-record limits, enforced by producers and workers (docs/SERVICE.md, "Limits")."""

    max_bytes: int = 1_048_576  # one record's JSON text, in UTF-8 bytes (checked unparsed)
    max_fields: int = 1_000  # top-level fields of one record
    max_depth: int = 16  # nesting of lists/objects inside a record
    max_error_chars: int = 1_000  # error texts in answers and dead letters are cut to this


@dataclass(frozen=True)
class AlertSettings:
    """Alert events (written by the workers) and their delivery (``nearwatch alerts``)."""

    # Workers write one event per flagged record to nearwatch:alerts (NEARWATCH_ALERTS=0: off).
    enabled: bool = True
    maxlen: int = 100_000  # approximate length cap of nearwatch:alerts
    # explain() costs ~7x the scoring of a record: at most this many per batch are explained.
    explain_max: int = 20
    webhook_url: str | None = None
    alertmanager_url: str | None = None
    jsonl: str | None = None  # "-": stdout, else a file path; None: no JSONL sink
    # Events with the same key (these record fields + the model version) within this many
    # seconds become one notification with a count.
    window_s: float = 60.0
    key: tuple[str, ...] = ("service",)
    rate_limit: float = 30.0  # notifications per minute per sink (0: unlimited)
    timeout_s: float = 5.0  # per HTTP attempt
    retries: int = 4  # after the first attempt; exponential backoff with jitter in between
    backoff_s: float = 0.5  # first retry delay (doubles per retry, capped at 30 s)
    severity: str = "warning"  # Alertmanager label
    # Alertmanager's endsAt = the last event + this: a key that stops firing resolves.
    resolve_s: float = 300.0
    # a sink still failing after its retries is owed the notification: tried again with
    # backoff (5 s doubling to 5 min) for this long, then dead-lettered (0: at once)
    redeliver_s: float = 3600.0
    metrics_port: int = 9809  # /metrics of `nearwatch alerts`

    def validate(self) -> None:
        positive = {"ALERT_MAXLEN": self.maxlen, "ALERT_WINDOW_S": self.window_s,
                    "ALERT_TIMEOUT_S": self.timeout_s, "ALERT_RESOLVE_S": self.resolve_s}
        for name, value in positive.items():
            if value <= 0:
                raise SettingsError(f"NEARWATCH_{name} must be positive")
        non_negative = {"ALERT_EXPLAIN_MAX": self.explain_max, "ALERT_RETRIES": self.retries,
                        "ALERT_RATE_LIMIT": self.rate_limit, "ALERT_BACKOFF_S": self.backoff_s,
                        "ALERT_REDELIVER_S": self.redeliver_s}
        for name, value in non_negative.items():
            if value < 0:
                raise SettingsError(f"NEARWATCH_{name} must not be negative")
        for name, url in (("ALERT_WEBHOOK_URL", self.webhook_url),
                          ("ALERTMANAGER_URL", self.alertmanager_url)):
            if url is not None and not url.startswith(("http://", "https://")):
                raise SettingsError(f"NEARWATCH_{name}={url!r}: not an http(s) URL")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError("NEARWATCH_ALERT_METRICS_PORT must be in 0..65535")


@dataclass(frozen=True)
class BufferSettings:
    """The reference buffer: a bounded, time-windowed sample of scored records in Redis.

    Workers add every scored record with its p-value (one pipelined write per batch);
    retraining takes its references from the records with ``p_value >= min_p`` only, so
    flagged and near-threshold records never become "normal", and calibrates on the held-out
    records the champion did not flag (docs/SERVICE.md, "Retraining", says why).
    """

    enabled: bool = True
    capacity: int = 20_000  # records over the whole window (split evenly over the buckets)
    max_bytes: int = 64 << 20  # bytes over the whole window
    max_record_bytes: int = 16_384  # a larger record is not sampled
    window_s: float = 86_400.0  # records older than this leave the buffer
    buckets: int = 24  # one reservoir per window_s / buckets: the sample spans the window
    min_p: float = 0.1  # p-value a record needs to train the next model as normal
    golden_records: int = 5_000  # pinned sample of the original training data
    golden_fraction: float = 0.3  # share of golden records among the training references

    def validate(self) -> None:
        positive = {"BUFFER_RECORDS": self.capacity, "BUFFER_BYTES": self.max_bytes,
                    "BUFFER_RECORD_BYTES": self.max_record_bytes,
                    "BUFFER_WINDOW_S": self.window_s, "BUFFER_BUCKETS": self.buckets,
                    "GOLDEN_RECORDS": self.golden_records}
        for name, value in positive.items():
            if value <= 0:
                raise SettingsError(f"NEARWATCH_{name} must be positive")
        for name, level in (("BUFFER_MIN_P", self.min_p),
                            ("GOLDEN_FRACTION", self.golden_fraction)):
            if not 0 <= level < 1:
                raise SettingsError(f"NEARWATCH_{name} must be in [0, 1)")

    @property
    def bucket_s(self) -> float:
        return self.window_s / self.buckets


@dataclass(frozen=True)
class RetrainSettings:
    """Scheduled retraining, its gate, and the drift signal that can trigger it early."""

    # "3600" (seconds), "30m", "6h", "1d", or a cron line "0 3 * * *"; None: only by hand
    # (`nearwatch retrain`) and on drift.
    schedule: str | None = None
    expires_s: float | None = None  # a run not started by then is dropped (default: interval)
    lock_ttl_s: float = 3_600.0  # the single-flight lock outlives a crashed retraining by this
    # fewer buffer records: skipped (2000 hold out 400, of which 200 calibrate: >= the 299
    # that certify alpha = 0.01 after the champion's flags are left out)
    min_records: int = 2_000
    holdout_fraction: float = 0.4  # buffer records held out: half calibrate, half gate
    max_flag_rate: float = 0.2  # held-out window flagged above this: skipped (contaminated)
    auroc_margin: float = 0.01  # challenger AUROC on labelled anomalies may be this much lower
    recall_margin: float = 0.05  # ... and its recall at threshold this much lower
    feedback_max: int = 100_000  # analyst verdicts kept
    # versions kept in the registry after each retraining (0: all); the current one and the
    # last 5 promotions are never removed
    keep_versions: int = 20
    drift_threshold: float = 1_000.0  # Shiryaev-Roberts alarm level: P(false alarm in m
    drift_window: int = 2_000  # windows) <= m / threshold; records per test window
    drift_check_s: float = 60.0  # how often beat closes drift windows
    drift_min_interval_s: float = 3_600.0  # drift-triggered retrainings at most this often
    # a model's first windows measure its own flag rate (anomalies included): the test is
    # against the larger of that and its bound, so steady traffic is not drift
    drift_baseline_windows: int = 5
    metrics_port: int = 9810  # /metrics of `nearwatch beat`
    beat_lease_ttl_s: float = 30.0  # exactly one beat: a killed one's lease expires after this

    def validate(self) -> None:
        if not self.beat_lease_ttl_s >= 1:  # renewed every third of it: not a busy loop
            raise SettingsError("NEARWATCH_BEAT_LEASE_TTL_S must be at least 1 (seconds)")
        positive = {"RETRAIN_LOCK_TTL_S": self.lock_ttl_s,
                    "RETRAIN_MIN_RECORDS": self.min_records,
                    "FEEDBACK_MAX": self.feedback_max, "DRIFT_WINDOW": self.drift_window,
                    "DRIFT_CHECK_S": self.drift_check_s}
        for name, value in positive.items():
            if value <= 0:
                raise SettingsError(f"NEARWATCH_{name} must be positive")
        if self.drift_threshold <= 1:
            raise SettingsError("NEARWATCH_DRIFT_THRESHOLD must exceed 1")
        if not 0 < self.holdout_fraction < 1:
            raise SettingsError("NEARWATCH_RETRAIN_HOLDOUT must be in (0, 1)")
        for name, level in (("RETRAIN_MAX_FLAG_RATE", self.max_flag_rate),
                            ("RETRAIN_AUROC_MARGIN", self.auroc_margin),
                            ("RETRAIN_RECALL_MARGIN", self.recall_margin)):
            if not 0 <= level <= 1:
                raise SettingsError(f"NEARWATCH_{name} must be in [0, 1]")
        if self.expires_s is not None and self.expires_s <= 0:
            raise SettingsError("NEARWATCH_RETRAIN_EXPIRES_S must be positive")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError("NEARWATCH_BEAT_METRICS_PORT must be in 0..65535")
        if self.keep_versions < 0:
            raise SettingsError("NEARWATCH_RETRAIN_KEEP_VERSIONS must not be negative")
        if self.drift_baseline_windows < 0:
            raise SettingsError("NEARWATCH_DRIFT_BASELINE_WINDOWS must not be negative")
        if self.drift_min_interval_s < 0:
            raise SettingsError("NEARWATCH_DRIFT_MIN_INTERVAL_S must not be negative")
