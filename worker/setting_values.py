"""Parsers of the NEARWATCH_* values (``worker/settings.py`` names the variable on error).

Each raises ``ValueError`` with what was expected; ``bounded`` also refuses numbers no setting
can mean (NaN, infinity, beyond 1e9: ``NEARWATCH_ALERT_RESOLVE_S=1e300`` started, then crashed
the consumer at its first delivery with "timestamp out of range").
"""

from __future__ import annotations

import math
import re
from typing import TypeVar
from urllib.parse import urlsplit

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
LARGEST = 1e9  # seconds (31 years), counts, rates: anything larger is a typo
T = TypeVar("T")


def bounded(value: T) -> T:
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= LARGEST):
        raise ValueError(f"expected a finite number of at most {LARGEST:g}")
    return value


def parse_flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def parse_names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not names:  # ",,," grouped every alert by model version only, without a word
        raise ValueError("expected comma-separated record field names (unset: the default)")
    return names


def parse_broker_url(raw: str) -> str:
    # kombu only fails on an unknown scheme when the worker connects, with a KeyError
    # traceback: refuse it here, naming the variable ("a;b" is a failover list).
    from kombu.transport import TRANSPORT_ALIASES

    for url in raw.split(";"):
        scheme = url.partition("://")[0].partition("+")[0]
        if "://" in url and scheme not in TRANSPORT_ALIASES:  # a bare host is AMQP's
            raise ValueError(f"unknown broker transport {scheme!r} (e.g. "
                             f"{DEFAULT_BROKER_URL} or memory://)")
        if url.partition("://")[0] in ("redis", "rediss"):  # not redis+socket:// (a path)
            _check_redis_address(url)
    return raw


def parse_redis_url(raw: str) -> str:
    if raw and not raw.startswith(("redis://", "rediss://", "unix://")):  # redis-py's schemes
        raise ValueError("expected redis://host:port/db (or rediss://, unix://)")
    if raw.startswith(("redis://", "rediss://")):
        _check_redis_address(raw)
    return raw


def parse_result_backend(raw: str) -> str:
    if raw.startswith(("redis://", "rediss://")):
        _check_redis_address(raw)  # Celery's backend failed the worker's start on "/15x"
    return raw


def redacted(value: str) -> str:
    """A setting as it may be shown: a URL's password (user-info or ``password=``) masked.

    >>> redacted("redis://:hunter2@h:6379/0?password=x&db=1")
    'redis://:***@h:6379/0?password=***&db=1'
    """
    value = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", value)
    return re.sub(r"(password=)[^&;]*", r"\1***", value)


def _check_redis_address(url: str) -> None:
    """A port and a database that are numbers: redis-py took ``/15x`` as no database at all
    and used database 0, so commands read and wrote another service's keys in silence."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"the database must be a number (redis://host:port/15), got "
                         f"{parts.path!r}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")  # Celery's choices


def parse_log_level(raw: str) -> str:
    if raw.upper() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return raw.upper()


def parse_http_url(raw: str) -> str:
    """An http(s) URL with a host (and a numeric port, if any); checked here, not at the
    first delivery ("nonnumeric port" was a traceback there)."""
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host[:port]/...")
    return raw
