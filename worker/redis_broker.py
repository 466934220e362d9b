"""Kombu's Redis transport, with a channel that can be closed while Redis is down.

Selected by ``broker_transport`` in ``app.py`` for ``redis://`` and ``rediss://`` brokers.

Why: when a worker node loses Redis, Celery's consumer (``on_connection_error_after_connected``)
first calls ``connection.collect()`` and then ``connection.close()``. Kombu's
``Channel.close`` first reads the reply of the BRPOP in flight, and only ``Empty`` is
expected there: with Redis down that read raises a connection error, the close stops before
the channel is marked closed, ``collect()`` swallows the error and detaches the transport
(``transport.client = None``). The second close then restores the unacknowledged messages
through a new connection pool whose parameters come from ``transport.client.hostname``: an
``AttributeError``, which is no connection error, so it kills the consumer ("Unrecoverable
error") instead of starting the reconnect loop.

The two changes: a connection error while draining that BRPOP does not stop the close (the
connection is gone, there is nothing to read), and a channel whose transport was detached
raises a connection error (never ``AttributeError``) if anything still uses it, e.g. the late
ack of a batch that finished during the outage; Celery handles those as connection errors.
A message that could not be acknowledged or restored stays in Redis's unacked index and is
restored after the visibility timeout; the producers' batch timeout answers it first.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def close(self) -> None:
        if self._in_poll:
            try:
                self._brpop_read()  # resets _in_poll and disconnects a broken connection
            except Empty:
                pass
            except self.connection_errors:
                pass  # Redis is gone: no reply will come, close the rest
        super().close()

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
