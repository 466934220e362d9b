"""kombu's JSON, read and written by orjson: the same values, in a fraction of the CPU.

A scoring batch reaches a worker as JSON twice over: kombu's Redis envelope (a JSON object
whose ``body`` is the task's JSON text) and that body (the task's arguments, the records'
JSON texts among them). kombu decodes both with the standard library's ``json`` and its
``object_hook``: 11 % of a worker node's CPU at 10k references, ~6 µs per 40-field record
(py-spy of ``bench.service``; see docs/SERVICE.md, "Benchmark"). Encoding them was half of the
producer's CPU.

``loads`` is a drop-in for ``kombu.utils.json.loads``: orjson parses, kombu's own
``object_hook`` then revives its typed values (``{"__type__": ..., "__value__": ...}``:
bytes bodies, datetimes, UUIDs, decimals) bottom-up as ``json`` would. Whatever orjson reads
differently from ``json`` goes to kombu's ``loads`` unchanged: text orjson refuses (NaN or
Infinity literals, lone surrogates, invalid UTF-8) and any float of magnitude >= 2**63
(orjson reads an integer literal beyond 64 bits as a float; ``json`` keeps it exact).

``dumps`` writes with orjson only values that both write alike: str, bool, None, integers
within 64 bits, finite floats, lists, tuples and dicts with str keys. Anything else (NaN,
which orjson would write as null; big integers; datetimes, UUIDs, bytes, which kombu writes
in its typed form) sends the whole value to kombu's ``dumps``.

>>> loads('{"body": {"__type__": "bytes", "__value__": "[1]"}, "n": [1, 2.5, null]}')
{'body': b'[1]', 'n': [1, 2.5, None]}
>>> loads('[123456789012345678901234567890, NaN]')[0]
123456789012345678901234567890
>>> dumps({"args": [["a"], 2.5], "id": 7}), dumps([float("nan")])
('{"args":[["a"],2.5],"id":7}', '[NaN]')
"""

from __future__ import annotations

from typing import Any

import orjson
from kombu import serialization
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json

_BIG = float(2**63)  # orjson's float for an integer literal beyond 64 bits is at least this


class _Inexact(Exception):
    """orjson read a value that ``json`` would read differently: decode with kombu's."""


def loads(text: str | bytes | bytearray | memoryview, **_: Any) -> Any:
    """``kombu.utils.json.loads`` with orjson (same result; see the module docstring)."""
    if isinstance(text, memoryview):
        text = text.tobytes()
    try:
        return _revive(orjson.loads(text))
    except (orjson.JSONDecodeError, _Inexact):
        return kombu_json.loads(text)


def _revive(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            item_kind = type(item)
            if item_kind is dict or item_kind is list:
                value[key] = _revive(item)
            elif item_kind is float and not -_BIG < item < _BIG:
                raise _Inexact
        if len(value) == 2 and "__type__" in value and "__value__" in value:
            return kombu_json.object_hook(value)
        return value
    if kind is list:
        for index, item in enumerate(value):
            item_kind = type(item)
            if item_kind is dict or item_kind is list:
                value[index] = _revive(item)
            elif item_kind is float and not -_BIG < item < _BIG:
                raise _Inexact
        return value
    if kind is float and not -_BIG < value < _BIG:
        raise _Inexact
    return value


def dumps(value: Any, **_: Any) -> str:
    """``kombu.utils.json.dumps`` with orjson where it writes the same (module docstring)."""
    try:
        if _plain(value):
            return orjson.dumps(value).decode("utf-8")
    except (TypeError, RecursionError):  # nested deeper than orjson's or Python's limit
        pass
    return kombu_json.dumps(value)


_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1  # orjson's integer range


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return _MIN_INT <= value <= _MAX_INT
    if kind is float:
        return value - value == 0.0  # finite
    if kind is list or kind is tuple:
        return all(_plain(item) for item in value)
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    return False


def install() -> None:
    """kombu's JSON through ``dumps`` and ``loads`` in this process: the ``json`` serializer
    (task bodies, results) and the Redis transport's envelopes. Idempotent."""
    serialization.registry.register(
        "json", dumps, loads, content_type="application/json", content_encoding="utf-8",
    )
    # The transport's module-level names: every envelope it writes and reads.
    kombu_redis.dumps = dumps  # type: ignore[assignment]
    kombu_redis.loads = loads  # type: ignore[assignment]
