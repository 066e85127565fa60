"""BulkReader (the cache's zero-copy GET) against the real Redis, RESP2 and RESP3."""

from __future__ import annotations

import random

import numpy as np
import pytest
import redis

from sw_core.cache.redis_bulk import BulkReader

SIZES = [0, 1, 3, 255, 256, 257, 65_539, (1 << 20) + 1, 4 << 20]


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request: pytest.FixtureRequest, redis_url: str):
    client = redis.Redis.from_url(redis_url, protocol=request.param)
    yield client
    client.close()


def test_values_of_every_size_land_in_the_buffer(client: redis.Redis) -> None:
    rng = random.Random(5)
    values = {f"v:{n}": rng.randbytes(n) for n in SIZES}
    client.mset(values)
    out = memoryview(np.zeros(5 << 20, dtype=np.uint8))
    with BulkReader(client) as reader:
        for key, value in values.items():
            assert reader.get_into(key, out[: len(value)]) == len(value)
            assert bytes(out[: len(value)]) == value
        assert reader.get_into("missing", out) is None
    # The pooled connection is still in step with the protocol.
    assert client.get("v:3") == values["v:3"] and client.ping()


def test_feed_sees_every_byte_in_order(client: redis.Redis) -> None:
    value = random.Random(6).randbytes((3 << 20) + 17)
    client.set("k", value)
    out = memoryview(bytearray(len(value)))
    with BulkReader(client) as reader:
        for feed_bytes in (1 << 20, 1):
            pieces: list[bytes] = []

            def keep(piece: memoryview, pieces: list[bytes] = pieces) -> None:
                pieces.append(bytes(piece))

            reader.get_into("k", out, feed=keep, feed_bytes=feed_bytes)
            assert b"".join(pieces) == value


def test_a_longer_value_is_discarded_and_the_connection_stays_usable(client: redis.Redis) -> None:
    client.set("long", b"x" * 5000)
    client.set("short", b"abc")
    out = memoryview(bytearray(100))
    with BulkReader(client) as reader:
        assert reader.get_into("long", out) == 5000
        assert reader.get_into("short", out[:3]) == 3
    assert bytes(out[:3]) == b"abc"
    assert client.get("long") == b"x" * 5000


def test_error_reply_raises_and_keeps_the_connection(client: redis.Redis) -> None:
    client.hset("a-hash", "f", "v")
    client.set("k", b"value")
    out = memoryview(bytearray(16))
    with BulkReader(client) as reader:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            reader.get_into("a-hash", out)
        assert reader.get_into("k", out) == 5
    assert bytes(out[:5]) == b"value"


def test_a_broken_read_drops_the_connection(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    out = memoryview(bytearray(16))
    with pytest.raises(redis.TimeoutError):
        with BulkReader(client) as reader:
            reader._conn.send_command("BLPOP", "nothing", 1)  # its reply comes too late
            reader.get_into("k", out)
    # Handed back closed, so the late BLPOP reply can never be read as someone's answer.
    assert all(c._sock is None for c in client.connection_pool._available_connections)
    client.set("k", b"ok")
    assert client.get("k") == b"ok"
    client.close()


SCRIPT = "redis.call('INCR', KEYS[1]); return {1, tostring(ARGV[1]), redis.call('STRLEN', KEYS[2])}"


def test_a_script_and_a_get_share_one_round_trip(client: redis.Redis) -> None:
    value = random.Random(7).randbytes((1 << 20) + 3)
    client.set("big", value)
    sha = client.script_load(SCRIPT)
    out = memoryview(bytearray(len(value)))
    pieces: list[bytes] = []
    with BulkReader(client) as reader:
        reply, got = reader.script_then_get_into(
            sha, ["calls", "big"], ["tag"], "big", out, feed=lambda p: pieces.append(bytes(p))
        )
        assert reply == [1, b"tag", len(value)] and got == len(value)
        assert bytes(out) == value and b"".join(pieces) == value
        # the script ran before the GET; a missing value is None
        reply, got = reader.script_then_get_into(sha, ["calls", "gone"], ["x"], "gone", out)
        assert reply == [1, b"x", 0] and got is None
    assert client.get("calls") == b"2" and client.ping()


def test_a_missing_script_raises_after_the_get_was_read(client: redis.Redis) -> None:
    client.set("k", b"value")
    out = memoryview(bytearray(16))
    with BulkReader(client) as reader:
        with pytest.raises(redis.exceptions.NoScriptError):
            reader.script_then_get_into("0" * 40, ["a"], [], "k", out)
        assert reader.get_into("k", out) == 5  # the GET's reply did not linger
    assert bytes(out[:5]) == b"value" and client.get("k") == b"value"


def test_a_script_reply_of_another_shape_drops_the_connection(client: redis.Redis) -> None:
    client.set("k", b"value")
    sha = client.script_load("return {{1, 2}}")  # nested: not a flat reply
    out = memoryview(bytearray(16))
    pool = client.connection_pool
    with pytest.raises(redis.exceptions.InvalidResponse):
        with BulkReader(client) as reader:
            reader.script_then_get_into(sha, [], [], "k", out)
    assert pool._available_connections == [] or all(
        c._sock is None for c in pool._available_connections
    )
    assert client.get("k") == b"value"


def test_a_reply_line_without_its_number_is_an_invalid_response() -> None:
    from sw_core.cache.redis_bulk import _number

    assert _number(b"$2219072") == 2219072 and _number(b":-1") == -1
    with pytest.raises(redis.exceptions.InvalidResponse, match="not a number"):
        _number(b"$12x")
