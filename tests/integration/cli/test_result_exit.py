"""``sw result`` of an unknown id has its own exit status."""

from __future__ import annotations

import redis

from sw_core.cli import main
from sw_core.cli.pipeline_cmds import EXIT_NOT_DONE, EXIT_UNKNOWN
from tests.support.observe import KEYS


def test_unknown_job_id_exits_4_at_once(redis_url: str, capsys) -> None:
    for extra in ([], ["--wait", "--timeout", "30"]):
        assert main(["result", "no-such-job", "--redis-url", redis_url, *extra]) == EXIT_UNKNOWN
        out, err = capsys.readouterr()
        assert out == "" and "no job no-such-job" in err and "expired" in err


def test_hand_added_entry_not_started_is_queued_not_unknown(redis_url: str, capsys) -> None:
    client = redis.Redis.from_url(redis_url)
    entry_id = client.xadd(KEYS.jobs, {"model": "m1", "task": "embed", "text": "hi"}).decode()
    client.close()
    assert main(["result", entry_id, "--redis-url", redis_url]) == EXIT_NOT_DONE
    assert '"status": "queued"' in capsys.readouterr().out
