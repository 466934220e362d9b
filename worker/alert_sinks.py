"""Where `nearwatch alerts` delivers notifications: a webhook, Alertmanager, JSON lines.

HTTP uses only the standard library (``urllib``). A sink's ``send`` raises ``DeliveryError``
when the notification could not be delivered after its retries; the consumer then writes it
to the dead-letter stream ``nearwatch:alerts:dead``. Retries wait with exponential backoff and
"equal jitter" (half the delay fixed, half random): receivers recovering from an outage are
not hit by every consumer at the same instant, and a delay never drops below half its step.
Only failures that can heal are retried (network errors, timeouts, 5xx, 408, 429); any other
4xx means the receiver refuses this body, and retrying it would only delay the dead letter.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

ALERTNAME = "NearwatchAnomalousRecords"
BACKOFF_CAP_S = 30.0
_LABEL = re.compile(r"[^a-zA-Z0-9_]")

# (url, JSON body, timeout) -> HTTP status; raises DeliveryError
Post = Callable[[str, bytes, float], int]


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def http_post_json(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "nearwatch-alerts"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        retryable = exc.code >= 500 or exc.code in (408, 429)
        raise DeliveryError(f"HTTP {exc.code} {exc.reason} from {url}", retryable) from exc
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{url}: {reason}", retryable=True) from exc


@dataclass
class Retry:
    retries: int
    backoff_s: float
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, retry: int) -> float:
        """Wait before retry number ``retry`` (0-based): in [step/2, step], step = b·2^retry."""
        step = min(BACKOFF_CAP_S, self.backoff_s * 2**retry)
        return step / 2 + self.rng.uniform(0, step / 2)

    def run(self, attempt: Callable[[], object], counted: Callable[[], None]) -> None:
        for retry in range(self.retries + 1):
            counted()
            try:
                attempt()
                return
            except DeliveryError as exc:
                if not exc.retryable or retry == self.retries:
                    raise
            self.sleep(self.delay(retry))


class Sink(Protocol):
    name: str

    def send(self, notification: dict[str, Any]) -> None: ...


class JsonlSink:
    """One JSON line per notification (stdout or a file), for scripts."""

    name = "jsonl"
    rate_limited = False  # a local file: every notification is kept

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def send(self, notification: dict[str, Any]) -> None:
        self.out.write(json.dumps(notification, default=str) + "\n")
        self.out.flush()


class WebhookSink:
    """``POST`` the notification as JSON to ``url``."""

    name = "webhook"

    def __init__(self, url: str, timeout: float, retry: Retry, post: Post = http_post_json,
                 counted: Callable[[], None] = lambda: None) -> None:
        self.url, self.timeout, self.retry, self.post, self.counted = \
            url, timeout, retry, post, counted

    def send(self, notification: dict[str, Any]) -> None:
        body = json.dumps(notification, default=str).encode()
        self.retry.run(lambda: self.post(self.url, body, self.timeout), self.counted)


class AlertmanagerSink:
    """Alertmanager's v2 API: ``POST <url>/api/v2/alerts`` with one alert per notification.

    The labels identify the alert (Alertmanager merges alerts with equal labels), so a key that
    keeps firing updates one alert; ``endsAt`` = last event (or delivery, if later) +
    ``resolve_s`` lets it resolve when the key goes quiet, without a "resolved" message.
    """

    name = "alertmanager"

    def __init__(self, url: str, timeout: float, retry: Retry, severity: str,
                 resolve_s: float, post: Post = http_post_json,
                 counted: Callable[[], None] = lambda: None) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.timeout, self.retry, self.post, self.counted = timeout, retry, post, counted
        self.severity, self.resolve_s = severity, resolve_s

    def send(self, notification: dict[str, Any]) -> None:
        body = json.dumps([alertmanager_alert(notification, self.severity, self.resolve_s)]
                          ).encode()
        self.retry.run(lambda: self.post(self.url, body, self.timeout), self.counted)


def alertmanager_alert(notification: dict[str, Any], severity: str, resolve_s: float,
                       now: float | None = None) -> dict[str, Any]:
    """``endsAt`` counts ``resolve_s`` from the delivery (``now``) when that is later than the
    last event: a notification delivered late (a consumer taken over, a sink back after an
    outage) reached Alertmanager already resolved and paged no one."""
    key: dict[str, Any] = notification["key"]
    labels = {"alertname": ALERTNAME, "severity": severity, "service": "nearwatch",
              "model_version": str(key.get("model_version", ""))}
    for name, value in key.items():
        if name != "model_version" and value not in (None, ""):
            labels["record_" + _LABEL.sub("_", name)] = str(value)
    top = notification["events"][0] if notification["events"] else {}
    fields = ", ".join(f"{f['field']}={f['value']} (typical {f.get('typical')})"
                       if "value" in f else f["field"] for f in top.get("fields") or [])
    described = ", ".join(f"{k}={v}" for k, v in key.items())
    summary = f"{notification['count']} anomalous record(s) for {described}"
    digest = notification.get("digest")
    if digest:  # notifications the rate limit held back (alert_digest.py)
        keys = [", ".join(f"{k}={v}" for k, v in held["key"].items()) + f" ({held['count']})"
                for held in digest["keys"]]
        more = f" and {digest['more_keys']} more" if digest["more_keys"] else ""
        summary = (f"{digest['notifications']} notifications held by the rate limit: "
                   f"{notification['count']} anomalous record(s) for " + "; ".join(keys) + more)
    held_back = notification.get("suppressed", 0)
    return {
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": (
                f"Highest score {_num(top.get('score'))} (threshold "
                f"{_num(top.get('threshold'))}, p-value {_num(top.get('p_value'))}, certified "
                f"FPR bound {_num(top.get('fpr_bound'))}) for record {top.get('id')!r}; most "
                f"deviating fields: {fields or 'n/a'}. {notification['count']} events from "
                f"{notification['first_seen']} to {notification['last_seen']}."
                + (f" {held_back} more notifications are held by the rate limit and follow "
                   "in one digest." if held_back else "")),
            "count": str(notification["count"]),
            "record_id": str(top.get("id")),
        },
        "startsAt": notification["first_seen"],
        "endsAt": iso_time(max(notification["last_seen_epoch"],
                               time.time() if now is None else now) + resolve_s),
    }


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "n/a"


class RateLimiter:
    """Token bucket: ``per_minute`` notifications, bursts of up to that many (0: no limit)."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()

    def allow(self) -> bool:
        if self.per_second <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
