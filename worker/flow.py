"""How producers keep records moving: linger batching, a non-blocking batch source, and
riding out broker/Redis outages.

- ``linger_chunks``: batches of at most ``size`` items; a partial batch is sent once its
  first item has waited ``linger`` seconds (a live stdin stream is answered promptly).
- ``Feeder``: reads a (possibly blocking) iterator of batches in a thread, so the producer
  can collect answers while its source waits for input.
- ``Outage``: retries an operation on connection errors with exponential backoff until the
  outage has lasted ``deadline`` seconds, then raises ``BrokerUnavailable``; after that each
  call is tried once until one succeeds (so a long outage is answered, not waited out twice).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

log = logging.getLogger("nearwatch.client")
T = TypeVar("T")
_END = object()
NOTHING = object()  # Feeder.take: nothing available right now


class BrokerUnavailable(RuntimeError):
    """The broker or Redis stayed unreachable past the outage deadline."""


def transient_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the broker/Redis is unreachable right now"."""
    import redis
    from kombu.exceptions import OperationalError

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError, OperationalError, ConnectionError, TimeoutError)


def group_lost(exc: BaseException) -> bool:
    """A Redis error that means the stream or its consumer group was deleted (or Redis
    restarted empty) under a reader: create the group again and go on."""
    import redis

    return isinstance(exc, redis.exceptions.ResponseError) and (
        "NOGROUP" in str(exc) or "no longer exists" in str(exc))


class Outage:
    """Bounded retries with backoff around Redis/broker calls (one instance per producer)."""

    def __init__(self, deadline: float, first_delay: float = 0.1, max_delay: float = 2.0
                 ) -> None:
        self.deadline = deadline
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.started: float | None = None  # when the current outage began
        self.retries = 0
        self._errors = transient_errors()

    def call(self, what: str, operation: Callable[[], T]) -> T:
        delay = self.first_delay
        while True:
            try:
                value = operation()
            except self._errors as exc:
                now = time.monotonic()
                if self.started is None:
                    self.started = now
                    log.warning("%s: broker/Redis unreachable (%s); retrying for up to %g s",
                                what, exc, self.deadline)
                if now - self.started >= self.deadline:
                    raise BrokerUnavailable(
                        f"{what}: broker/Redis unreachable for {now - self.started:.0f} s "
                        f"({type(exc).__name__}: {str(exc)[:200]})") from None
                self.retries += 1
                time.sleep(min(delay, self.started + self.deadline - now))
                delay = min(delay * 2, self.max_delay)
                continue
            if self.started is not None:
                log.warning("%s: broker/Redis reachable again after %.1f s", what,
                            time.monotonic() - self.started)
                self.started = None
            return value


def chunks(records: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def linger_chunks(items: Iterable[T], size: int, linger: float) -> Iterator[list[T]]:
    """Batches of ``size`` items; a partial batch goes out ``linger`` s after its first item."""
    source: queue.Queue[Any] = queue.Queue(maxsize=max(2 * size, 64))
    stop = threading.Event()

    def read() -> None:
        try:
            for item in items:
                if not _put(source, item, stop):
                    return
            _put(source, _END, stop)
        except Exception as exc:
            _put(source, _Raised(exc), stop)

    threading.Thread(target=read, name="nearwatch-reader", daemon=True).start()
    chunk: list[T] = []
    deadline = 0.0
    try:
        while True:
            try:
                item = source.get(timeout=max(0.0, deadline - time.monotonic())
                                  if chunk else None)
            except queue.Empty:
                yield chunk
                chunk = []
                continue
            if item is _END:
                break
            if isinstance(item, _Raised):
                raise item.exc
            if not chunk:
                deadline = time.monotonic() + linger
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    finally:
        stop.set()


class Feeder(Generic[T]):
    """Pulls ``batches`` in a daemon thread; ``take`` never blocks unless asked to."""

    def __init__(self, batches: Iterator[T]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self.exhausted = False
        self._thread = threading.Thread(target=self._pull, args=(batches,),
                                        name="nearwatch-feeder", daemon=True)
        self._thread.start()

    def _pull(self, batches: Iterator[T]) -> None:
        try:
            for batch in batches:
                if not _put(self._queue, batch, self._stop):
                    return
            _put(self._queue, _END, self._stop)
        except Exception as exc:
            _put(self._queue, _Raised(exc), self._stop)

    def take(self, block: bool) -> Any:
        """The next batch, ``NOTHING`` (none ready and not blocking), or ``_END`` → sets
        ``exhausted`` and returns ``NOTHING``."""
        if self.exhausted:
            return NOTHING
        try:
            item = self._queue.get(block=block)
        except queue.Empty:
            return NOTHING
        if item is _END:
            self.exhausted = True
            return NOTHING
        if isinstance(item, _Raised):
            self.exhausted = True
            raise item.exc
        return item

    def close(self) -> None:
        self._stop.set()


class _Raised:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _put(target: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            target.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
