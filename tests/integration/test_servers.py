"""The fixtures give real servers: a real Redis (INFO works, Lua runs) and an S3 endpoint."""

from __future__ import annotations

import io


async def test_real_redis_answers_info_and_lua(redis_client) -> None:
    info = await redis_client.info("server")
    assert int(info["redis_version"].split(".")[0]) >= 6
    assert await redis_client.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "k", 5) == 5


def test_s3_server_round_trip(s3_server, s3_bucket) -> None:
    client = s3_server.client()
    payload = b"x" * (6 << 20)  # over 5 MiB: the SDK uploads it as multipart
    client.put_object(s3_bucket, "a/b", io.BytesIO(payload), len(payload), part_size=5 << 20)
    response = client.get_object(s3_bucket, "a/b")
    try:
        assert response.read() == payload
    finally:
        response.close()
        response.release_conn()
