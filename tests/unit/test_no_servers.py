"""``pytest tests/unit`` needs no server: asking for one fails loudly (tests/unit/conftest.py)."""

from __future__ import annotations

import pytest

from sw_core.local.redis_server import RedisServer


@pytest.mark.parametrize(
    "fixture", ["redis_server", "redis_url", "redis_client", "s3_server", "s3_bucket"]
)
def test_the_real_server_fixtures_fail_in_unit_tests(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    with pytest.raises(pytest.fail.Exception, match="unit tests run without servers"):
        request.getfixturevalue(fixture)


def test_starting_a_redis_server_fails_in_unit_tests(tmp_path) -> None:
    with pytest.raises(pytest.fail.Exception, match="started a real redis-server"):
        RedisServer(workdir=tmp_path).start()


async def test_fakeredis_answers_with_lua(fake_redis) -> None:
    await fake_redis.set("k", "v")
    assert await fake_redis.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"v"
