"""worker/fast_json.py reads and writes the values kombu's JSON does, and the app installs it."""

from __future__ import annotations

import datetime
import decimal
import math
import random
import uuid
from typing import Any

import pytest
from kombu import serialization
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json
from nearwatch.worker import fast_json
from nearwatch.worker.app import create_app
from nearwatch.worker.settings import Settings


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bool", "none", "bytes", "big", "datetime", "uuid",
             "decimal"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-2**63, 2**63 - 1)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "str":
        return "".join(rng.choice('ab"\\\n\u00e9\U0001f600{}') for _ in range(rng.randint(0, 8)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "bytes":
        return b'[{"id": 1, "x": 2.5}]'
    if kind == "big":
        return rng.choice([1, -1]) * (2**64 + rng.randint(0, 10**6))
    if kind == "datetime":
        return datetime.datetime(2026, 11, 30, 12, rng.randint(0, 59), tzinfo=datetime.UTC)
    if kind == "uuid":
        return uuid.UUID(int=rng.getrandbits(128))
    if kind == "decimal":
        return decimal.Decimal("1.25")
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_same_values_as_kombu_on_random_payloads() -> None:
    rng = random.Random(0)
    for _ in range(500):
        text = kombu_json.dumps(_random_value(rng))
        assert fast_json.loads(text) == kombu_json.loads(text)
        assert fast_json.loads(text.encode()) == kombu_json.loads(text.encode())


def test_written_values_read_back_as_kombu_writes_them() -> None:
    rng = random.Random(1)
    plain = 0
    for _ in range(500):
        value = _random_value(rng)
        text = fast_json.dumps(value)
        assert kombu_json.loads(text) == kombu_json.loads(kombu_json.dumps(value))
        plain += fast_json._plain(value)
    assert 0 < plain < 500  # both paths taken


@pytest.mark.parametrize("value", [
    [float("nan"), 1.0], {"x": float("inf")}, ["\ud800"], {1: "int key"}, [2**64],
    [b"bytes"], (1, [2, {"a": None}]), {"deep": [[[[{"b": -(2**63)}]]]]},
])
def test_values_orjson_writes_differently_are_written_as_kombu_does(value: Any) -> None:
    got, expected = kombu_json.loads(fast_json.dumps(value)), kombu_json.loads(
        kombu_json.dumps(value))
    assert repr(got) == repr(expected)


def test_deep_values_are_written_as_kombu_writes_them() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(600):  # beyond what a recursive check of orjson's types can walk
        inner.append([])
        inner = inner[0]
    assert fast_json.dumps(deep) == kombu_json.dumps(deep)


@pytest.mark.parametrize("text", [
    '[18446744073709551616, {"a": -99999999999999999999}]',  # beyond 64 bits: stays exact
    '{"x": NaN, "y": Infinity}',  # json's literals, refused by orjson
    '["\\ud800"]',  # a lone surrogate: json keeps it
    '{"a": 1, "a": 2}',  # the last duplicate wins in both
    '{"__type__": "bytes", "__value__": "abc"}',
])
def test_what_orjson_reads_differently_is_decoded_as_kombu_does(text: str) -> None:
    got, expected = fast_json.loads(text), kombu_json.loads(text)
    assert repr(got) == repr(expected)  # repr: NaN != NaN, ints vs floats differ in repr
    if isinstance(got, list) and isinstance(got[0], int):
        assert got[0] == 2**64 and isinstance(got[0], int)


def test_unknown_type_marker_and_bad_json_raise_like_kombu() -> None:
    for text in ('{"__type__": "nope", "__value__": 1}', '{"a": ', ''):
        with pytest.raises(ValueError):
            kombu_json.loads(text)
        with pytest.raises(ValueError):
            fast_json.loads(text)


def test_app_installs_it_for_bodies_and_redis_envelopes() -> None:
    create_app(Settings())
    body = kombu_json.dumps([['{"id": 1}'], {"answer_key": None}, {"chord": None}])
    decoded = serialization.loads(body, "application/json", "utf-8", accept={"application/json"})
    assert decoded == [['{"id": 1}'], {"answer_key": None}, {"chord": None}]
    assert serialization.registry._decoders["application/json"] is fast_json.loads
    assert kombu_redis.loads is fast_json.loads
    assert kombu_redis.dumps is fast_json.dumps
    assert serialization.registry._encoders["json"].encoder is fast_json.dumps
    assert math.isnan(serialization.loads('[NaN]', "application/json", "utf-8")[0])
