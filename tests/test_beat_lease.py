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

    client = redis.Redis.from_url(LEASE_DB)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379 (make services)")
    yield client


def _lease(client: Any, key: str, ttl_s: float) -> BeatLease:
    return BeatLease(client, ttl_s, key=key)


def wait_for_value(client: Any, key: str, value: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.get(key) != value.encode():
        assert time.monotonic() < deadline, f"{key} never became {value!r}"
        time.sleep(0.05)


@pytest.fixture()
def key(client: Any) -> Iterator[str]:
    name = f"test:beat-lease:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def test_a_second_beat_is_refused_while_the_first_renews(client: Any, key: str) -> None:
    # TTLs of a second or more: a renewal every third of it has slack on a busy machine
    first, second = _lease(client, key, 1.5), _lease(client, key, 1.5)
    first.acquire(wait_s=0)
    first.keep(on_lost=lambda: None)
    try:
        started = time.monotonic()
        with pytest.raises(LeaseHeld, match=f"holds {key} \\({first.holder}\\)"):
            second.acquire(wait_s=3.5)  # longer than the TTL: only renewal keeps it held
        assert time.monotonic() - started >= 3.5
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
    lease = _lease(client, key, 1.5)
    lease.acquire(wait_s=0)
    lost = threading.Event()
    lease.keep(on_lost=lost.set)
    client.delete(key)  # Redis lost it (a restart) and nobody else has it: taken back
    wait_for_value(client, key, lease.holder, 3.0)
    assert not lost.is_set()
    client.set(key, "other host pid 1")  # another beat took it
    assert lost.wait(3.0) and lease.lost and lease.taken_by == "other host pid 1"
    lease.release()
    assert lease.current() == "other host pid 1"  # not ours: left alone


def test_a_lease_that_cannot_be_renewed_for_a_ttl_is_lost(client: Any, key: str) -> None:
    """Redis refusing the renewal script (an ACL without scripting) is no outage to wait
    out: after one TTL without a renewal the lease may be another beat's, so it is lost."""
    import redis

    user = f"nearwatch-test-{uuid.uuid4().hex[:8]}"
    client.acl_setuser(user, enabled=True, passwords=["+secret"], keys=["*"],
                       commands=["+@all", "-@scripting"])
    try:
        limited = redis.Redis.from_url(LEASE_DB, username=user, password="secret")
        lease = _lease(limited, key, 0.6)
        lease.acquire(wait_s=0)  # SET NX works for this user; EVALSHA does not
        lost = threading.Event()
        started = time.monotonic()
        lease.keep(on_lost=lost.set)
        assert lost.wait(3.0) and lease.lost
        assert time.monotonic() - started >= 0.6  # not before the lease could have expired
        lease.release()
    finally:
        client.acl_deluser(user)


def test_a_redis_that_refuses_the_credentials_is_an_error_not_a_wait(key: str) -> None:
    import redis

    wrong = redis.Redis.from_url(LEASE_DB, username="nobody-here", password="wrong")
    with pytest.raises(RuntimeError, match="Redis refused the login of NEARWATCH_REDIS_URL"):
        _lease(wrong, key, 1.0).acquire(wait_s=0, sleep=lambda _: pytest.fail("waited"))


def test_the_scheduler_sends_only_while_its_beat_holds_the_lease(client: Any, key: str
                                                                 ) -> None:
    from celery import Celery
    from celery.beat import ScheduleEntry
    from nearwatch.scheduler.app import LEASE_CONF, LeasedScheduler

    queue = f"test-beat-lease-{uuid.uuid4().hex[:8]}"
    app = Celery(broker=LEASE_DB, set_as_current=False)
    app.conf.update({LEASE_CONF: {"url": LEASE_DB, "key": key, "holder": "this beat"}})
    scheduler = LeasedScheduler(app=app, lazy=True)
    entry = ScheduleEntry(name="check", task="nearwatch.drift_check", schedule=60.0, app=app,
                          options={"queue": queue})
    try:
        client.set(key, "this beat")
        scheduler.apply_entry(entry)
        assert client.llen(queue) == 1  # sent to the broker
        client.set(key, "another beat")
        scheduler.apply_entry(entry)
        client.delete(key)  # expired, nobody holds it
        scheduler.apply_entry(entry)
        assert client.llen(queue) == 1  # neither sent
    finally:
        for name in client.scan_iter(f"*{queue}*"):  # the queue and kombu's binding
            client.delete(name)


@pytest.mark.parametrize("ttl", ["0.5", "0", "-3"])
def test_a_lease_ttl_below_a_second_is_refused(ttl: str) -> None:
    from nearwatch.worker.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="NEARWATCH_BEAT_LEASE_TTL_S must be at least 1"):
        Settings.from_env({"NEARWATCH_BEAT_LEASE_TTL_S": ttl})
