"""Single flight for retraining: a Redis lock with an expiry and a fencing token.

``acquire`` takes a fresh token from a counter (``INCR``: tokens only grow) and sets the lock
key to it with ``SET NX PX``: overlapping schedules, two beat processes or a hand-run
``nearwatch retrain`` never train at the same time. The expiry frees the lock of a retraining
that was killed. Before the one step with an outside effect (moving the registry pointer) the
holder calls ``check``: a holder whose lock expired and was taken by another retraining (a
larger token) stops there instead of promoting over it. Releasing deletes the key only if it
still holds our token (one Lua call), so a late holder never frees someone else's lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis

# Delete the key only if it still holds ARGV[1] (also the beat lease's release: lease.py).
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LockLost(RuntimeError):
    """The lock expired and may be held by another retraining: do not promote."""


class SingleFlight:
    """``with SingleFlight(client, key, ttl_s) as lock: ...``; ``lock.token`` is None when
    another holder has it (the body must then skip its work)."""

    def __init__(self, client: Redis, key: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token: str | None = None
        self._release = client.register_script(RELEASE_IF_HELD)

    def acquire(self) -> str | None:
        token = str(self.client.incr(f"{self.key}:fence"))
        if self.client.set(self.key, token, nx=True, px=self.ttl_ms):
            self.token = token
        return self.token

    def holder(self) -> str | None:
        raw = self.client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw

    def check(self) -> None:
        """Raise ``LockLost`` unless the lock still holds our token."""
        if self.token is None or self.holder() != self.token:
            raise LockLost(f"retraining lock {self.key} expired (token {self.token}, now held "
                           f"by {self.holder()}): not promoting")

    def release(self) -> None:
        if self.token is not None:
            self._release(keys=[self.key], args=[self.token])
            self.token = None

    def __enter__(self) -> SingleFlight:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
