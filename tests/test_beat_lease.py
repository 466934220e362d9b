"""Exactly one `nearwatch beat`: the Redis lease (scheduler/lease.py) on a real Redis (two
real beat processes: tests/test_retrain_service.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from nearwatch.scheduler.lease import BeatLease, LeaseHeld

LEASE_DB = "redis://127.0.0.1:6379/9"  # test_drift's database: this module uses its own keys


@pytest.fixture()
def client() -> Iterator[Any]:
    import redis

    yield redis.Redis.from_url(LEASE_DB)


def _lease(client: Any, key: str, ttl_s: float) -> BeatLease:
    return BeatLease(client, ttl_s, key=key)


@pytest.fixture()
def key(client: Any) -> Iterator[str]:
    name = f"test:beat-lease:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def test_a_second_beat_is_refused_while_the_first_renews(client: Any, key: str) -> None:
    first, second = _lease(client, key, 0.6), _lease(client, key, 0.6)
    first.acquire(wait_s=0)
    first.keep(on_lost=lambda: None)
    try:
        started = time.monotonic()
        with pytest.raises(LeaseHeld, match=f"holds {key} \\({first.holder}\\)"):
            second.acquire(wait_s=1.5)  # longer than the TTL: only renewal keeps it held
        assert time.monotonic() - started >= 1.5
        assert first.current() == first.holder and not first.lost
    finally:
        first.release()
    assert client.get(key) is None  # released: the next beat starts at once
    second.acquire(wait_s=0)


def test_a_killed_beats_lease_expires_and_the_next_one_takes_over(client: Any, key: str
                                                                  ) -> None:
    dead = _lease(client, key, 1.0)
    dead.acquire(wait_s=0)  # and never renewed: its process was killed
    successor = _lease(client, key, 1.0)
    started = time.monotonic()
    successor.acquire(wait_s=2.5)
    assert 0.5 < time.monotonic() - started < 2.5
    assert successor.current() == successor.holder


def test_a_beat_whose_lease_is_taken_stops_and_release_leaves_the_other(client: Any, key: str
                                                                       ) -> None:
    lease = _lease(client, key, 0.6)
    lease.acquire(wait_s=0)
    lost = threading.Event()
    lease.keep(on_lost=lost.set)
    client.delete(key)  # Redis lost it (a restart) and nobody else has it: taken back
    time.sleep(0.5)
    assert lease.current() == lease.holder and not lost.is_set()
    client.set(key, "other host pid 1")  # another beat took it
    assert lost.wait(2.0) and lease.lost and lease.taken_by == "other host pid 1"
    lease.release()
    assert lease.current() == "other host pid 1"  # not ours: left alone
