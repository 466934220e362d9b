"""Exactly one `nearwatch beat`: a Redis lease held for as long as the beat node runs.

A second beat (a scaled compose service, a second host, a rollout that overlaps) would fire
every scheduled retraining and drift check twice; the retraining lock stops two trainings,
not two drift checks. So the node takes the lease ``nearwatch:beat:leader`` (``SET NX PX``,
the value names its host and process) before it starts, and a thread renews it every third
of its TTL. A beat that finds the lease held waits a little longer than one TTL, so that the
lease of a beat that was killed expires and the restarted one takes over; a lease still held
then is renewed by a live beat, and the newcomer refuses to start, naming it. A beat that
loses its lease (another beat took it, or no renewal succeeded for a whole TTL) stops, and its
scheduler (``scheduler/app.py LeasedScheduler``) checks the lease before every send. Stopping
releases the lease only if it still holds it (one Lua call).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .lock import RELEASE_IF_HELD

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("nearwatch.scheduler")
LEASE_KEY = "nearwatch:beat:leader"
# Renew ours; take it back if Redis lost it (a restart) and nobody else has; else: lost.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class LeaseHeld(RuntimeError):
    """Another beat holds the lease and keeps renewing it."""


class BeatLease:
    """``lease.acquire(wait_s)``, then ``lease.keep(on_lost)`` while the node runs, then
    ``lease.release()``; ``lease.lost`` tells whether another beat took it meanwhile."""

    def __init__(self, client: Redis, ttl_s: float, key: str = LEASE_KEY) -> None:
        self.client = client
        self.key = key
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self.lost = False
        self.taken_by: str | None = None  # who holds the lease when this beat lost it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(RELEASE_IF_HELD)

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def current(self) -> str | None:
        """The holder named by the lease, None when free."""
        return _text(self.client.get(self.key))

    def acquire(self, wait_s: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the lease, waiting up to ``wait_s`` for another holder's to expire;
        ``LeaseHeld`` naming that holder if it is still held then."""
        deadline = time.monotonic() + wait_s
        waiting, warned_at = False, -math.inf
        while True:
            try:
                if self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms):
                    break
                other = self.current()
            except (RedisConnectionError, RedisTimeoutError) as exc:  # not up yet: wait
                if isinstance(exc, AuthenticationError):
                    raise RuntimeError(f"Redis refused the login of NEARWATCH_REDIS_URL: {exc}"
                                       ) from exc
                if time.monotonic() - warned_at >= 60:
                    log.warning("cannot reach Redis to take the beat lease %s (%s: %s): "
                                "retrying", self.key, type(exc).__name__, exc)
                    warned_at = time.monotonic()
                sleep(1.0)
                deadline = time.monotonic() + wait_s  # the wait for a holder starts now
                continue
            except RedisError as exc:  # refused (a read-only replica, an ACL): say so
                raise RuntimeError(f"cannot take the beat lease {self.key}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"another nearwatch beat holds {self.key} ({other}) and keeps renewing "
                    f"it: run exactly one beat (a killed beat's lease expires "
                    f"{self.ttl_s:g} s after its last renewal, NEARWATCH_BEAT_LEASE_TTL_S)")
            if not waiting:
                log.warning("another nearwatch beat holds %s (%s): waiting up to %g s for "
                            "it to expire (a beat that was killed leaves it until then)",
                            self.key, other, wait_s)
                waiting = True
            sleep(min(1.0, self.ttl_s / 4))
        log.info("beat lease %s taken by %s", self.key, self.holder)

    def renew(self) -> bool:
        """Extend the lease; False when another beat holds it."""
        return bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew every third of the TTL from a daemon thread; ``on_lost`` once if another beat
        took it, or if no renewal succeeded for a whole TTL (it expired: another may hold it)."""
        def run() -> None:
            renewed = time.monotonic()
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    if self.renew():
                        renewed = time.monotonic()
                        continue
                except Exception as exc:  # Redis unreachable, or refusing the script
                    log.warning("could not renew the beat lease %s (%s): %s", self.key,
                                type(exc).__name__, exc)
                    if time.monotonic() - renewed < self.ttl_s:
                        continue  # it has not expired yet: try again next period
                self.lost = True  # taken, or expired unrenewed: another beat may hold it
                with contextlib.suppress(RedisError):  # named in the log if Redis says
                    self.taken_by = self.current()
                log.error("the beat lease %s is held by another beat (%s): stopping this one",
                          self.key, self.taken_by)
                on_lost()
                return

        self._thread = threading.Thread(target=run, daemon=True, name="nearwatch-beat-lease")
        self._thread.start()
        return self._thread

    def release(self) -> None:
        """Stop renewing (a renewal under way ends first: it could take the key back);
        delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        try:
            self._release(keys=[self.key], args=[self.holder])
        except Exception as exc:  # it expires by itself
            log.warning("could not release the beat lease %s: %s", self.key, exc)


def lease_held(client: Redis, key: str, holder: str) -> bool:
    """Whether ``holder`` holds the lease now; False when Redis cannot say."""
    try:
        raw = client.get(key)
    except RedisError as exc:
        log.warning("cannot read the beat lease %s (%s): sending nothing", key, exc)
        return False
    return _text(raw) == holder


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw
